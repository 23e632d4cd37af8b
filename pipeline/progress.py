"""The live terminal view (``--progress``) and the end-of-run summary, drawn with rich."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

_COLUMNS = ("in", "out", "filtered", "late", "dead_lettered", "errors", "shed")


def counters_table(counters: dict[str, dict[str, int]], rates: dict[str, float] | None = None, title: str = "") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("item")
    for col in _COLUMNS:
        table.add_column(col, justify="right")
    if rates is not None:
        table.add_column("records/s", justify="right")
    for item, c in sorted(counters.items()):
        row = [item] + [f"{c.get(col, 0):,}" if c.get(col) else "" for col in _COLUMNS]
        if rates is not None:
            row.append(f"{rates.get(item, 0.0):,.0f}")
        table.add_row(*row)
    return table


class LiveView:
    """Redraws a table of counters and rates about twice a second."""

    def __init__(self, pipeline, console: Console | None = None):
        self.pipeline = pipeline
        self.console = console or Console(file=sys.stderr)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()
        self._last = (time.monotonic(), {})

    def update(self, pipeline=None) -> None:
        now = time.monotonic()
        then, before = self._last
        if now - then < 0.5:
            return
        counters = self.pipeline.metrics.by_item()
        rates = {item: (c.get("out", c.get("in", 0)) - before.get(item, {}).get("out", before.get(item, {}).get("in", 0))) / (now - then)
                 for item, c in counters.items()}
        self._last = (now, counters)
        self.live.update(counters_table(counters, rates, title=f"edgesieve · {self.pipeline.name}"))

    def close(self) -> None:
        self.live.stop()


# what a sink did not deliver as it was given, in the words of the summary
_NOT_AS_GIVEN = (("outbox_dropped", "points dropped by the outbox's disk bound"),
                 ("outbox_dead_lettered", "points refused by the server (in the outbox's dead-letter table)"),
                 ("dead_lettered", "records dead-lettered"),
                 ("outbox_coarsened_in", "points merged into coarser windows"),
                 ("undelivered", "records not written (no checkpoint covers them)"),
                 ("blocked_episodes", "times it could not take data and held the pipeline"))


def delivery_lines(counters: dict[str, dict[str, int]]) -> list[str]:
    """One line per sink that dropped, dead-lettered, merged or held anything (nothing is lost silently)."""
    out = []
    for item, c in sorted(counters.items()):
        parts = [f"{c[k]:,} {words}" for k, words in _NOT_AS_GIVEN if c.get(k)]
        if parts and any(k.startswith("outbox_") or k in ("undelivered", "blocked_episodes") for k, _ in _NOT_AS_GIVEN
                         if c.get(k)):
            out.append(f"{item}: " + "; ".join(parts))
    return out


def print_summary(summary, console: Console | None = None) -> None:
    console = console or Console(file=sys.stderr)
    console.print(counters_table(summary.counters, title=f"pipeline {summary.pipeline!r}: {summary.seconds:.2f}s, "
                                 f"stopped by {summary.stopped_by}"))
    for line in delivery_lines(summary.counters):
        console.print(line, markup=False)
    bandwidth = summary.extra.get("bandwidth")
    if bandwidth is not None and (bandwidth.bytes_in or bandwidth.bytes_out):
        console.print(f"bandwidth: {bandwidth}")
    if summary.error:
        console.print(f"[red]error: {summary.error}[/red]")
