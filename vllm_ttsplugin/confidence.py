"""DeepConf's confidence measures (Fu et al. 2025, "Deep Think with Confidence"): keys, math and the vote.

Token confidence at output position i: the negative mean log-probability of the k most likely candidates,
``C_i = -(1/k) sum_{j<=k} log p_i(j)`` (k defaults to 20), under the request's own temperature (greedy requests:
temperature 1), without top-k/top-p truncation. High means a peaked distribution. A trace's *group* (window)
confidence at position i is the mean of ``C`` over the last ``window`` positions; its *lowest-window* confidence
is the minimum over its full windows (the mean of all its tokens when it is shorter than one window), its *tail*
confidence the mean over its last ``window`` tokens.

Per request, through `SamplingParams.extra_args` / `vllm_xargs` (in-engine; `vllm_ttsplugin.ConfidenceComponent`):

- ``tts_confidence_threshold`` (finite number): stop the sample once a full window's confidence falls below it.
  The check runs before each token: when the window of the last ``window`` tokens has a mean below the
  threshold, the next token is the stop marker (`vllm_ttsplugin.ffs.FFS_MARKER_TEXT`, like a First Finish loser),
  so a stopped sample ends with ``stop_reason`` = the marker token. Samples shorter than one window are never
  stopped.
- ``tts_confidence_window`` (int, 1..16384, default 2048): the window; needs the threshold.
- ``tts_confidence_top_k`` (int, 1..1024 and at most the vocabulary, default 20): k; needs the threshold.

The rule involves no other request (no race, no group), so no client can affect another's samples.

This module is framework-free: the per-step, batched computation on logits is `token_confidence` (torch); the
rest works on host arrays of token confidences in float64 (e.g. computed from vLLM's returned logprobs).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm_ttsplugin.config import TTSParamsError

THRESHOLD_KEY = "tts_confidence_threshold"
WINDOW_KEY = "tts_confidence_window"
TOP_K_KEY = "tts_confidence_top_k"
CONFIDENCE_KEYS = (THRESHOLD_KEY, WINDOW_KEY, TOP_K_KEY)
DEFAULT_WINDOW = 2048
DEFAULT_TOP_K = 20
MAX_WINDOW = 16384  # per-slot ring buffers are sized by the largest window admitted
MAX_TOP_K = 1024
GREEDY_EPS = 1e-5  # vLLM's: a temperature below it is greedy

__all__ = [
    "CONFIDENCE_KEYS",
    "ConfidenceRequest",
    "group_confidences",
    "lowest_group_confidence",
    "parse_confidence_args",
    "percentile_threshold",
    "stop_position",
    "tail_confidence",
    "token_confidence",
    "token_confidences_from_logprobs",
    "weighted_vote",
]


@dataclass(frozen=True)
class ConfidenceRequest:
    """The confidence keys of one request."""

    threshold: float
    window: int = DEFAULT_WINDOW
    top_k: int = DEFAULT_TOP_K


def _error(key: str, message: str, value: Any = None) -> TTSParamsError:
    return TTSParamsError(message, parameter=key, value=value)


def _int_in(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise _error(key, f"`{key}` must be an integer in [{low}, {high}], got {value!r}", value)
    return int(value)


def parse_confidence_args(
    extra_args: Mapping[str, Any] | None, vocab_size: int | None = None
) -> ConfidenceRequest | None:
    """Parse and check the ``tts_confidence_*`` keys; None when the request has none.

    Raises:
        TTSParamsError: naming the key, for a non-finite or non-numeric threshold, a window or k out of range
            (k above the vocabulary size when it is known), or a window / k without a threshold.
    """
    if not extra_args or not any(key in extra_args for key in CONFIDENCE_KEYS):
        return None
    threshold = extra_args.get(THRESHOLD_KEY)
    if threshold is None:
        key = next(k for k in CONFIDENCE_KEYS if k in extra_args)
        raise _error(
            key, f"`{key}` needs `{THRESHOLD_KEY}` (the window confidence below which a sample stops)"
        )
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not math.isfinite(float(threshold))
    ):
        raise _error(
            THRESHOLD_KEY, f"`{THRESHOLD_KEY}` must be a finite number, got {threshold!r}", threshold
        )
    window = _int_in(WINDOW_KEY, extra_args.get(WINDOW_KEY, DEFAULT_WINDOW), 1, MAX_WINDOW)
    top_k_max = MAX_TOP_K if vocab_size is None else min(MAX_TOP_K, int(vocab_size))
    top_k = _int_in(TOP_K_KEY, extra_args.get(TOP_K_KEY, DEFAULT_TOP_K), 1, top_k_max)
    return ConfidenceRequest(float(threshold), window, top_k)


# -- per step, batched (the processor) ----------------------------------------------------------------------------
def token_confidence(
    logits: torch.Tensor, inv_temperature: torch.Tensor | None, top_k: torch.Tensor, k_max: int | None = None
) -> torch.Tensor:
    """[rows] token confidence of each row's next-token distribution (no host sync).

    Args:
        logits: [rows, vocab] logits before temperature.
        inv_temperature: [rows] 1 / temperature; None when every row's is 1 (saves a pass over the logits).
        top_k: [rows] int k per row (>= 1, <= vocab).
        k_max: an upper bound of `top_k` known on the host (read from `top_k` when None: a sync off the CPU).

    Returns:
        [rows] float32 ``logsumexp(z) - mean(top-k of z)`` with ``z = logits / T``, i.e. ``-mean(top-k log p)``.
    """
    scaled = logits.to(torch.float32)
    if inv_temperature is not None:
        scaled = scaled * inv_temperature.to(torch.float32).unsqueeze(1)
    k_max = int(top_k.max()) if k_max is None else k_max
    top = scaled.topk(min(k_max, scaled.shape[1]), dim=1).values
    keep = torch.arange(top.shape[1], device=top.device).unsqueeze(0) < top_k.unsqueeze(1)
    mean_top = torch.where(keep, top, 0.0).sum(dim=1) / top_k.to(torch.float32)
    return torch.logsumexp(scaled, dim=1) - mean_top


# -- a trace's token confidences (host, float64) -------------------------------------------------------------------
def token_confidences_from_logprobs(logprobs: Sequence[Mapping[int, Any]], top_k: int) -> np.ndarray:
    """[tokens] confidences from vLLM's returned top-k logprobs (``CompletionOutput.logprobs``, ``logprobs>=k``).

    vLLM returns each position's top candidates (``rank`` 1..k) plus the sampled token when it ranks lower; the
    candidates of rank <= `top_k` are averaged.
    """
    out = np.empty(len(logprobs), dtype=np.float64)
    for i, position in enumerate(logprobs):
        values = [float(lp.logprob) for lp in position.values() if lp.rank is not None and lp.rank <= top_k]
        if len(values) != top_k:
            raise ValueError(
                f"position {i} has {len(values)} candidates of rank <= {top_k}: request logprobs>={top_k}"
            )
        out[i] = -float(np.mean(values))
    return out


def group_confidences(confidences: Sequence[float], window: int) -> np.ndarray:
    """Window means ending at each position from the first full window on; one group for a shorter trace."""
    c = np.asarray(confidences, dtype=np.float64)
    if c.size == 0:
        return c
    if c.size < window:
        return np.array([c.mean()])
    cumulative = np.concatenate([[0.0], np.cumsum(c)])
    return (cumulative[window:] - cumulative[:-window]) / window


def lowest_group_confidence(confidences: Sequence[float], window: int) -> float:
    groups = group_confidences(confidences, window)
    return float(groups.min()) if groups.size else math.nan


def tail_confidence(confidences: Sequence[float], window: int) -> float:
    c = np.asarray(confidences, dtype=np.float64)
    return float(c[-window:].mean()) if c.size else math.nan


def stop_position(confidences: Sequence[float], window: int, threshold: float) -> int | None:
    """Where the in-engine rule stops a trace with these token confidences: the first output position t >= window
    whose preceding window ``C[t-window:t]`` has a mean below `threshold` (the marker becomes token t); None when
    it never stops within these tokens."""
    c = np.asarray(confidences, dtype=np.float64)
    if c.size < window:
        return None
    cumulative = np.concatenate([[0.0], np.cumsum(c)])
    means = (cumulative[window:] - cumulative[:-window]) / window  # means[j]: window ending at j + window - 1
    below = np.flatnonzero(means < threshold)
    # The window ending at the last token would stop a token after the trace's end.
    below = below[below + window < c.size]
    return int(below[0]) + window if below.size else None


def percentile_threshold(lowest_confidences: Sequence[float], keep_percent: float) -> float:
    """DeepConf's online threshold: the (100 - keep_percent)-th percentile of the warm-up traces' lowest-window
    confidences (linear interpolation), so that about `keep_percent` % of such traces would survive."""
    values = np.asarray(lowest_confidences, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no warm-up confidences")
    return float(np.percentile(values, 100.0 - keep_percent))


def weighted_vote(
    answers: Sequence[str | None], weights: Sequence[float]
) -> tuple[str | None, dict[str, float]]:
    """Confidence-weighted majority vote: the answer with the largest total weight (None answers ignored; ties go
    to the answer seen first). Returns (answer, total weight per answer)."""
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, weights, strict=True):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + float(weight)
    if not totals:
        return None, totals
    best = max(totals.values())
    return next(a for a in totals if totals[a] == best), totals
