"""The ``edgesieve`` command line: run, test, validate, stages, docs, schema (and the commands other packages add).

Durations are written as in the pipeline file (``--for 90``, ``--for 1m30s``); errors a person can fix (a missing
file, a busy metrics port) are one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError

# Commands implemented elsewhere: name -> "module:function" taking argv and returning an exit code.
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("connectors.simulate.demo", "main"),
    "simulate": ("connectors.simulate", "main"),
    "quantize": ("pipeline.quantize", "main"),
    "outbox": ("connectors.influx.outbox_cli", "main"),
    "model": ("pipeline.inference.model_cli", "main"),
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": record.created, "level": record.levelname.lower(), "logger": record.name,
                           "message": record.getMessage()})


LOG_LEVELS = ("debug", "info", "warning", "error")


def duration_arg(text: str) -> float:
    """argparse type for durations: seconds, or 10s, 5m, 1h30m, 250ms (as in the pipeline file)."""
    from .config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def setup_logging(fmt: str = "text", level: int | str = logging.INFO) -> None:
    if isinstance(level, str):
        level = getattr(logging, level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    from .redact import install

    install()  # no secret in a log line or a traceback (docs/security.md)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesieve", description="Streaming edge analytics for sensor gateways.")
    parser.add_argument("--version", action="version", version=f"edgesieve {__version__}")
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="least severe log messages shown (default info)")
    logs.add_argument("--log-format", choices=["text", "json"], default=None, help="log format (default: the file's runtime.log_format)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[logs], help="run a pipeline file until its sources end, --for elapses, or Ctrl-C")
    run.add_argument("file")
    run.add_argument("--for", dest="duration", type=duration_arg, default=None, metavar="DURATION",
                     help="stop after this long: seconds or 30s, 1m, 1h30m")
    run.add_argument("--progress", action="store_true", help="show a live view of rates and counters")
    run.add_argument("--watch", action="store_true",
                     help="reload the pipeline file when it changes (as SIGHUP does): unchanged stages keep their state")
    run.add_argument("--metrics-port", type=int, default=None, metavar="N", help="serve Prometheus metrics on this port")
    run.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                     help="address the metrics endpoint listens on (default 127.0.0.1; 0.0.0.0 in a container)")
    test = sub.add_parser("test", parents=[logs], help="print what each stage makes of a few sample inputs; writes nothing")
    test.add_argument("file")
    test.add_argument("--samples", type=int, default=5, metavar="N", help="records to take from the sources (default 5)")
    test.add_argument("--input", default=None, metavar="FILE",
                      help="take the records from this NDJSON/JSON file instead of running the sources")
    test.add_argument("--source", default=None, metavar="ID", help="the source --input records stand for (default: the first)")
    test.add_argument("--timeout", type=duration_arg, default=10.0, metavar="DURATION",
                      help="how long to wait for the samples (default 10s)")
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
    if args.command == "test":
        return _test(args)
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

    if not Path(file).is_file():
        why = "is a folder, not a pipeline file" if Path(file).is_dir() else "no such file"
        print(f"edgesieve: {file}: {why}", file=sys.stderr)
        return None
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
    from .redact import redact
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
                problems.append(redact(f"{spec.file}:{line}:{col}: stage {c.id!r} ({c.type}): cannot start: {exc}"))
    return problems


def _validate(file: str) -> int:
    spec = _load(file)
    if spec is None:
        return 1
    from .paths import escape_problems, missing_input_problems
    from .redact import redact

    for p in escape_problems(spec):  # under `runtime.outside_paths: refuse` the loader already refused these
        print(f"  warning: {p}", file=sys.stderr)
    problems = [str(p) for p in missing_input_problems(spec)] + _stage_start_problems(spec)
    if problems:
        print(f"{file}: {len(problems)} problem(s) before start:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    from .lint import expression_problems, window_collision_problems

    for what, problems in (("expression(s) would never be true", expression_problems(spec)),
                           ("sink(s) would lose aggregates", window_collision_problems(spec))):
        if problems:
            print(f"{file}: {len(problems)} {what}:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            return 1
    print(f"{file}: pipeline {spec.name!r} is valid")
    for title, items in (("sources", spec.sources), ("stages", spec.stages), ("sinks", spec.sinks)):
        print(f"{title}:")
        for c in items:
            inputs = f" <- {', '.join(c.inputs)}" if hasattr(c, "inputs") else ""
            shown = c.model_dump(exclude={"id", "type", "inputs"}, exclude_defaults=True, mode="json")
            print(redact(f"  {c.id} ({c.type}){inputs}  {json.dumps(shown, default=str)}"))
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
    setup_logging(args.log_format or spec.runtime.log_format, args.log_level)
    try:
        pipeline = Pipeline(spec)
    except Exception as exc:  # a stage that cannot start (model file, bad state dir): say which and why
        from .redact import redact

        print(redact(f"{args.file}: the pipeline cannot start: {exc}"), file=sys.stderr)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: pipeline.stop(signal.Signals(signum).name))
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: pipeline.request_reload())
    if args.watch:
        _watch(Path(args.file), pipeline)
    port = args.metrics_port or spec.runtime.metrics_port
    server = None
    if port:
        from .metrics import serve_prometheus

        try:
            server = serve_prometheus(pipeline.metrics, port, addr=args.metrics_addr, spec=spec)
        except OSError as exc:
            pipeline.graph.close()
            print(f"edgesieve: cannot serve metrics on {args.metrics_addr}:{port}: {exc.strerror or exc} "
                  "(is another edgesieve or exporter using it? choose another with --metrics-port)", file=sys.stderr)
            return 1
        logging.getLogger("edgesieve").info("metrics on http://%s:%d/metrics", args.metrics_addr, port)
    view = None
    if args.progress and not sys.stderr.isatty():
        print("edgesieve: --progress draws a live view only when stderr is a terminal (it is redirected here); "
              "the counters are printed when the run ends, and --metrics-port serves them live", file=sys.stderr)
    elif args.progress:
        view = LiveView(pipeline)
    try:
        summary = pipeline.run(duration=args.duration, on_tick=view.update if view else None)
    finally:
        if view:
            view.close()
        if server is not None:
            server.shutdown()
    print_summary(summary)
    return 1 if summary.error else 0


def _watch(path: Path, pipeline, interval: float = 0.5) -> None:
    """Ask ``pipeline`` to reload when the file's modification time or size changes (a daemon thread)."""
    import threading

    def stamp():
        try:
            st = path.stat()
            return st.st_mtime_ns, st.st_size
        except OSError:
            return None

    def loop():
        last = stamp()
        while not pipeline._stop.wait(interval):
            now = stamp()
            if now != last and now is not None:
                last = now
                logging.getLogger("edgesieve").info("%s changed: reloading", path)
                pipeline.request_reload()

    threading.Thread(target=loop, name="watch", daemon=True).start()


def _test(args) -> int:
    from .trial import run_test

    spec = _load(args.file)
    if spec is None:
        return 1
    setup_logging(args.log_format or spec.runtime.log_format, args.log_level)
    if args.input is not None and not Path(args.input).is_file():
        print(f"edgesieve: {args.input}: no such file", file=sys.stderr)
        return 1
    try:
        return run_test(spec, samples=args.samples, input_file=args.input, source=args.source, timeout=args.timeout)
    except ValueError as exc:     # a bad --input file: the line is named
        print(f"edgesieve: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
