"""The ``map`` stage: derive fields with safe expressions, convert units, rename and drop.

>>> from pipeline.testing import run_stage
>>> out = run_stage(Map, {"set": {"power": "voltage * current"}, "units": {"temp": "degF->degC"},
...                        "rename": {"temp": "temperature"}, "drop": ["current"]},
...                 [{"ts": 1, "tags": {}, "fields": {"voltage": 230.0, "current": 2.0, "temp": 212.0}}])
>>> out[0]["fields"]
{'voltage': 230.0, 'power': 460.0, 'temperature': 100.0}
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from ..batch import Batch
from ..config import StageConfig
from ..expr import Expression
from ..names import NameWatch
from ..numeric import split_numeric
from ..stage import Context, Stage

# unit -> (scale, offset) to the base unit of its dimension: base = value * scale + offset
_UNITS: dict[str, tuple[str, float, float]] = {
    "degC": ("temperature", 1.0, 0.0), "degF": ("temperature", 5 / 9, -32 * 5 / 9), "K": ("temperature", 1.0, -273.15),
    "Pa": ("pressure", 1.0, 0.0), "kPa": ("pressure", 1e3, 0.0), "bar": ("pressure", 1e5, 0.0),
    "psi": ("pressure", 6894.757293168, 0.0), "mbar": ("pressure", 100.0, 0.0),
    "m": ("length", 1.0, 0.0), "mm": ("length", 1e-3, 0.0), "cm": ("length", 1e-2, 0.0), "in": ("length", 0.0254, 0.0),
    "ft": ("length", 0.3048, 0.0), "m/s": ("speed", 1.0, 0.0), "km/h": ("speed", 1 / 3.6, 0.0),
    "W": ("power", 1.0, 0.0), "kW": ("power", 1e3, 0.0), "s": ("time", 1.0, 0.0), "ms": ("time", 1e-3, 0.0),
    "l/min": ("flow", 1.0, 0.0), "m3/h": ("flow", 1000 / 60, 0.0),
}


def _conversion(spec: str) -> tuple[float, float]:
    """(scale, offset) so that ``to = from * scale + offset`` for a ``from->to`` spec."""
    try:
        src, dst = (s.strip() for s in spec.split("->"))
        dim_a, sa, oa = _UNITS[src]
        dim_b, sb, ob = _UNITS[dst]
    except (ValueError, KeyError):
        raise ValueError(f"unknown unit conversion {spec!r}: write FROM->TO with units from {', '.join(_UNITS)}") from None
    if dim_a != dim_b:
        raise ValueError(f"cannot convert {src} ({dim_a}) to {dst} ({dim_b})")
    return sa / sb, (oa - ob) / sb


class MapConfig(StageConfig):
    type: Literal["map"]
    set: dict[str, str] = Field(default_factory=dict, description="Fields to set: `{name: expression}`, evaluated in order.")
    units: dict[str, str] = Field(default_factory=dict, description="Unit conversions in place: `{field: 'degF->degC'}`.")
    rename: dict[str, str] = Field(default_factory=dict, description="Fields to rename: `{old: new}` (after `set` and `units`).")
    drop: list[str] = Field(default_factory=list, description="Fields to remove (after renaming).")

    @field_validator("set")
    @classmethod
    def _parses(cls, v: dict[str, str]) -> dict[str, str]:
        for text in v.values():
            Expression(text)
        return v

    @field_validator("units")
    @classmethod
    def _known_units(cls, v: dict[str, str]) -> dict[str, str]:
        for spec in v.values():
            _conversion(spec)
        return v


class Map(Stage):
    """Derive, convert, rename and drop fields. Records with a non-numeric input field are dead-lettered."""

    Config = MapConfig
    EXAMPLE = {"set": {"temperature_f": "temperature * 9 / 5 + 32"}}

    def __init__(self, config: MapConfig, ctx: Context):
        super().__init__(config, ctx)
        self.assignments = [(name, Expression(text)) for name, text in config.set.items()]
        self.conversions = {f: _conversion(s) for f, s in config.units.items()}
        names = [n for _, e in self.assignments for n in e.names()] + list(self.conversions)
        self._numeric = list(dict.fromkeys(names))
        self._names = NameWatch(ctx, self._read_names(config), "map", texts=list(config.set.values()))

    def _read_names(self, config: MapConfig) -> list[str]:
        """Names the stage reads from its input (not the ones an earlier `set` assigns)."""
        made, read = set(), []
        for name, expression in self.assignments:
            read += [n for n in expression.names() if n not in made]
            made.add(name)
        return read + [n for n in (*config.units, *config.rename) if n not in made]

    def process(self, batch: Batch) -> Batch:
        self._names.check(batch)
        good, bad, reasons = split_numeric(batch, self._numeric, f"stage {self.ctx.item_id!r}")
        self.ctx.dead_letter(bad, reasons)
        fields = dict(good.fields)
        for name, expression in self.assignments:
            view = good.with_fields(**fields) if fields is not good.fields else good
            value, over, why = expression.evaluate_rows(view)
            if over.any():               # over a string or integer limit: that record is in error, not the batch
                self.ctx.dead_letter(view.take(over), [f"stage {self.ctx.item_id!r}: field {name!r}: {why[i]}"
                                                       for i in np.flatnonzero(over)])
                good, value = good.take(~over), value[~over]
                fields = {k: v[~over] for k, v in fields.items()}
            fields[name] = value.astype(np.float64) if value.dtype.kind in "iu" else np.array(value)
        for name, (scale, offset) in self.conversions.items():
            if name in fields:
                fields[name] = fields[name] * scale + offset
        for old, new in self.config.rename.items():
            if old in fields:
                fields[new] = fields.pop(old)
        for name in self.config.drop:
            fields.pop(name, None)
        return Batch(good.ts, good.tags, fields, good.frames, good.extra, good.arrival)
