"""Topic templates: ``sensors/{site}/{device}/{kind}`` <-> tags.

A template is a ``/``-separated list of levels. A level is a literal (``sensors``), a named level
(``{site}``: any one level, captured as a tag), ``+`` (any one level, not captured), or, as the last
level only, ``#`` (any remaining levels, not captured) or ``{name...}`` (the remaining levels, captured
with their slashes).

>>> t = TopicTemplate("sensors/{site}/{device}/{kind}")
>>> t.match("sensors/plant1/pump7/vibration")
{'site': 'plant1', 'device': 'pump7', 'kind': 'vibration'}
>>> t.match("sensors/plant1/pump7") is None          # does not match: the message is dead-lettered
True
>>> t.subscription_filter()
'sensors/+/+/+'
>>> TopicTemplate("alerts/{site}/{device}").format({"site": "plant1", "device": "pump7", "x": "y"})
'alerts/plant1/pump7'
>>> TopicTemplate("$share/g/{a}/#").names
Traceback (most recent call last):
...
ValueError: topic template '$share/g/{a}/#': give the shared-subscription group in the subscription's `share_group`, not in the template
"""

from __future__ import annotations

import re

_NAMED = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}$")
_CACHE_MAX = 4096


class TopicTemplate:
    """A parsed topic template; ``match`` (topic -> tags or None) and ``format`` (tags -> topic)."""

    def __init__(self, template: str):
        self.template = template
        if not template:
            raise ValueError("topic template is empty: give e.g. 'sensors/{site}/{device}'")
        if template.startswith("$share/"):
            raise ValueError(f"topic template {template!r}: give the shared-subscription group in the "
                             "subscription's `share_group`, not in the template")
        self._levels: list[tuple[str, str | None]] = []   # (kind, value): literal/named/plus/hash/rest
        names: list[str] = []
        parts = template.split("/")
        for i, level in enumerate(parts):
            last = i == len(parts) - 1
            m = _NAMED.match(level)
            if m:
                if m.group(1) in names:
                    raise ValueError(f"topic template {template!r}: level name {{{m.group(1)}}} is used twice")
                if m.group(2) and not last:
                    raise ValueError(f"topic template {template!r}: {{{m.group(1)}...}} must be the last level")
                names.append(m.group(1))
                self._levels.append(("rest" if m.group(2) else "named", m.group(1)))
            elif level == "+":
                self._levels.append(("plus", None))
            elif level == "#":
                if not last:
                    raise ValueError(f"topic template {template!r}: '#' must be the last level")
                self._levels.append(("hash", None))
            elif any(c in level for c in "+#{}"):
                raise ValueError(f"topic template {template!r}: level {level!r} mixes text with a wildcard or "
                                 "{name}; a named level must be a whole level, e.g. 'sensors/{site}'")
            else:
                self._levels.append(("literal", level))
        self.names: tuple[str, ...] = tuple(names)
        self._cache: dict[str, dict[str, str] | None] = {}

    def subscription_filter(self) -> str:
        """The MQTT filter that covers every topic this template matches."""
        out = []
        for kind, value in self._levels:
            out.append(value if kind == "literal" else "#" if kind in ("hash", "rest") else "+")
        return "/".join(out)

    def match(self, topic: str) -> dict[str, str] | None:
        """Tags from ``topic``, or None when the topic does not fit the template. Cached per topic."""
        try:
            return self._cache[topic]
        except KeyError:
            pass
        tags = self._match(topic)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[topic] = tags
        return tags

    def _match(self, topic: str) -> dict[str, str] | None:
        parts = topic.split("/")
        tags: dict[str, str] = {}
        for i, (kind, value) in enumerate(self._levels):
            if kind == "hash":
                return tags
            if kind == "rest":
                rest = "/".join(parts[i:])
                if not rest:
                    return None
                tags[value] = rest
                return tags
            if i >= len(parts):
                return None
            if kind == "literal":
                if parts[i] != value:
                    return None
            elif kind == "named":
                if not parts[i]:
                    return None
                tags[value] = parts[i]
        return tags if len(parts) == len(self._levels) else None

    def format(self, tags: dict[str, str]) -> str:
        """Fill the named levels from ``tags``; KeyError names a missing tag, ValueError a bad value."""
        out = []
        for kind, value in self._levels:
            if kind == "literal":
                out.append(value)
            elif kind in ("named", "rest"):
                v = tags.get(value)
                if v is None or v == "":
                    raise KeyError(f"topic template {self.template!r} needs tag {value!r}, the record has "
                                   f"{sorted(k for k, x in tags.items() if x is not None)}")
                v = str(v)
                if "+" in v or "#" in v or (kind == "named" and "/" in v):
                    raise ValueError(f"tag {value}={v!r} cannot be a topic level (contains '/', '+' or '#')")
                out.append(v)
            else:
                raise ValueError(f"topic template {self.template!r}: a publish topic cannot contain '+' or '#'")
        return "/".join(out)

    def __repr__(self) -> str:
        return f"TopicTemplate({self.template!r})"
