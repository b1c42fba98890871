"""NFE accounting (pure Python, no tensors).

One NFE is one velocity evaluation of one particle (Kim et al. 2025). With classifier-free guidance the guided
velocity needs a conditional and an unconditional transformer pass; it still counts as **one** NFE (one evaluation
of the guided velocity field), and the adapters report the transformer passes separately. What each method spends is
planned in [`~diffusers_ttsplugin.search.planning`]; Rollover Budget Forcing's accept/rollover arithmetic is in
[`~diffusers_ttsplugin.search.rbf`].
"""

from __future__ import annotations

from collections.abc import Sequence


class BudgetExceededError(RuntimeError):
    """Raised when code would spend more NFE than the budget allows (a bug: the planner must prevent it)."""


class NFELedger:
    """Per-prompt NFE counter with a hard cap: `charge` refuses to go over budget.

    Args:
        num_prompts (`int`): Prompts searched together.
        budget (`int`): NFE each prompt may use.
    """

    def __init__(self, num_prompts: int, budget: int):
        self.budget = int(budget)
        self.used = [0] * int(num_prompts)

    def remaining(self, prompt: int) -> int:
        return self.budget - self.used[prompt]

    def charge(self, counts: Sequence[int] | dict[int, int]) -> None:
        """Add `counts[prompt]` NFE to each prompt (a list over prompts or a {prompt: count} dict)."""
        items = counts.items() if isinstance(counts, dict) else enumerate(counts)
        items = [(int(p), int(c)) for p, c in items if c]
        for prompt, count in items:
            if self.used[prompt] + count > self.budget:
                raise BudgetExceededError(
                    f"prompt {prompt} would use {self.used[prompt] + count} NFE, budget {self.budget}"
                )
        for prompt, count in items:
            self.used[prompt] += count


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` integers that differ by at most one (the first ones get the extra)."""
    base, extra = divmod(int(total), int(parts))
    return [base + (1 if i < extra else 0) for i in range(parts)]
