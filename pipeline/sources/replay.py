"""The ``replay`` source: readings from a CSV or NDJSON file, or a folder of them, as fast as possible or in real time.

CSV files are read with pandas' C parser in chunks; each chunk becomes one batch. A row that cannot be used
(wrong number of columns, a timestamp or field that is not a number) is dead-lettered as ``file:line`` with the
reason, and the rest go on. Relative paths are taken from the working directory, else from the pipeline file's folder.
Timestamps: seconds, ms, us, ns since the epoch (detected from their size with ``timestamp_format: auto``) or
ISO 8601 / any ``strftime`` format; times without a zone are UTC.

>>> import tempfile, os
>>> d = tempfile.mkdtemp(); p = os.path.join(d, "r.csv")
>>> _ = open(p, "w").write("ts,device,t\\n1700000000,a,20.5\\n1700000001,a,oops\\n")
>>> from pipeline.testing import make_context
>>> ctx, dead = make_context("readings")
>>> src = Replay(ReplayConfig(id="readings", type="replay", path=p, tags=["device"]), ctx)
>>> got = []; src.run(lambda b, position=None: got.append(b), __import__("threading").Event())
>>> got[0].to_records(), dead[0][2]
([{'ts': 1700000000.0, 'tags': {'device': 'a'}, 'fields': {'t': 20.5}}], ["r.csv:3: field 't' is 'oops', not a number"])
"""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from ..batch import Batch
from ..config import INPUT, SourceConfig
from ..epoch import UNIT_DIVISORS, epoch_seconds
from ..stage import Context, Source


class ReplayConfig(SourceConfig):
    type: Literal["replay"]
    path: str = Field(json_schema_extra=INPUT, description="A .csv / .ndjson / .jsonl file, or a folder whose such files are replayed in name order.")
    format: Literal["auto", "csv", "ndjson"] = Field("auto", description="File format; `auto` goes by the file extension.")
    timestamp: str = Field("ts", description="Column holding the event time.")
    timestamp_format: str = Field(
        "auto", description="`auto`, `s`, `ms`, `us`, `ns`, `iso`, or a strftime format such as `%Y-%m-%d %H:%M:%S`."
    )
    tags: list[str] = Field(default_factory=list, description="Columns that are tags (strings); the other columns are fields.")
    fields: list[str] | None = Field(None, description="Columns that are fields; default: every column that is not the timestamp or a tag.")
    static_tags: dict[str, str] = Field(default_factory=dict, description="Tags added to every record, e.g. `{site: plant1}`.")
    file_tag: str | None = Field(None, description="Name of a tag that receives the file's stem (handy for a folder of files).")
    delimiter: str | None = Field(None, description="CSV delimiter; default: detected from the header line (`,` `;` tab `|`).")
    speed: float | Literal["max"] = Field("max", description="`max` (as fast as possible) or a factor of real time (1 = real time).")
    loop: bool = Field(False, description="Start again from the first file after the last.")
    chunk_size: int = Field(20_000, ge=1, le=1_000_000, description="Rows per emitted batch.")


_SKIP = re.compile(r"Skipping line (\d+): (.*)")


class Replay(Source):
    """Replay a file or folder of readings (see module docstring)."""

    Config = ReplayConfig
    EXAMPLE = {"path": "data/readings.csv", "timestamp": "ts", "tags": ["site", "device"]}

    def __init__(self, config: ReplayConfig, ctx: Context):
        super().__init__(config, ctx)
        self.base_dir = ctx.base_dir
        self.position = (0, 0, 0)  # file index, rows done in that file, loop count

    def files(self) -> list[Path]:
        path = Path(self.config.path)
        if not path.is_absolute() and not path.exists() and self.base_dir is not None:
            path = self.base_dir / path
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".csv", ".ndjson", ".jsonl"))
            if not found:
                raise FileNotFoundError(f"source {self.ctx.item_id!r}: folder {path} has no .csv/.ndjson/.jsonl files")
            return found
        if not path.exists():
            raise FileNotFoundError(f"source {self.ctx.item_id!r}: {path} does not exist (path: {self.config.path!r})")
        return [path]

    def restore(self, position) -> None:
        if position is not None:
            self.position = tuple(position)

    def run(self, emit, stop: threading.Event) -> None:
        files = self.files()
        file_index, skip, loop_n = self.position
        pacer = _Pacer(self.config.speed)
        while True:
            for fi in range(file_index, len(files)):
                path = files[fi]
                if skip == 0:
                    self.ctx.count("bytes_in", path.stat().st_size)
                reader = self._ndjson_chunks if self._is_ndjson(path) else self._csv_chunks
                for batch, rows, rows_done in reader(path, skip):
                    if stop.is_set():
                        return
                    for part, upto in pacer.parts(batch, rows, rows_done, stop):
                        emit(part, position=(fi, upto, loop_n))
                    skip = rows_done
                skip = 0
            if not self.config.loop or stop.is_set():
                return
            file_index, loop_n = 0, loop_n + 1

    # ------------------------------------------------------------------ readers
    def _is_ndjson(self, path: Path) -> bool:
        return self.config.format == "ndjson" or (self.config.format == "auto" and path.suffix in (".ndjson", ".jsonl"))

    def _csv_chunks(self, path: Path, skip: int):
        """Yield (batch, data-row index of each record, data rows consumed). Rows count every line after the header."""
        delimiter = self.config.delimiter or _sniff_delimiter(path)
        rows_done = skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reader = pd.read_csv(path, sep=delimiter, chunksize=self.config.chunk_size, on_bad_lines="warn",
                                 skiprows=range(1, skip + 1) if skip else None, dtype={t: str for t in self.config.tags},
                                 low_memory=False, skipinitialspace=True)
            for frame in reader:
                bad_lines = [line + skip for line in self._report_bad_lines(path, caught, skip)]
                lines = rows_done + 2 + np.arange(len(frame))  # the header is line 1
                for line in sorted(bad_lines):
                    lines[lines >= line] += 1
                rows_done += len(frame) + len(bad_lines)
                batch, kept = self._frame_to_batch(frame, path, lines)
                yield batch, lines[kept] - 2, rows_done
            self._report_bad_lines(path, caught, skip)

    def _report_bad_lines(self, path: Path, caught: list, skip: int) -> list[int]:
        """Dead-letter the lines pandas skipped (wrong number of columns); return their line numbers as pandas counts them."""
        found = []
        for w in caught:
            for line in str(w.message).splitlines():
                m = _SKIP.search(line)
                if m:
                    found.append(int(m.group(1)))
                    self._dead(path, int(m.group(1)) + skip, m.group(2), raw=None)
        caught.clear()
        return found

    def _frame_to_batch(self, frame: pd.DataFrame, path: Path, lines: np.ndarray) -> tuple[Batch, np.ndarray]:
        cfg = self.config
        if cfg.timestamp not in frame.columns:
            raise ValueError(f"source {self.ctx.item_id!r}: {path.name} has no timestamp column {cfg.timestamp!r} "
                             f"(columns: {', '.join(map(str, frame.columns))}); set `timestamp:`")
        bad = np.zeros(len(frame), dtype=bool)
        reasons: dict[int, str] = {}
        ts = _timestamps(frame[cfg.timestamp], cfg.timestamp_format)
        for i in np.flatnonzero(np.isnan(ts)):
            bad[i] = True
            reasons[i] = f"{path.name}:{lines[i]}: timestamp {frame[cfg.timestamp].iloc[i]!r} is not a time"
        field_names = cfg.fields if cfg.fields is not None else [
            c for c in frame.columns if c != cfg.timestamp and c not in cfg.tags]
        fields = {}
        for name in field_names:
            if name not in frame.columns:
                continue
            col = frame[name]
            textual = not pd.api.types.is_numeric_dtype(col)
            values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan) \
                if textual else col.to_numpy(dtype=np.float64, na_value=np.nan)
            if textual:
                wrong = np.isnan(values) & col.notna().to_numpy()
                for i in np.flatnonzero(wrong):
                    bad[i] = True
                    reasons.setdefault(i, f"{path.name}:{lines[i]}: field {name!r} is {col.iloc[i]!r}, not a number")
            fields[str(name)] = values
        tags = {}
        for name in cfg.tags:
            if name in frame.columns:
                col = frame[name].to_numpy(dtype=object)
                tags[name] = np.where(pd.isna(col), None, col).astype(object)
        for name, value in cfg.static_tags.items():
            tags[name] = np.full(len(frame), value, dtype=object)
        if cfg.file_tag:
            tags[cfg.file_tag] = np.full(len(frame), path.stem, dtype=object)
        batch = Batch(ts=ts, tags=tags, fields=fields)
        kept = np.flatnonzero(~bad)
        if bad.any():
            rejected = batch.take(bad)
            self.ctx.dead_letter(rejected.with_extra(source_line=np.array([f"{path.name}:{l}" for l in lines[bad]], dtype=object)),
                                 [reasons[i] for i in np.flatnonzero(bad)])
            batch = batch.take(~bad)
        return batch, kept

    def _ndjson_chunks(self, path: Path, skip: int):
        records, raw_ts, rows, rows_done = [], [], [], skip
        with path.open() as fh:
            for lineno, line in enumerate(fh, start=1):
                if lineno <= skip or not line.strip():
                    continue
                rows_done = lineno
                try:
                    rec, ts = self._json_record(json.loads(line))
                except (ValueError, TypeError) as exc:
                    self._dead(path, lineno, str(exc), raw=line.strip()[:500])
                    continue
                records.append(rec)
                raw_ts.append(ts)
                rows.append(lineno - 1)
                if len(records) >= self.config.chunk_size:
                    yield *self._ndjson_batch(path, records, raw_ts, rows), rows_done
                    records, raw_ts, rows = [], [], []
        if records or rows_done > skip:
            yield *self._ndjson_batch(path, records, raw_ts, rows), rows_done

    def _ndjson_batch(self, path: Path, records: list, raw_ts: list, rows: list) -> tuple[Batch, np.ndarray]:
        """Timestamps of a whole chunk are parsed at once; records with a bad one are dead-lettered."""
        rows_arr = np.array(rows, dtype=np.int64)
        batch = Batch.from_records(records)
        if not records:
            return batch, rows_arr
        ts = _timestamps(pd.Series(raw_ts, dtype=object), self.config.timestamp_format)
        bad = np.isnan(ts)
        batch = self._checked(batch.with_ts(np.where(bad, 0.0, ts)), path)
        if bad.any():
            self.ctx.dead_letter(batch.take(bad), [f"{path.name}:{rows_arr[i] + 1}: timestamp {raw_ts[i]!r} is not a time"
                                                   for i in np.flatnonzero(bad)])
            batch, rows_arr = batch.take(~bad), rows_arr[~bad]
        return batch, rows_arr

    def _json_record(self, obj) -> tuple[dict, object]:
        if not isinstance(obj, dict):
            raise ValueError("a line must be a JSON object")
        cfg = self.config
        if "fields" in obj:
            rec = dict(obj)
        else:
            tags = {k: str(obj[k]) for k in cfg.tags if k in obj}
            names = cfg.fields if cfg.fields is not None else [k for k in obj if k != cfg.timestamp and k not in cfg.tags]
            rec = {"tags": tags, "fields": {k: obj[k] for k in names if k in obj}}
        if cfg.static_tags:
            rec["tags"] = {**(rec.get("tags") or {}), **cfg.static_tags}
        return rec, obj.get(cfg.timestamp, obj.get("ts"))

    def _checked(self, batch: Batch, path: Path) -> Batch:
        if self.config.file_tag:
            batch = batch.with_tags(**{self.config.file_tag: np.full(len(batch), path.stem, dtype=object)})
        return batch

    def _dead(self, path: Path, line: int, reason: str, raw: str | None) -> None:
        rec = {"ts": float("nan"), "tags": {}, "fields": {}, "source_line": f"{path.name}:{line}"}
        if raw is not None:
            rec["raw"] = raw
        self.ctx.dead_letter(Batch.from_records([rec]), f"{path.name}:{line}: {reason}")


def _sniff_delimiter(path: Path) -> str:
    with path.open() as fh:
        header = fh.readline()
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    return max(counts, key=counts.get) if max(counts.values()) else ","


def _timestamps(col: pd.Series, fmt: str) -> np.ndarray:
    """Seconds since the epoch as float64; NaN where a value is not a time."""
    if fmt in ("auto", "s", "ms", "us", "ns") and pd.api.types.is_numeric_dtype(col):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    elif fmt in ("auto", "s", "ms", "us", "ns"):
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if fmt == "auto" and np.isnan(values).any():
            parsed = _parse_dates(col, None)
            values = np.where(np.isnan(values), parsed, values)
    else:
        return _parse_dates(col, None if fmt == "iso" else fmt)
    if fmt == "auto":
        return epoch_seconds(values)
    return values / UNIT_DIVISORS[fmt]


def _parse_dates(col: pd.Series, fmt: str | None) -> np.ndarray:
    parsed = pd.to_datetime(col, errors="coerce", utc=True, format=fmt if fmt else "ISO8601")
    ns = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
    return np.where(parsed.isna().to_numpy(), np.nan, ns / 1e9)


class _Pacer:
    """Splits batches so that records are emitted at ``speed`` times real time (no splitting at ``max``)."""

    def __init__(self, speed):
        self.speed = speed
        self.origin: tuple[float, float] | None = None

    def parts(self, batch: Batch, rows: np.ndarray, rows_done: int, stop: threading.Event):
        """Yield (part, rows consumed up to and including it) at the pace of ``speed``."""
        if self.speed == "max" or not len(batch):
            yield batch, rows_done
            return
        if self.origin is None:
            self.origin = (time.monotonic(), float(batch.ts[0]))
        wall0, event0 = self.origin
        due = wall0 + (batch.ts - event0) / float(self.speed)
        slot = np.floor((due - wall0) / 0.05)
        cuts = np.flatnonzero(np.diff(slot)) + 1
        parts = np.split(np.arange(len(batch)), cuts)
        for i, part in enumerate(parts):
            wait = due[part[0]] - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            yield batch.take(part), rows_done if i == len(parts) - 1 else int(rows[part[-1]]) + 1
