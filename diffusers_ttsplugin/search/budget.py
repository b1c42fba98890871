"""NFE accounting and Rollover Budget Forcing's accept/rollover arithmetic (pure Python, no tensors).

One NFE is one velocity evaluation of one particle (Kim et al. 2025). With classifier-free guidance the guided
velocity needs a conditional and an unconditional transformer pass; it still counts as **one** NFE (one evaluation
of the guided velocity field), and the adapters report the transformer passes separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


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


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` integers that differ by at most one (the first ones get the extra)."""
    base, extra = divmod(int(total), int(parts))
    return [base + (1 if i < extra else 0) for i in range(parts)]


METHODS = ("bon", "sop", "smc", "code", "svdd", "rbf")

#: The knobs each method takes (anything else set for a method is an error, not silently ignored).
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "bon": ("num_particles",),
    "smc": ("num_particles", "temperature", "ess_threshold", "resampling"),
    "svdd": ("num_chains", "num_proposals", "init_particles"),
    "code": ("num_chains", "num_proposals", "init_particles", "block_size"),
    "sop": ("num_chains", "num_proposals", "forward_steps"),
    "rbf": ("num_chains", "init_particles", "rollover"),
}

#: The paper's values (500 NFE, 10 steps); counts scale with the budget, see `plan_search`.
PAPER_DEFAULTS = {
    "bon": {"num_particles": 50},
    "smc": {"num_particles": 50, "temperature": 0.1, "ess_threshold": 0.5, "resampling": "multinomial"},
    "svdd": {"num_chains": 2, "num_proposals": 25, "init_particles": 25},
    "code": {"num_chains": 2, "num_proposals": 25, "init_particles": 25, "block_size": 2},
    "sop": {"num_chains": 2, "num_proposals": 5},
    "rbf": {"num_chains": 2, "init_particles": 25, "rollover": True},
}


@dataclass(frozen=True)
class SearchPlan:
    """The resolved knobs of one search and the NFE it will use per prompt.

    Attributes:
        method: The method.
        num_steps: Grid intervals S (velocities are evaluated at the S non-zero grid times t_0 = 1 … t_{S−1}).
        search_steps: H = S − 1 steps at which proposals are drawn and scored.
        num_particles: BoN/SMC particles N.
        num_chains: Chains C (SVDD, CoDe, SoP, RBF).
        num_proposals: K candidates per chain per step (SVDD, CoDe) or per iteration (SoP).
        init_particles: Initial noises per chain, the best of which starts the chain (SVDD, CoDe, RBF).
        block_size: CoDe's L steps per block (1 for SVDD).
        forward_steps: SoP's forward-noising distance f in grid steps (it then solves f + 1 steps back).
        seed_steps: SoP's ODE steps before the first search iteration (i₀).
        chain_budgets: RBF's NFE per chain for proposals.
        nfe: NFE the plan uses per prompt (≤ the budget; RBF uses it exactly).
        temperature, ess_threshold, resampling: SMC's λ, ESS threshold and scheme.
        rollover: RBF's rollover switch.
    """

    method: str
    num_steps: int
    search_steps: int
    nfe: int
    num_particles: int | None = None
    num_chains: int | None = None
    num_proposals: int | None = None
    init_particles: int | None = None
    block_size: int | None = None
    forward_steps: int | None = None
    seed_steps: int | None = None
    chain_budgets: tuple[int, ...] | None = None
    temperature: float | None = None
    ess_threshold: float | None = None
    resampling: str | None = None
    rollover: bool | None = None

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if "chain_budgets" in out:
            out["chain_budgets"] = list(out["chain_budgets"])
        return out


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
    return value


def _too_small(method: str, budget: int, need: int, what: str) -> ValueError:
    return ValueError(
        f"`nfe_budget`={budget} is smaller than method {method!r} needs: {need} NFE for {what}. Raise the budget or "
        "lower `num_steps` / the particle counts."
    )


def plan_search(method: str, nfe_budget: int, num_steps: int, **knobs) -> SearchPlan:
    """Resolve a method's knobs for a budget (the defaults scale down with it) and check the NFE fit.

    Cost per prompt (S = num_steps, H = S − 1):

    - bon, smc: N · S.  Default N = ⌊budget / S⌋ (paper: 50 at 500 NFE, 10 steps).
    - svdd, code: C · K₀ + C · K · H.  Defaults C = 2, K = ⌊budget / (S · C)⌋ (paper: 25) and K₀ = K plus what
      that leaves unused (K₀ = 25 at 500 NFE).
    - rbf: C · K₀ for the initial noises, the rest split evenly over the chains and spent exactly.
      Defaults C = 2, K₀ = ⌊budget / (S · C)⌋ (paper: 25); per-step quota Q = ⌊chain budget / H⌋.
    - sop: C · i₀ (ODE seed to grid index i₀ = f + 1) + C · K · (f + 2) · (H − i₀). Defaults C = 2,
      f ≤ max(1, ⌊H / 3⌋) and K = the largest that fits, choosing the f that spends most of the budget (the
      paper's K = 5 belongs to its continuous-time schedule).

    Args:
        method: One of `METHODS`.
        nfe_budget: NFE per prompt.
        num_steps: Grid intervals (≥ 2).
        **knobs: Method knobs (see `METHOD_KNOBS`); `None` means "default".

    Raises:
        ValueError: Unknown method, a knob the method does not take, bad values, or a budget too small.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    budget = _positive_int("nfe_budget", nfe_budget)
    steps = _positive_int("num_steps", num_steps)
    if steps < 2:
        raise ValueError(
            f"`num_steps` must be >= 2 (one initial evaluation and at least one search step), got {steps}"
        )
    given = {k: v for k, v in knobs.items() if v is not None}
    unknown = sorted(set(given) - set(METHOD_KNOBS[method]))
    if unknown:
        raise ValueError(
            f"{', '.join(f'`{k}`' for k in unknown)} does not apply to method {method!r}; it takes "
            f"{', '.join(f'`{k}`' for k in METHOD_KNOBS[method])}"
        )
    for name in (
        "num_particles",
        "num_chains",
        "num_proposals",
        "init_particles",
        "block_size",
        "forward_steps",
    ):
        if name in given:
            _positive_int(name, given[name])
    horizon = steps - 1
    defaults = PAPER_DEFAULTS[method]

    if method in ("bon", "smc"):
        particles = given.get("num_particles", budget // steps)
        if particles < 1 or particles * steps > budget:
            raise _too_small(
                method, budget, max(particles, 1) * steps, f"{max(particles, 1)} particle(s) × {steps} steps"
            )
        extra = {}
        if method == "smc":
            temperature = given.get("temperature", defaults["temperature"])
            if (
                isinstance(temperature, bool)
                or not isinstance(temperature, int | float)
                or not (math.isfinite(temperature) and temperature > 0)
            ):
                raise ValueError(f"`temperature` (λ) must be a finite number > 0, got {temperature!r}")
            threshold = given.get("ess_threshold", defaults["ess_threshold"])
            if (
                isinstance(threshold, bool)
                or not isinstance(threshold, int | float)
                or not 0 <= threshold <= 1
            ):
                raise ValueError(f"`ess_threshold` must be in [0, 1], got {threshold!r}")
            resampling = given.get("resampling", defaults["resampling"])
            from .smc import SCHEMES

            if resampling not in SCHEMES:
                raise ValueError(f"`resampling` must be one of {SCHEMES}, got {resampling!r}")
            extra = {
                "temperature": float(temperature),
                "ess_threshold": float(threshold),
                "resampling": resampling,
            }
        return SearchPlan(method, steps, horizon, particles * steps, num_particles=particles, **extra)

    default_chains = min(defaults["num_chains"], max(1, budget // steps))
    chains = given.get("num_chains", default_chains)

    if method in ("svdd", "code"):
        block = 1 if method == "svdd" else given.get("block_size", defaults["block_size"])
        proposals = given.get("num_proposals", max(1, budget // (steps * chains)))
        # Default K₀ = K, plus whatever K · C · H leaves unused (so the plan spends as much as it can).
        init = given.get("init_particles", max(1, (budget - chains * proposals * horizon) // chains))
        need = chains * init + chains * proposals * horizon
        if need > budget:
            raise _too_small(
                method,
                budget,
                need,
                f"{chains} chain(s) × ({init} initial + {proposals} proposals × {horizon} steps)",
            )
        return SearchPlan(
            method,
            steps,
            horizon,
            need,
            num_chains=chains,
            num_proposals=proposals,
            init_particles=init,
            block_size=block,
        )

    if method == "rbf":
        init = given.get("init_particles", max(1, budget // (steps * chains)))
        rollover = given.get("rollover", defaults["rollover"])
        if not isinstance(rollover, bool):
            raise ValueError(f"`rollover` must be True or False, got {rollover!r}")
        proposals_budget = budget - chains * init
        need = chains * init + chains * horizon
        if proposals_budget < chains * horizon:
            raise _too_small(
                method,
                budget,
                need,
                f"{chains} chain(s) × ({init} initial + at least 1 proposal × {horizon} steps)",
            )
        chain_budgets = tuple(split_evenly(proposals_budget, chains))
        return SearchPlan(
            method,
            steps,
            horizon,
            budget,
            num_chains=chains,
            init_particles=init,
            chain_budgets=chain_budgets,
            rollover=rollover,
        )

    # sop: with defaults, shrink the forward distance, then the chains, until one candidate per chain fits.
    if horizon < 2:
        raise ValueError(
            f"method 'sop' needs `num_steps` >= 3 (it forward-noises and re-solves), got {steps}"
        )
    if "forward_steps" in given and given["forward_steps"] > horizon - 1:
        raise ValueError(
            f"`forward_steps` must be <= num_steps - 2 = {horizon - 1}, got {given['forward_steps']}"
        )
    default_forward = min(max(1, horizon // 3), horizon - 1)
    forwards = [given["forward_steps"]] if "forward_steps" in given else list(range(default_forward, 0, -1))
    chain_options = [chains] if "num_chains" in given else list(range(chains, 0, -1))

    def cost(c: int, f: int, k: int) -> tuple[int, int, int]:
        seed = min(f + 1, horizon - 1)
        return c * seed + c * k * (f + 2) * (horizon - seed), seed, horizon - seed

    for c in chain_options:
        fits = []
        for f in forwards:
            fixed, seed, iterations = cost(c, f, 0)
            k = given.get("num_proposals", (budget - fixed) // (c * (f + 2) * iterations))
            need = cost(c, f, max(k, 1))[0]
            if k >= 1 and need <= budget:
                fits.append((need, f, k, seed))
        if fits:  # the configuration that uses most of the budget (ties: the larger forward distance)
            need, f, k, seed = max(fits)
            return SearchPlan(
                method, steps, horizon, need, num_chains=c, num_proposals=k, forward_steps=f, seed_steps=seed
            )
    c, f = chain_options[-1], forwards[-1]
    k = given.get("num_proposals", 1)
    need, seed, iterations = cost(c, f, k)
    raise _too_small(
        method,
        budget,
        need,
        f"{c} chain(s): a {seed}-step seed + {iterations} iteration(s) × {k} candidate(s) × {f + 2} NFE",
    )
