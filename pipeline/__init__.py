"""edgesieve's spine: pipeline files, the stage graph runtime and the built-in stages.

>>> p = load_pipeline('''
... sources: [{id: readings, type: replay, path: unused.csv, tags: [device]}]
... stages:
...   - {id: hot, type: filter, inputs: [readings], where: "t > 20"}
... sinks: [{id: out, type: stdout, inputs: [hot]}]
... ''')
>>> p.run_records([{"ts": 1, "tags": {"device": "a"}, "fields": {"t": 25}},
...                {"ts": 2, "tags": {"device": "a"}, "fields": {"t": 15}}])["out"]
[{'ts': 1.0, 'tags': {'device': 'a'}, 'fields': {'t': 25.0}}]
"""

from .batch import Batch
from .errors import ConfigError

__version__ = "0.1.0"


def load_pipeline(source, env=None):
    """Validate a pipeline file (a path or YAML text) and build it; see :class:`pipeline.runtime.Pipeline`."""
    from .loader import parse_pipeline
    from .runtime import Pipeline

    return Pipeline(parse_pipeline(source, env))


__all__ = ["Batch", "ConfigError", "load_pipeline", "__version__"]
