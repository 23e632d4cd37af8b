"""The topic filters a persistent MQTT session holds, remembered in the state folder so removed ones can go.

A persistent session keeps its subscriptions on the broker across restarts. When a subscription is removed from
the pipeline file, the broker would go on sending its messages (dead letters: they match no subscription). So
the source remembers what it subscribed to (``<state_dir>/mqtt/<client id>.subscriptions.json``) and, on a
connect that finds the session, unsubscribes the filters it remembers and no longer has. The file lists the
stale filters too until the broker confirms the unsubscribe, so an interrupted start tries again next time.

>>> import tempfile, pathlib
>>> m = SubscriptionMemory(pathlib.Path(tempfile.mkdtemp()) / "c.json", where="source 'in'")
>>> m.connecting(["a/#", "b/#"], session_present=False)
[]
>>> SubscriptionMemory(m.path, where="source 'in'").connecting(["a/#"], session_present=True)
['b/#']
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.statefiles import write_private

log = logging.getLogger("edgesieve.mqtt")


class SubscriptionMemory:
    def __init__(self, path: Path, where: str):
        self.path, self.where = Path(path), where
        self._configured: list[str] = []

    def connecting(self, configured: list[str], session_present: bool) -> list[str]:
        """Remember ``configured``; return the remembered filters to unsubscribe (only when the session is there)."""
        remembered = self._read()
        stale = [t for t in remembered if t not in configured] if session_present else []
        self._configured = list(configured)
        self._write(list(configured) + stale)
        return stale

    def unsubscribed(self) -> None:
        """The broker confirmed the unsubscribe: forget the stale filters."""
        self._write(self._configured)

    def _read(self) -> list[str]:
        try:
            data = json.loads(self.path.read_text())
            return [str(t) for t in data["filters"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: cannot read %s (%s); stale subscriptions of the session are not removed",
                        self.where, self.path, e)
            return []

    def _write(self, filters: list[str]) -> None:
        try:
            write_private(self.path, json.dumps({"filters": filters}).encode(), durable=False)
        except OSError as e:
            log.warning("%s: cannot write %s (%s); removed subscriptions may stay in the session",
                        self.where, self.path, e)
