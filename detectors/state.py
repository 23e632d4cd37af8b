"""What a detector's state may contain: the allow-list of edgesieve and river classes, stored as data.

Models are saved with `pipeline.statecodec` (never pickle): an object of a class listed here is stored as its
qualified name and its attributes, and restored with ``object.__new__`` plus those attributes. river's two
Rust types (`VectorDict`, ADWIN's `AdaptiveWindowing`) are stored through adapters: their constructor
arguments (plain data) and, for ADWIN, the Rust side's own serialised bytes.

A detector that keeps an object of another class fails to save with a TypeError naming the class: add the
class here (after checking that its attributes are data).

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("sad", ["t"])
>>> _ = det.score_learn_many(np.arange(50.0)[:, None])
>>> twin = load_model(dump_model(det), "example")
>>> det.score_learn_many(np.array([[70.0]]))[0].tolist() == twin.score_learn_many(np.array([[70.0]]))[0].tolist()
True
"""
from __future__ import annotations

from typing import Any

from pipeline.statecodec import Adapter, StateTypes
from pipeline.statefiles import pack, unpack

EDGESIEVE = [
    "detectors.base:Squash", "detectors.base:Identity", "detectors.base:RobustNormalizer",
    "detectors.native:HSTDetector", "detectors.native:MADDetector", "detectors.hst:HalfSpaceTrees",
    "detectors.river_wrappers:RiverHST", "detectors.river_wrappers:RiverLODA",
    "detectors.river_wrappers:RiverOneClassSVM", "detectors.river_wrappers:RiverSAD",
    "detectors.river_wrappers:RiverGaussian", "detectors.river_wrappers:RiverPAD",
    "detectors.keystate:AdaptiveThreshold", "detectors.keystate:Debounce", "detectors.keystate:KeyState",
]

# every class the river-wrapped detectors and drift detectors are made of (river 0.26)
RIVER = [
    "river.compose.pipeline:Pipeline",
    "river.preprocessing.scale:MinMaxScaler", "river.preprocessing.scale:StandardScaler",
    "river.stats.minimum:Min", "river.stats.maximum:Max", "river.stats.mean:Mean", "river.stats.var:Var",
    "river.anomaly.hst:HalfSpaceTrees", "river.tree.padded:PaddedBranch", "river.tree.padded:PaddedLeaf",
    "river.anomaly.loda:LODA", "river.sketch.histogram:Histogram", "river.sketch.histogram:Bin",
    "river.anomaly.svm:OneClassSVM", "river.optim.sgd:SGD", "river.optim.schedulers:Constant",
    "river.optim.losses:Hinge", "river.optim.losses:Squared", "river.optim.initializers:Zeros",
    "river.anomaly.sad:StandardAbsoluteDeviation", "river.anomaly.gaussian:GaussianScorer",
    "river.proba.gaussian:Gaussian", "river.anomaly.pad:PredictiveAnomalyDetection",
    "river.linear_model.lin_reg:LinearRegression",
    "river.drift.adwin:ADWIN", "river.drift.page_hinkley:PageHinkley",
]


def _vector_dict() -> Adapter:
    def encode(v):
        data, default_factory, mask, _copy = v.__reduce__()[1]
        if default_factory is not None or mask is not None:
            raise TypeError("a river VectorDict with a default factory or a mask cannot be stored in state")
        return dict(data)

    def decode(cls, data):
        if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
            raise ValueError("a VectorDict in state is not a dict of numbers")
        return cls(data, None, None, True)

    return Adapter(encode, decode)


def _adaptive_windowing() -> Adapter:
    def encode(w):
        _newobj, (cls, *args), blob = w.__reduce_ex__(4)[:3]
        if not all(isinstance(a, (int, float)) for a in args) or not isinstance(blob, bytes):
            raise TypeError("river's AdaptiveWindowing changed its state layout; it cannot be stored")
        return [args, blob]

    def decode(cls, state):
        args, blob = state
        if not all(isinstance(a, (int, float)) for a in args) or not isinstance(blob, bytes):
            raise ValueError("ADWIN state is not numbers and bytes")
        w = cls.__new__(cls, *args)
        try:
            w.__setstate__(blob)  # the Rust side's own serialised window (data only)
        except BaseException as exc:  # a damaged blob makes the Rust side panic (PanicException is a BaseException)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise ValueError(f"ADWIN state does not decode ({type(exc).__name__})") from None
        return w

    return Adapter(encode, decode)


TYPES = StateTypes(EDGESIEVE + RIVER, {
    "river._river_rust.vectordict:VectorDict": _vector_dict(),
    "river._river_rust.drift:AdaptiveWindowing": _adaptive_windowing(),
})


def dump_model(obj: Any) -> bytes:
    """A detector, a key's state or a drift detector as framed bytes (see `pipeline.statefiles`)."""
    return pack(obj, TYPES)


def load_model(blob: bytes, where: str, hint: str | None = None) -> Any:
    """Inverse of `dump_model`; StateFileError naming ``where`` (and ending with ``hint``) when the bytes are
    damaged or hold a class that is not allowed."""
    return unpack(blob, where, TYPES, hint)
