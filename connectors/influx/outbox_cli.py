"""``edgesieve outbox``: look after an outbox file while its pipeline is stopped.

    edgesieve outbox check FILE                 counters, pending points, and whether the file is sound
    edgesieve outbox recover FILE               copy every readable point into a fresh outbox; old file kept aside
    edgesieve outbox set-aside FILE             start with an empty outbox; old file kept as FILE.damaged-<time>
    edgesieve outbox accept FILE --generation G go on with what the file holds after a lost write-ahead log
    edgesieve outbox requeue-dead FILE          put dead-lettered points back (after fixing the token, bucket...)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from connectors.influx.integrity import OutboxDamaged, readable_points, set_aside
from connectors.influx.outbox import Outbox, _exclusive


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgesieve outbox", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("check", "recover", "set-aside", "accept", "requeue-dead"):
        p = sub.add_parser(name)
        p.add_argument("file")
        if name == "accept":
            p.add_argument("--generation", type=int, required=True, help="the generation the checkpoint recorded")
    args = ap.parse_args(argv)
    path = Path(args.file)
    if not path.exists():
        print(f"{path}: no such outbox file", file=sys.stderr)
        return 1
    try:
        return _COMMANDS[args.command](path, args)
    except (OutboxDamaged, RuntimeError) as e:
        print(f"{e}", file=sys.stderr)
        return 1


def _check(path: Path, args) -> int:
    ob = Outbox(path)
    try:
        print(json.dumps(ob.stats(), indent=1))
    finally:
        ob.close()
    return 0


def _recover(path: Path, args) -> int:
    lock = _exclusive(path)
    try:
        points, bad = readable_points(path)
        old = set_aside(path)
    finally:
        lock.close()
    ob = Outbox(path)
    try:
        by_res: dict[float, list] = {}
        for m, tags, ts, fields, res in points:
            try:
                point = (m, json.loads(tags), int(ts), json.loads(fields))
                assert isinstance(m, str) and isinstance(point[1], dict) and isinstance(point[3], dict)
            except (TypeError, ValueError, AssertionError):
                bad += 1               # a row whose content is damaged
                continue
            by_res.setdefault(float(res or 0), []).append(point)
        stored = sum(ob.put(pts, res=res) for res, pts in by_res.items())
    finally:
        ob.close()
    print(f"recovered {stored} pending points into a fresh {path}"
          + (f"; {bad} damaged row(s) or block(s) of up to 100 rows could not be read" if bad else "")
          + f"; the damaged file is kept as {old}")
    return 0


def _set_aside(path: Path, args) -> int:
    lock = _exclusive(path)
    try:
        old = set_aside(path)
    finally:
        lock.close()
    print(f"{path} moved aside to {old}; the next start begins with an empty outbox")
    return 0


def _accept(path: Path, args) -> int:
    ob = Outbox(path)
    try:
        with ob._lock, ob._tx():
            ob._bump("generation", max(args.generation - ob.counters["generation"], 0))
        print(f"{path}: generation set to {ob.counters['generation']}; {ob.pending()} pending points are sent on the next start")
    finally:
        ob.close()
    return 0


def _requeue(path: Path, args) -> int:
    ob = Outbox(path)
    try:
        print(f"{path}: {ob.requeue_dead()} dead-lettered points put back")
    finally:
        ob.close()
    return 0


_COMMANDS = {"check": _check, "recover": _recover, "set-aside": _set_aside, "accept": _accept, "requeue-dead": _requeue}
