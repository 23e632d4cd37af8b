"""The state codec: what checkpoints, spilled models and caches are made of. It cannot run code.

A state value is encoded with msgpack. Plain data travels as itself (dict, list, str, int, float, bool, None,
bytes); a few more types travel as tagged extensions: tuple, set, frozenset, ints beyond 64 bits, numpy arrays
(dtype + shape + raw bytes; object arrays element by element), numpy scalars, OrderedDict, defaultdict, Counter,
deque. Objects of *allow-listed* classes (a `StateTypes`, by qualified name) travel as their class name plus
their attributes (``__dict__`` and ``__slots__``), encoded the same way; shared references and cycles are kept.
Decoding creates such an object with ``object.__new__(cls)`` and sets its attributes: no constructor, no
``__setstate__``, no module import other than those of allow-listed names. Anything else is refused.

Files and database rows are framed by `pipeline.statefiles` (magic bytes, version, checksum).

>>> import numpy as np
>>> state = {("pump", None): {"last": np.array([1.5, 2.0]), "n": 3}, "wm": float("-inf")}
>>> back = loads(dumps(state))
>>> back[("pump", None)]["last"].tolist(), back[("pump", None)]["n"], back["wm"]
([1.5, 2.0], 3, -inf)
>>> from pathlib import Path
>>> dumps({"factory": Path})
Traceback (most recent call last):
...
TypeError: class pathlib:Path cannot be referenced in state: it is not in the state allow-list
"""
from __future__ import annotations

import collections
import functools
import importlib
import struct
import types
from typing import Any, Callable, Iterable, Mapping

import msgpack
import numpy as np

# extension type codes: part of the stored format (never renumber; a new type takes a new code and a new VERSION)
(TUPLE, SET, FROZENSET, BIGINT, NDARRAY, OBJARRAY, SCALAR, ODICT, DEFAULTDICT, COUNTER, DEQUE,
 OBJECT, REF, ADAPTED, CLASS, PARTIAL, METHOD) = range(1, 18)
_BUILTIN_FACTORIES = {f"builtins:{t.__name__}": t for t in (float, int, str, bool, tuple, list, dict, set, bytes)}
_ARRAY_KINDS = "biufcmMSU"  # numbers, bools, datetimes and fixed-width strings: raw bytes are all there is


class StateFileError(ValueError):
    """A state file or record that edgesieve refuses to read; the message names it and says how to start fresh."""


class Adapter:
    """How a type that is not a plain Python object (a C or Rust extension type) is stored as data."""

    def __init__(self, encode: Callable[[Any], Any], decode: Callable[[type, Any], Any]):
        self.encode, self.decode = encode, decode


def _random_adapter() -> Adapter:
    def decode(cls, state):
        rng = cls.__new__(cls)
        rng.setstate(state)  # a tuple of ints; Random.setstate validates it
        return rng
    return Adapter(lambda r: r.getstate(), decode)


class StateTypes:
    """An allow-list of classes (``"module:QualName"``) whose objects may be stored, plus adapters for extension types.

    Only these names are ever imported or instantiated when state is decoded. `random:Random` is always allowed.
    """

    def __init__(self, names: Iterable[str] = (), adapters: Mapping[str, Adapter] | None = None):
        self.names = frozenset(names)
        self.adapters = {"random:Random": _random_adapter(), **(adapters or {})}
        self._classes: dict[str, type] = {}

    @staticmethod
    def name_of(cls: type) -> str:
        return f"{cls.__module__}:{cls.__qualname__}"

    def resolve(self, name: str) -> type:
        """The allow-listed class ``name``; anything else is refused before any import."""
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        if name in _BUILTIN_FACTORIES:
            return _BUILTIN_FACTORIES[name]
        if name not in self.names and name not in self.adapters:
            raise StateFileError(f"class {name} is not allowed in state")
        module, _, qual = name.partition(":")
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, type) or self.name_of(obj) != name:
            raise StateFileError(f"{name} is not a class")
        self._classes[name] = obj
        return obj


PLAIN = StateTypes(["pipeline.batch:Batch"])  # what the kernel stores: plain data, numpy, micro-batches


@functools.lru_cache(maxsize=None)
def _slots(cls: type) -> tuple[str, ...]:
    """Every ``__slots__`` attribute of ``cls`` and its bases."""
    names: list[str] = []
    for c in cls.__mro__:
        declared = c.__dict__.get("__slots__", ())
        for s in [declared] if isinstance(declared, str) else declared:
            if s not in ("__dict__", "__weakref__") and s not in names:
                names.append(s)
    return tuple(names)


class _Encoder:
    def __init__(self, types_: StateTypes):
        self.types = types_
        self.memo: dict[int, int] = {}
        self.alive: list[Any] = []  # memoised objects stay referenced, so their ids are not reused

    def pack(self, obj: Any) -> bytes:
        return msgpack.packb(obj, default=self.default, strict_types=True, use_bin_type=True, datetime=False)

    def _remember(self, o: Any) -> None:
        self.memo[id(o)] = len(self.memo)
        self.alive.append(o)

    def default(self, o: Any) -> msgpack.ExtType:  # noqa: C901 - one branch per stored type
        t = type(o)
        if t is tuple:
            return msgpack.ExtType(TUPLE, self.pack(list(o)))
        if t is int:  # beyond 64 bits
            return msgpack.ExtType(BIGINT, str(o).encode())
        if t is set or t is frozenset:
            return msgpack.ExtType(SET if t is set else FROZENSET, self.pack(list(o)))
        if t is np.ndarray:
            if o.dtype.hasobject:
                return msgpack.ExtType(OBJARRAY, self.pack([list(o.shape), o.ravel().tolist()]))
            if o.dtype.kind not in _ARRAY_KINDS:
                raise TypeError(f"numpy arrays of dtype {o.dtype} cannot be stored in state")
            return msgpack.ExtType(NDARRAY, self.pack([o.dtype.str, list(o.shape), np.ascontiguousarray(o).tobytes()]))
        if isinstance(o, np.generic) and t.__module__ == "numpy":
            if o.dtype.kind not in _ARRAY_KINDS:
                raise TypeError(f"numpy scalars of dtype {o.dtype} cannot be stored in state")
            return msgpack.ExtType(SCALAR, self.pack([o.dtype.str, o.tobytes()]))
        if t is collections.OrderedDict:
            return msgpack.ExtType(ODICT, self.pack(list(o.items())))
        if t is collections.Counter:
            return msgpack.ExtType(COUNTER, self.pack(dict(o)))
        if t is collections.defaultdict:
            return msgpack.ExtType(DEFAULTDICT, self.pack([o.default_factory, dict(o)]))
        if t is collections.deque:
            return msgpack.ExtType(DEQUE, self.pack([list(o), o.maxlen]))
        if t is bytearray:
            return bytes(o)
        if id(o) in self.memo:
            return msgpack.ExtType(REF, self.pack(self.memo[id(o)]))
        if isinstance(o, type):
            return msgpack.ExtType(CLASS, self._class_name(o).encode())
        if t is functools.partial:
            return msgpack.ExtType(PARTIAL, self.pack([o.func, list(o.args), dict(o.keywords)]))
        if t is types.MethodType:
            return msgpack.ExtType(METHOD, self.pack([o.__self__, o.__func__.__name__]))
        name = StateTypes.name_of(t)
        adapter = self.types.adapters.get(name)
        if adapter is not None:
            self._remember(o)
            return msgpack.ExtType(ADAPTED, _named(name, self.pack(adapter.encode(o))))
        if name not in self.types.names:
            raise TypeError(f"objects of class {name} cannot be stored in state: it is not in the state allow-list "
                            "(add its qualified name to the StateTypes of the stage that keeps it)")
        self._remember(o)
        attrs = getattr(o, "__dict__", None)
        slots = {s: getattr(o, s) for s in _slots(t) if hasattr(o, s)}
        return msgpack.ExtType(OBJECT, _named(name, self.pack([attrs, slots or None])))

    def _class_name(self, cls: type) -> str:
        name = StateTypes.name_of(cls)
        if name not in _BUILTIN_FACTORIES and name not in self.types.names:
            raise TypeError(f"class {name} cannot be referenced in state: it is not in the state allow-list")
        return name


def _named(name: str, payload: bytes) -> bytes:
    raw = name.encode()
    return struct.pack(">H", len(raw)) + raw + payload


class _Decoder:
    def __init__(self, types_: StateTypes):
        self.types = types_
        self.memo: list[Any] = []

    def unpack(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=self.ext, strict_map_key=False, raw=False, use_list=True,
                               timestamp=0)

    def ext(self, code: int, data: bytes) -> Any:  # noqa: C901 - one branch per stored type
        if code == TUPLE:
            return tuple(self.unpack(data))
        if code == BIGINT:
            return int(data.decode())
        if code in (SET, FROZENSET):
            return (set if code == SET else frozenset)(self.unpack(data))
        if code == NDARRAY:
            dtype, shape, raw = self.unpack(data)
            dt = np.dtype(dtype)
            if dt.kind not in _ARRAY_KINDS or dt.hasobject:
                raise StateFileError(f"array dtype {dtype!r} is not allowed in state")
            return np.frombuffer(raw, dtype=dt).reshape(shape).copy()
        if code == OBJARRAY:
            shape, items = self.unpack(data)
            out = np.empty(len(items), dtype=object)
            out[:] = items
            return out.reshape(shape)
        if code == SCALAR:
            dtype, raw = self.unpack(data)
            dt = np.dtype(dtype)
            if dt.kind not in _ARRAY_KINDS or dt.hasobject:
                raise StateFileError(f"scalar dtype {dtype!r} is not allowed in state")
            return np.frombuffer(raw, dtype=dt)[0]
        if code == ODICT:
            return collections.OrderedDict(self.unpack(data))
        if code == COUNTER:
            return collections.Counter(self.unpack(data))
        if code == DEFAULTDICT:
            factory, items = self.unpack(data)
            if factory is not None and not isinstance(factory, (type, functools.partial)):
                raise StateFileError("a defaultdict factory in state is not a class")
            return collections.defaultdict(factory, items)
        if code == DEQUE:
            items, maxlen = self.unpack(data)
            return collections.deque(items, maxlen)
        if code == REF:
            return self.memo[self.unpack(data)]
        if code == CLASS:
            return self.types.resolve(data.decode())
        if code == PARTIAL:
            func, args, kwargs = self.unpack(data)
            if not isinstance(func, type):
                raise StateFileError("a partial in state does not wrap a class")
            return functools.partial(func, *args, **kwargs)
        if code == METHOD:
            owner, name = self.unpack(data)
            if not isinstance(getattr(type(owner), name, None), types.FunctionType):
                raise StateFileError(f"{StateTypes.name_of(type(owner))} has no method {name!r}")
            return getattr(owner, name)
        if code in (OBJECT, ADAPTED):
            (n,) = struct.unpack_from(">H", data)
            name, payload = data[2:2 + n].decode(), data[2 + n:]
            cls = self.types.resolve(name)
            if code == ADAPTED:
                if name not in self.types.adapters:
                    raise StateFileError(f"class {name} is not allowed in state")
                index = len(self.memo)
                self.memo.append(None)
                self.memo[index] = obj = self.types.adapters[name].decode(cls, self.unpack(payload))
                return obj
            if name not in self.types.names:
                raise StateFileError(f"class {name} is not allowed in state")
            obj = object.__new__(cls)
            self.memo.append(obj)  # before the attributes: they may refer back to it
            attrs, slots = self.unpack(payload)
            if attrs:
                if not isinstance(attrs, dict) or not all(isinstance(k, str) for k in attrs):
                    raise StateFileError(f"the attributes of a {name} in state are not named")
                obj.__dict__.update(attrs)
            if slots:
                declared = _slots(cls)
                for k, v in slots.items():
                    if k not in declared:  # never __class__ or another attribute the class does not declare
                        raise StateFileError(f"{name} has no slot {k!r}")
                    object.__setattr__(obj, k, v)
            return obj
        raise StateFileError(f"unknown state extension type {code}")


def dumps(obj: Any, types_: StateTypes = PLAIN) -> bytes:
    """Encode ``obj`` (plain data, numpy, and objects of the allow-listed ``types_``); TypeError on anything else."""
    return _Encoder(types_).pack(obj)


def loads(data: bytes, types_: StateTypes = PLAIN) -> Any:
    return _Decoder(types_).unpack(data)


__all__ = ["StateTypes", "Adapter", "StateFileError", "PLAIN", "dumps", "loads"]
