"""``edgesieve demo --quickstart``: the quickstart pipeline on embedded example data, with the live view and a summary."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.cli import duration_arg

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "quickstart" / "pipeline.yaml"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgesieve demo --quickstart", description="Run the quickstart pipeline on the embedded example data.")
    parser.add_argument("--for", dest="duration", type=duration_arg, default=None, metavar="DURATION")
    parser.add_argument("--out", default="out", help="folder for the aggregates and dead letters (default: out)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OUT_DIR", args.out)
    os.chdir(EXAMPLE.parents[2])
    from pipeline.cli import main as cli_main

    run_args = ["run", str(EXAMPLE), "--progress"] + (["--for", str(args.duration)] if args.duration else [])
    rc = cli_main(run_args)
    print(f"aggregates: {Path(args.out).resolve() / 'quickstart.ndjson'}", file=sys.stderr)
    return rc
