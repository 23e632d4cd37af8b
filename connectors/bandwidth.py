"""Moved to `pipeline.bandwidth` (bandwidth accounting is the kernel's: it only adds up counters).

Kept so that existing imports keep working; new code imports `pipeline.bandwidth`.
"""
from pipeline.bandwidth import Bandwidth, BandwidthCollector, human_bytes  # noqa: F401
from pipeline.registry import CLOUD_SINKS  # noqa: F401
