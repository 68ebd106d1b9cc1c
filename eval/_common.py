"""Shared helpers for the benchmark scripts: output folder, bootstrap intervals, report writing."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python eval/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

OUT_DIR = ROOT / "eval" / "out"


def bootstrap_ci(values: Sequence[float], n: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def write_report(name: str, data: dict[str, Any], markdown: str, out_dir: Path | None = None) -> Path:
    out = out_dir or OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    (out / f"{name}.md").write_text(markdown)
    return out / f"{name}.md"


def require_data(path: Path, what: str) -> None:
    if not path.exists():
        sys.exit(f"{what} not found at {path}: put the shared data beside the checkout or set HETERAG_DATA_DIR")


def wilson_ci(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` measured on ``n`` trials."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)


def percentiles_ms(seconds: Sequence[float]) -> tuple[float, float]:
    """p50 and p95 of latencies given in seconds, in milliseconds."""
    a = np.asarray(seconds, dtype=float) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))
