"""Every source, stage and sink type, by name. Imported lazily: add one line to register a type.

The module name equals the type name (see docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import Any

SOURCES: dict[str, str] = {
    "replay": "pipeline.sources.replay:Replay",
    "mqtt": "connectors.mqtt.source:MqttSource",
}

STAGES: dict[str, str] = {
    "filter": "pipeline.stages.filter:Filter",
    "map": "pipeline.stages.map:Map",
    "onnx": "pipeline.stages.onnx:Onnx",
    "window": "pipeline.stages.window:Window",
    "anomaly": "detectors.anomaly:Anomaly",
    "frame_diff": "cache.frame_diff:FrameDiff",
    "deadband": "cache.deadband:DeadbandStage",
    "dedup": "cache.dedup:Dedup",
}

SINKS: dict[str, str] = {
    "file": "pipeline.sinks.file:FileSink",
    "stdout": "pipeline.sinks.stdout:StdoutSink",
    "influxdb": "connectors.influx.influxdb:InfluxdbSink",
    "sqlite": "connectors.local.sqlite:SqliteSink",
    "mqtt": "connectors.mqtt.sink:MqttSink",
}

# sink types whose bytes leave the site (bandwidth accounting: pipeline.bandwidth)
CLOUD_SINKS: frozenset[str] = frozenset({"influxdb", "mqtt"})

KINDS: dict[str, dict[str, str]] = {"sources": SOURCES, "stages": STAGES, "sinks": SINKS}


def load(kind: str, type_name: str) -> Any:
    """The class registered as ``type_name`` among ``kind`` (sources, stages or sinks)."""
    module_name, _, class_name = KINDS[kind][type_name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
