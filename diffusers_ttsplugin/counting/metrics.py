"""The paper's counting metrics: RSS (residual sum of squares of the counts) and accuracy (all counts exact)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def count_errors(found: Sequence[dict[str, int]], targets: Sequence[dict[str, int]]) -> list[int]:
    """Per image Σ over the prompt's kinds of (found − target)² (kinds the prompt does not name are not scored,
    as in T2I-CompBench's numeracy task the paper uses)."""
    if len(found) != len(targets):
        raise ValueError(f"{len(found)} counted images but {len(targets)} targets")
    return [sum((f.get(k, 0) - n) ** 2 for k, n in t.items()) for f, t in zip(found, targets, strict=True)]


def counting_metrics(found: Sequence[dict[str, int]], targets: Sequence[dict[str, int]]) -> dict[str, float]:
    """RSS and accuracy with their s.e.m. over the images: `{"rss", "rss_sem", "accuracy", "accuracy_sem", "n"}`."""
    errors = np.asarray(count_errors(found, targets), dtype=np.float64)
    n = len(errors)
    if n == 0:
        raise ValueError("no images to score")
    exact = (errors == 0).astype(np.float64)

    def sem(v):
        return float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0

    return {
        "rss": float(errors.mean()),
        "rss_sem": sem(errors),
        "accuracy": float(exact.mean()),
        "accuracy_sem": sem(exact),
        "n": n,
    }
