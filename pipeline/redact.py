"""Keep secrets out of every output: validate, logs (text and json), errors, tracebacks and summaries.

Two nets, both applied to text on its way out:

- credentials written into a URL (``https://user:pass@host``) are masked by pattern: ``https://***@host``;
- every secret value the process has seen (``SecretStr`` fields of a pipeline file, passwords and tokens read
  from the environment or a file) is remembered with :func:`remember` and replaced by ``***`` wherever it appears.

:func:`install` puts both on the root logger's handlers and on uncaught exceptions (main and other threads).

>>> remember("hunter2-secret")
>>> redact("login failed for hunter2-secret at https://bob:pw@example.com/x")
'login failed for *** at https://***@example.com/x'
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from typing import Any

from pydantic import BaseModel, SecretStr

MASK = "***"
_URL_CREDENTIALS = re.compile(r"(?<=//)[^@/\s'\"]+@")
_MIN_LENGTH = 4            # shorter values would mask ordinary words; such a secret is no secret anyway
_seen: set[str] = set()
_lock = threading.Lock()


def mask_url_credentials(text: str) -> str:
    """``scheme://user:pass@host`` -> ``scheme://***@host`` anywhere in ``text``."""
    return _URL_CREDENTIALS.sub(MASK + "@", text)


def remember(value: str | SecretStr | None) -> None:
    """Mask ``value`` in every later output of this process."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value and len(value) >= _MIN_LENGTH:
        with _lock:
            _seen.add(value)
            for line in value.splitlines():   # a multi-line secret may be printed one line at a time
                if len(line) >= _MIN_LENGTH:
                    _seen.add(line)


def remember_config(model: BaseModel) -> None:
    """Remember every ``SecretStr`` value in a config model and the models inside it."""
    for name in type(model).model_fields:
        _remember_value(getattr(model, name, None))


def _remember_value(value: Any) -> None:
    if isinstance(value, SecretStr):
        remember(value)
    elif isinstance(value, BaseModel):
        remember_config(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _remember_value(v)
    elif isinstance(value, dict):
        for v in value.values():
            _remember_value(v)


def redact(text: str) -> str:
    """``text`` with URL credentials and every remembered secret masked."""
    if not isinstance(text, str):
        text = str(text)
    with _lock:
        secrets = sorted(_seen, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    return mask_url_credentials(text)


class RedactingFormatter(logging.Formatter):
    """Wraps another formatter; what it writes (message, traceback) is redacted."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def _excepthook(exc_type, exc, tb) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


def _thread_excepthook(args) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    sys.stderr.write(redact(f"Exception in thread {name}:\n"
                            + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))))


def install() -> None:
    """Redact what the root logger's handlers write and every uncaught traceback."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter()))
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
