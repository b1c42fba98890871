"""Sampling math of thinking control: a counter-based uniform generator and the probability of an end attempt.

An *end attempt* is a set of tokens (the end delimiter's first token, EOS, the request's stop tokens). Whether the
model "would have produced" one of them is decided like vLLM's sampler would draw: greedy requests attempt when
the argmax is in the set; sampled requests attempt with probability p(set) = the sum of the set's probabilities
after temperature, min-p and top-k/top-p (computed the way vLLM's sampler truncates), compared with a uniform from
`counter_uniform`, keyed by (request seed, output position).

Framework-free: torch only (numpy arrays are accepted by `counter_uniform`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

PAD_TOKEN = -1  # padding in token-set rows (never a real id)

# -- counter-based uniforms ------------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF


def _mul32(h, c: int):
    # (h * c) mod 2**32 for h < 2**32 without overflowing int64: split c into 16-bit halves.
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h):
    # MurmurHash3's 32-bit finaliser: a bijection with full avalanche.
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def counter_uniform(seed, counter):
    """Uniforms in [0, 1) (24-bit, exact in float32) from (int64 seed, int64 counter): same pair, same number.

    A counter-based generator: no state to carry, so a decision made for output position i of a request with
    seed s is the same whether the step ran once, was discarded and re-run, or the request was preempted and
    resumed, and it is independent of how requests are batched. Works on int64 torch tensors (any device) and
    numpy arrays alike, with identical results.
    """
    if isinstance(seed, torch.Tensor):
        seed, counter = seed.to(torch.int64), counter.to(torch.int64)
    else:
        seed, counter = np.asarray(seed, dtype=np.int64), np.asarray(counter, dtype=np.int64)
    hi = _fmix32(((seed >> 32) & _M32) ^ 0x68E31DA4)
    lo = _fmix32(((seed & _M32) ^ hi) ^ 0x3C6EF372)
    h = _fmix32(_mul32(counter & _M32, 0x9E3779B1) ^ lo)
    h = _fmix32(h ^ 0x1B873593)
    if isinstance(h, torch.Tensor):
        return (h >> 8).to(torch.float32) * (1.0 / 2**24)
    return ((h >> 8) * (1.0 / 2**24)).astype(np.float32)


def int64_seed(seed: int) -> int:
    """Map any Python int onto the int64 range (two's complement of seed mod 2**64)."""
    return ((int(seed) + 2**63) % 2**64) - 2**63


# -- the request's sampling distribution, as vLLM's sampler truncates it ----------------------------------------
def truncated_log_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor | None,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probabilities after temperature, min-p and top-k/top-p, in vLLM's sampler order and definitions.

    The top-k/top-p part is a copy of vLLM's reference `apply_top_k_top_p_pytorch` (ascending sort, keep values
    >= the k-th largest, then drop the low tail whose cumulative probability is <= 1 - p, always keeping the
    largest); `tests/test_thinking_core.py` checks it against vLLM's own function.

    Args:
        logits: [rows, vocab] logits as a logits processor sees them (before temperature).
        temperature: [rows] > 0; `None` means 1 for every row (saves a pass over the vocabulary).
        top_k: [rows] int, <= 0 or >= vocab means off; `None` when no row uses it.
        top_p: [rows] float in (0, 1], 1 means off; `None` when no row uses it.
        min_p: [rows] float in [0, 1], 0 means off; `None` when no row uses it.

    Returns:
        [rows, vocab] float32 log-probabilities (-inf for truncated tokens).
    """
    scaled = logits.to(torch.float32)
    if temperature is not None:
        scaled = scaled / temperature.to(torch.float32).unsqueeze(1)
    if min_p is not None:
        probs = scaled.softmax(dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * min_p.to(torch.float32).unsqueeze(1)
        scaled = scaled.masked_fill(probs < threshold, -math.inf)
    if top_k is not None or top_p is not None:
        vocab = scaled.shape[-1]
        sorted_logits, order = scaled.sort(dim=-1, descending=False)
        if top_k is not None:
            k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab).to(torch.long)
            kth = sorted_logits.gather(1, (vocab - k).unsqueeze(1))
            sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, -math.inf)
        if top_p is not None:
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= (1 - top_p.to(torch.float32)).unsqueeze(1)
            drop[:, -1] = False
            sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        scaled = torch.empty_like(scaled).scatter_(1, order, sorted_logits)
    return scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)


def token_set_probability(
    log_probs: torch.Tensor, tokens: torch.Tensor, gathered: bool = False
) -> torch.Tensor:
    """[rows] total probability of each row's token set; `tokens` is [rows, S] with `PAD_TOKEN` padding.

    `log_probs` is [rows, vocab], or already [rows, S] (the set's log-probabilities) with `gathered=True`. A token
    listed twice in a row counts once.
    """
    tokens = tokens.to(torch.long)
    keep = tokens >= 0
    if tokens.shape[1] > 1:  # duplicates must not count twice: keep the first occurrence
        keep = keep & ~(tokens.unsqueeze(2) == tokens.unsqueeze(1)).tril(diagonal=-1).any(dim=2)
    chosen = log_probs if gathered else log_probs.gather(1, tokens.clamp(min=0))
    return torch.where(keep, chosen.exp(), 0.0).sum(dim=1)


def attempt_probability(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: torch.Tensor | None,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
    distinct: bool = False,
) -> torch.Tensor:
    """p(the sampled token is in the row's set) under the request's sampler: the probability of an end attempt.

    Args:
        logits: [rows, vocab] logits before temperature.
        tokens: [rows, S] int token sets, `PAD_TOKEN`-padded (e.g. end delimiter's first token, EOS, stop ids).
        temperature, top_k, top_p, min_p: As in `truncated_log_probs`.
        distinct: No id repeats within a row (skips the duplicate check).

    Returns:
        [rows] float32 probabilities.
    """
    if top_k is None and top_p is None and min_p is None:
        # No truncation: one logsumexp and a gather of the set, instead of a [rows, vocab] log-probability matrix.
        scaled = logits.to(torch.float32)
        if temperature is not None:
            scaled = scaled / temperature.to(torch.float32).unsqueeze(1)
        lse = torch.logsumexp(scaled, dim=-1, keepdim=True)
        return token_set_probability(
            scaled.gather(1, tokens.to(torch.long).clamp(min=0)) - lse, tokens, gathered=True
        )
    return token_set_probability(truncated_log_probs(logits, temperature, top_k, top_p, min_p), tokens)


def end_token_probability(
    logits: torch.Tensor,
    end_tokens: torch.Tensor,
    temperature: torch.Tensor | None,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """p(one token per row) under the request's sampler (`attempt_probability` with a single-token set)."""
    return attempt_probability(logits, end_tokens.reshape(-1, 1), temperature, top_k, top_p, min_p)
