"""Online anomaly detectors and the `anomaly` stage.

`detectors.HalfSpaceTrees` is the native, numpy-backed Half-Space Trees (score-equal to river's).
"""
from .hst import HalfSpaceTrees

__all__ = ["HalfSpaceTrees"]
