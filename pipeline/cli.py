"""The ``edgesieve`` command line: run, validate, stages, docs, schema (and the commands other packages add)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
from pathlib import Path

from .errors import ConfigError

# Commands implemented elsewhere: name -> "module:function" taking argv and returning an exit code.
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipeline.demo", "main"),
    "simulate": ("connectors.simulate", "main"),
    "quantize": ("pipeline.quantize", "main"),
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": record.created, "level": record.levelname.lower(), "logger": record.name,
                           "message": record.getMessage()})


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesieve", description="Streaming edge analytics for sensor gateways.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pipeline file until its sources end, --for elapses, or Ctrl-C")
    run.add_argument("file")
    run.add_argument("--for", dest="duration", type=float, default=None, metavar="SECONDS", help="stop after this many seconds")
    run.add_argument("--progress", action="store_true", help="show a live view of rates and counters")
    run.add_argument("--metrics-port", type=int, default=None, metavar="N", help="serve Prometheus metrics on this port")
    run.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                     help="address the metrics endpoint listens on (default 127.0.0.1; 0.0.0.0 in a container)")
    run.add_argument("--log-format", choices=["text", "json"], default=None, help="log format (default: the file's runtime.log_format)")
    val = sub.add_parser("validate", help="check a pipeline file without running it")
    val.add_argument("file")
    sub.add_parser("stages", help="list the source, stage and sink types")
    docs = sub.add_parser("docs", help="write the stage reference generated from the config models")
    docs.add_argument("--out", default="docs/stages.md")
    sub.add_parser("schema", help="print the JSON Schema of a pipeline file")
    for name in EXTERNAL_COMMANDS:
        sub.add_parser(name, help=f"see `edgesieve {name} --help`", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in EXTERNAL_COMMANDS:
        module, func = EXTERNAL_COMMANDS[argv[0]]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.file)
    if args.command == "run":
        return _run(args)
    if args.command == "stages":
        from .reference import list_types

        for kind, name, summary in list_types():
            print(f"{kind:<7} {name:<12} {summary}")
        return 0
    if args.command == "docs":
        from .reference import reference_markdown

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(reference_markdown())
        print(f"wrote {args.out}")
        return 0
    if args.command == "schema":
        from .reference import pipeline_schema

        print(json.dumps(pipeline_schema(), indent=2))
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


def _load(file: str):
    from .loader import parse_pipeline

    try:
        return parse_pipeline(Path(file))
    except ConfigError as exc:
        n = len(exc.problems)
        print(f"{file}: {n} problem{'s' if n != 1 else ''}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _stage_start_problems(spec) -> list[str]:
    """Build each stage once (models loaded and checked against their config) and collect what fails, by stage."""
    import tempfile

    from . import registry
    from .graph import DeadLetters
    from .metrics import Metrics
    from .stage import Context

    problems = []
    with tempfile.TemporaryDirectory() as state_dir:
        for c in spec.stages:
            line, col = spec.document.position(("stages", [x.id for x in spec.stages].index(c.id))) if spec.document else (1, 1)
            try:
                stage = registry.load("stages", c.type)(
                    c, Context(c.id, Metrics(spec.name), DeadLetters(Metrics(spec.name), None, True), state_dir,
                               spec.name, base_dir=spec.base_dir))
                stage.close()
            except Exception as exc:
                problems.append(f"{spec.file}:{line}:{col}: stage {c.id!r} ({c.type}): cannot start: {exc}")
    return problems


def _validate(file: str) -> int:
    spec = _load(file)
    if spec is None:
        return 1
    problems = _stage_start_problems(spec)
    if problems:
        print(f"{file}: {len(problems)} stage(s) cannot start:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    from .lint import expression_problems

    problems = expression_problems(spec)
    if problems:
        print(f"{file}: {len(problems)} expression(s) would never be true:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{file}: pipeline {spec.name!r} is valid")
    for title, items in (("sources", spec.sources), ("stages", spec.stages), ("sinks", spec.sinks)):
        print(f"{title}:")
        for c in items:
            inputs = f" <- {', '.join(c.inputs)}" if hasattr(c, "inputs") else ""
            shown = c.model_dump(exclude={"id", "type", "inputs"}, exclude_defaults=True, mode="json")
            print(f"  {c.id} ({c.type}){inputs}  {json.dumps(shown, default=str)}")
    rt = spec.runtime
    print(f"runtime: batches of up to {rt.batching.max_records} records / {rt.batching.max_wait}s, "
          f"checkpoint {rt.checkpoint.path or 'off'}" + (f" every {rt.checkpoint.interval}s" if rt.checkpoint.path else "")
          + f", dead letters to {rt.dead_letter or 'counters only'}")
    return 0


def _run(args) -> int:
    from .progress import LiveView, print_summary
    from .runtime import Pipeline

    spec = _load(args.file)
    if spec is None:
        return 1
    setup_logging(args.log_format or spec.runtime.log_format)
    try:
        pipeline = Pipeline(spec)
    except Exception as exc:  # a stage that cannot start (model file, bad state dir): say which and why
        print(f"{args.file}: the pipeline cannot start: {exc}", file=sys.stderr)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: pipeline.stop(signal.Signals(signum).name))
    port = args.metrics_port or spec.runtime.metrics_port
    server = None
    if port:
        from .metrics import serve_prometheus

        server = serve_prometheus(pipeline.metrics, port, addr=args.metrics_addr, spec=spec)
        logging.getLogger("edgesieve").info("metrics on http://%s:%d/metrics", args.metrics_addr, port)
    view = LiveView(pipeline) if args.progress else None
    try:
        summary = pipeline.run(duration=args.duration, on_tick=view.update if view else None)
    finally:
        if view:
            view.close()
        if server is not None:
            server.shutdown()
    print_summary(summary)
    return 1 if summary.error else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
