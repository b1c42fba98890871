"""Rollover Budget Forcing's state machine (Algorithm 2 of Kim et al. 2025), pure Python over C chains of one prompt.

The tensor side (drawing proposals, scoring them, moving the chains) is `InferenceScaler._search_rbf`; this module
decides, proposal by proposal, whether a chain accepts, continues, exhausts its quota or is done, and how much
quota rolls over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RBFDecision:
    """What Rollover Budget Forcing did with one proposal of one chain.

    Attributes:
        chain: The chain that drew the proposal.
        step: The search step the proposal was drawn for (1-based; the chain's step before this decision).
        reward: The proposal's reward.
        action: "accept" — it beat r*: the chain moves on from it and rolls its unused quota over;
            "exhausted" — the quota ran out with no improvement: the chain moves on with the best proposal of the
            step (`chosen`), r* unchanged; "continue" — draw another proposal at this step;
            "final" — a proposal of the last step (which spends everything the chain has left);
            "done" — the last proposal of the chain's last step.
        quota: The step's quota (NFE this chain may spend at this step, rollover included).
        used: Proposals drawn at this step so far, this one included.
        rollover: NFE carried into the next step (accept only; 0 otherwise).
        best: r* after this proposal.
        chosen: Index (0-based, in draw order within the step) of the proposal the chain moves on from, or
            `None` if it stays.
    """

    chain: int
    step: int
    reward: float
    action: str
    quota: int
    used: int
    rollover: int
    best: float
    chosen: int | None

    def to_dict(self) -> dict:
        return asdict(self)


class RolloverBudgetForcing:
    """Algorithm 2 of Kim et al. (2025) as a state machine over C chains of one prompt.

    Each chain c gets `chain_budgets[c]` NFE for proposals (its share of what is left after the initial noises)
    and a per-step quota Q_c = ⌊chain_budget / num_steps⌋. At each of its `num_steps` search steps a chain draws one
    SDE proposal at a time (1 NFE: the velocity at the proposal, which gives its Tweedie estimate and reward):

    - the first proposal whose reward beats the chain's running best r* is **accepted**: r* takes its reward, the
      chain moves to the next step from it, and the unused quota **rolls over**: Q_next = Q + (quota − used);
    - if the quota runs out with no improvement, the chain moves on with the best proposal of this step and r*
      stays unchanged (Q_next = Q);
    - the last step spends everything the chain has left (`chain_budget − spent`); the chain's result is the best
      proposal of its last step.

    Rewards must be floats; −inf never beats anything (NaN must be mapped to −inf before). Chains are independent,
    so the total spent is exactly `sum(chain_budgets)`.

    Args:
        chain_budgets (`Sequence[int]`): NFE per chain for proposals; each must be ≥ `num_steps`.
        num_steps (`int`): Search steps per chain (≥ 1).
        initial_best (`Sequence[float]`): r* of each chain before its first step (the initial particle's reward).
        rollover (`bool`, defaults to True): Carry the unused quota of an accepting step to the next step. With
            False it is kept for the last step instead (an ablation; nothing is lost either way).
    """

    def __init__(
        self,
        chain_budgets: Sequence[int],
        num_steps: int,
        initial_best: Sequence[float],
        rollover: bool = True,
    ):
        if num_steps < 1:
            raise ValueError(f"`num_steps` must be >= 1, got {num_steps}")
        if len(initial_best) != len(chain_budgets):
            raise ValueError("`initial_best` needs one value per chain")
        for c, budget in enumerate(chain_budgets):
            if budget < num_steps:
                raise ValueError(
                    f"chain {c} has {budget} NFE for {num_steps} steps; it needs at least one per step"
                )
        self.num_steps = int(num_steps)
        self.rollover = bool(rollover)
        self.chain_budgets = [int(b) for b in chain_budgets]
        self.base_quota = [b // self.num_steps for b in self.chain_budgets]
        self.step = [1] * len(chain_budgets)
        self.spent = [0] * len(chain_budgets)
        self.used = [0] * len(chain_budgets)
        self.best = [float(r) for r in initial_best]
        self.step_best = [-math.inf] * len(chain_budgets)
        self.step_best_index: list[int | None] = [None] * len(chain_budgets)
        self.quota = [self._quota_for(c, carry=0) for c in range(len(chain_budgets))]

    @property
    def num_chains(self) -> int:
        return len(self.chain_budgets)

    def _quota_for(self, chain: int, carry: int) -> int:
        if self.step[chain] == self.num_steps:
            return self.chain_budgets[chain] - self.spent[chain]
        return self.base_quota[chain] + carry

    def active(self, chain: int) -> bool:
        """Whether the chain still draws proposals."""
        return self.spent[chain] < self.chain_budgets[chain]

    def active_chains(self) -> list[int]:
        return [c for c in range(self.num_chains) if self.active(c)]

    @property
    def done(self) -> bool:
        return not self.active_chains()

    def observe(self, chain: int, reward: float) -> RBFDecision:
        """Account one proposal of `chain` with `reward` and say what the chain does next."""
        if not self.active(chain):
            raise RuntimeError(f"chain {chain} has spent its budget")
        reward = float(reward)
        if math.isnan(reward):
            raise ValueError("RBF rewards must not be NaN (map them to -inf first)")
        step, quota = self.step[chain], self.quota[chain]
        self.spent[chain] += 1
        self.used[chain] += 1
        used = self.used[chain]
        index = used - 1
        if reward > self.step_best[chain] or self.step_best_index[chain] is None:
            self.step_best[chain] = reward
            self.step_best_index[chain] = index
        if step == self.num_steps:
            if reward > self.best[chain]:
                self.best[chain] = reward
            action = "final" if self.active(chain) else "done"
            return RBFDecision(chain, step, reward, action, quota, used, 0, self.best[chain], None)
        if reward > self.best[chain]:
            self.best[chain] = reward
            carry = quota - used if self.rollover else 0
            self._advance(chain, carry)
            return RBFDecision(chain, step, reward, "accept", quota, used, carry, reward, index)
        if used >= quota:
            chosen = self.step_best_index[chain]
            self._advance(chain, 0)
            return RBFDecision(chain, step, reward, "exhausted", quota, used, 0, self.best[chain], chosen)
        return RBFDecision(chain, step, reward, "continue", quota, used, 0, self.best[chain], None)

    def _advance(self, chain: int, carry: int) -> None:
        self.step[chain] += 1
        self.used[chain] = 0
        self.step_best[chain] = -math.inf
        self.step_best_index[chain] = None
        self.quota[chain] = self._quota_for(chain, carry)

    def final_choice(self, chain: int) -> int | None:
        """Index (draw order) of the best proposal of the chain's last step, once it is done."""
        return self.step_best_index[chain] if self.step[chain] == self.num_steps else None
