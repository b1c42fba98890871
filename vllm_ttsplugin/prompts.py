"""Prompt scanning for thinking control: does the prompt end inside an open think block, and its tail.

Runs on the prompt's device without synchronising it: the V2 runner hands prompts over as GPU tensors, and the
comparisons below use Python-int operands (no host-to-device copy of the delimiter) and return 0-d tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vllm_ttsplugin.sampling import PAD_TOKEN


def last_match_end(tokens: torch.Tensor, pattern: Sequence[int]) -> torch.Tensor:
    """Index of the last token of the last occurrence of `pattern` in 1-D `tokens`, or -1 (a 0-d tensor)."""
    n, m = tokens.shape[0], len(pattern)
    if m == 0 or n < m:
        return torch.full((), -1, dtype=torch.long, device=tokens.device)
    windows = tokens.unfold(0, m, 1)
    hits = windows[:, 0] == int(pattern[0])
    for j in range(1, m):
        hits = hits & (windows[:, j] == int(pattern[j]))
    index = torch.arange(m - 1, n, device=tokens.device)
    return torch.where(hits, index, -1).max()


def scan_prompt(
    tokens: torch.Tensor, start_ids: Sequence[int], end_ids: Sequence[int], tail_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether a prompt ends inside an open think block, and the prompt's tail for start detection.

    Args:
        tokens: [prompt_len] token ids.
        start_ids, end_ids: The request's delimiters (empty `start_ids`: thinking is open from the start).
        tail_width: Width of the start-detection window (the returned tail is right-aligned in it).

    Returns:
        `(opens, tail)`: a 0-d bool tensor, and [tail_width] int64 holding the last `len(start_ids) - 1` prompt
        tokens right-aligned (so a start delimiter split across prompt and completion is still detected),
        `PAD_TOKEN` elsewhere.
    """
    device = tokens.device
    tokens = tokens.to(torch.long)
    tail = torch.full((tail_width,), PAD_TOKEN, dtype=torch.long, device=device)
    if not start_ids:
        return torch.full((), True, dtype=torch.bool, device=device), tail
    opens = last_match_end(tokens, start_ids) > last_match_end(tokens, end_ids)
    keep = min(len(start_ids) - 1, tokens.shape[0], tail_width)
    if keep > 0:
        tail[tail_width - keep :] = tokens[tokens.shape[0] - keep :]
    return opens, tail
