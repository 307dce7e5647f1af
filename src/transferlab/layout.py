"""Where the learning-curve sweep keeps its outputs: one folder per backbone's features and per grid point.

Kept apart from the sweep's compute so the Snakefile can name every point without importing torch at parse.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def label(value: float) -> str:
    """A fraction as it appears in paths and stage names (0.1, 0.25, 1.0)."""
    return str(float(value))


def features_dir(results: Path, backbone: str) -> Path:
    """Where the backbone's features for the whole sweep are cached."""
    return results / "sweep" / backbone / "features"


def point_dir(results: Path, backbone: str, fraction: float, seed: int) -> Path:
    return results / "sweep" / backbone / label(fraction) / str(seed)


def points(params: dict[str, Any]) -> list[tuple[str, float, int]]:
    """Every (backbone, fraction, seed) of the grid."""
    sw = params["sweep"]
    return [(b, float(f), int(s)) for b in sw["backbones"] for f in sw["fractions"] for s in sw["seeds"]]
