"""Errors meant for people: each problem says where (file:line:column, stage id), what, and what to do."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline file."""

    file: str
    line: int
    column: int
    message: str
    item: str | None = None  # "stage 'per_device' (window)"
    hint: str | None = None

    def __str__(self) -> str:
        from .redact import redact

        where = f"{self.file}:{self.line}:{self.column}"
        what = f"{self.item}: {self.message}" if self.item else self.message
        return redact(f"{where}: {what}" + (f" — {self.hint}" if self.hint else ""))


class ConfigError(Exception):
    """A pipeline file with one or more problems; ``str()`` lists every one of them."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))


class PipelineStopped(Exception):
    """A stage with ``on_error: stop`` failed; the runtime stops the pipeline with this error."""
