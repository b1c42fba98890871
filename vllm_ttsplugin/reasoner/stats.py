"""Interval estimates for accuracies (Wilson score intervals: correct near 0 and 1, unlike the normal one)."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (default 95 %). `n == 0` gives (0, 1)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}, {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends (rounding would leave 1 - 1e-16)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def accuracy(flags: list[bool]) -> dict:
    """`{"n", "correct", "accuracy", "ci95": [lo, hi]}` for a list of per-problem outcomes."""
    correct = int(sum(bool(f) for f in flags))
    lo, hi = wilson(correct, len(flags))
    return {
        "n": len(flags),
        "correct": correct,
        "accuracy": correct / len(flags) if flags else float("nan"),
        "ci95": [lo, hi],
    }


def mean_sem(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
