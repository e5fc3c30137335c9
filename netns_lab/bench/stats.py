"""Statistics the bench reports: percentiles, medians, ratios to the direct-routing limit. Pure, stdlib only.

On a 2-core machine shared with other work single timings are noisy, so every figure is a
median over repeated, interleaved samples, and a ratio to direct routing is the median of the
ratios of samples taken side by side (each mode sample paired with the direct sample measured
next to it), which cancels most of the drift of the machine's load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0-100) with linear interpolation between ranks; None for no values."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be between 0 and 100, not {p}")
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    rank = (len(xs) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (rank - lo))


def median(values: Sequence[float | None]) -> float | None:
    """Median of the values that are not None; None if there are none."""
    xs = [v for v in values if v is not None]
    return percentile(xs, 50) if xs else None


def trimmed_mean(values: Sequence[float], keep: float = 0.9) -> float | None:
    """Mean of the smallest `keep` fraction of the values (at least one): a central figure that ignores
    the slow tail (a preempted run) yet, unlike a median of whole microseconds, moves in small steps."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], not {keep}")
    xs = sorted(values)
    if not xs:
        return None
    k = max(1, int(len(xs) * keep))
    return sum(xs[:k]) / k


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, min, p50, p90, p99, max, mean and tmean90 (trimmed_mean) of a sample (None fields when it is empty)."""
    xs = list(values)
    out: dict[str, float | int | None] = {"n": len(xs), "min": min(xs) if xs else None}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(xs, p)
    out["max"] = max(xs) if xs else None
    out["mean"] = sum(xs) / len(xs) if xs else None
    out["tmean90"] = trimmed_mean(xs)
    return out


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, None when either is missing or the reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def paired_ratio(values: Sequence[float | None], references: Sequence[float | None]) -> float | None:
    """Median of value_i / reference_i over the pairs where both exist."""
    if len(values) != len(references):
        raise ValueError(f"{len(values)} values but {len(references)} references")
    return median([ratio(v, r) for v, r in zip(values, references)])


def spread(values: Sequence[float | None]) -> float | None:
    """(max - min) / median of the samples: how much repeated runs disagree (None under 2 samples)."""
    xs = [v for v in values if v is not None]
    m = median(xs)
    if len(xs) < 2 or not m:
        return None
    return (max(xs) - min(xs)) / m


def cpu_s_per_gbit(cpu_s: float | None, bits_per_s: float | None, seconds: float | None) -> float | None:
    """CPU seconds spent per Gbit moved: cpu_s / (bits_per_s * seconds / 1e9)."""
    if cpu_s is None or not bits_per_s or not seconds:
        return None
    return cpu_s / (bits_per_s * seconds / 1e9)
