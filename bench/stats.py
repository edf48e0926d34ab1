"""Order statistics of a handful of repetitions: p50, p95, min, max (and mean, n)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict


class Summary(TypedDict):
    n: int
    p50: float
    p95: float
    min: float
    max: float
    mean: float


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    if lo == hi:
        return float(ordered[lo])
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo))


def summarize(values: Sequence[float]) -> Summary | None:
    """p50/p95/min/max/mean of ``values``; None when there are none (a figure not measured)."""
    clean = [float(v) for v in values if math.isfinite(v)]
    if not clean:
        return None
    return Summary(
        n=len(clean),
        p50=percentile(clean, 50),
        p95=percentile(clean, 95),
        min=min(clean),
        max=max(clean),
        mean=sum(clean) / len(clean),
    )
