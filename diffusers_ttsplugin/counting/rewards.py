"""Rewards of the counting task, under the reward contract of `diffusers_ttsplugin.rewards`.

Both read the target counts from each prompt's text and score images `[N, 3, H, W]` in [0, 1]; in a search these
are the decoded Tweedie estimates x̂₀ of the particles at every step (the search decodes, as for any image reward).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from ..rewards import Reward
from .counter import MIN_AREA, as_image_batch, colour_masks, count_components
from .metrics import count_errors
from .prompts import KIND_NAMES, parse_prompt


@lru_cache(maxsize=4096)
def _targets(prompt: str) -> tuple[tuple[str, int], ...]:
    return tuple(parse_prompt(prompt).items())


def prompt_targets(prompts: list[str]) -> list[dict[str, int]]:
    """Target counts of every prompt (`ValueError` naming a prompt the task cannot read)."""
    return [dict(_targets(p)) for p in prompts]


class CountingReward(Reward):
    """The paper's counting reward: −Σ_k (count_k − target_k)² over the kinds the prompt names.

    Counts come from [`count_objects`] (connected components per colour, exact on rendered images); the targets
    from the prompt text ("three red circles and one blue square"). 0 is the best score; float64.

    Args:
        min_area (`int`, defaults to 4): Smallest component (pixels) counted as an object.
        batch_size (`int`, *optional*): Largest chunk scored at once.
    """

    def __init__(self, min_area: int = MIN_AREA, batch_size: int | None = None):
        if isinstance(min_area, str):
            min_area = int(min_area)
        if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
            raise ValueError(f"`min_area` must be an integer >= 1, got {min_area!r}")
        self.min_area = min_area
        self.batch_size = batch_size

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        targets = prompt_targets(prompts)
        batch = as_image_batch(images)
        found = count_components(colour_masks(batch), self.min_area).tolist()
        found = [dict(zip(KIND_NAMES, row, strict=True)) for row in found]
        return -torch.tensor(count_errors(found, targets), dtype=torch.float64)


class CountMatchReward(Reward):
    """A trained prompt–image matching probability (a stand-in for VQAScore on the counting task).

    P(the image shows the prompt) = Π_k P(count_k = target_k | image) from the small count network of
    [`~diffusers_ttsplugin.counting.matching`], trained here on the task's renderer. Returns the probability in
    [0, 1] (float64), or its log with `log=True`.

    Args:
        weights (`str`, *optional*): Weights file (default: the one shipped with the counting model).
        log (`bool`, defaults to False): Return log P instead of P.
        batch_size (`int`, *optional*): Largest chunk scored at once.
    """

    def __init__(self, weights: str | Path | None = None, log: bool = False, batch_size: int | None = None):
        from .files import MATCHING_FILE
        from .matching import load_matching

        self.net = load_matching(MATCHING_FILE if weights is None else weights)
        self.log = bool(log)
        self.batch_size = batch_size

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from .matching import NUM_CLASSES

        targets = prompt_targets(prompts)
        batch = as_image_batch(images)
        log_probs = torch.log_softmax(self.net(batch).double(), dim=-1)  # [N, kinds, classes]
        index = torch.zeros(len(prompts), len(KIND_NAMES), dtype=torch.long)
        named = torch.zeros(len(prompts), len(KIND_NAMES), dtype=torch.float64)
        for i, target in enumerate(targets):
            for kind, n in target.items():
                index[i, KIND_NAMES.index(kind)] = min(n, NUM_CLASSES - 1)
                named[i, KIND_NAMES.index(kind)] = 1.0
        total = (log_probs.gather(-1, index[..., None])[..., 0] * named).sum(-1)
        return total if self.log else total.exp()
