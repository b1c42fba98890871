"""How each method spends an NFE budget: `plan_search` validates the knobs and calls the method's planner.

Cost per prompt (S = num_steps grid intervals, H = S − 1 search steps):

- bon, smc: N · S. Default N = ⌊budget / S⌋ (paper: 50 at 500 NFE, 10 steps).
- svdd, code: C · K₀ + C · K · H. Defaults C = 2, K = ⌊budget / (S · C)⌋ (paper: 25) and K₀ = K plus what that
  leaves unused (K₀ = 25 at 500 NFE).
- rbf: C · K₀ for the initial noises, the rest split evenly over the chains and spent exactly. Defaults C = 2,
  K₀ = ⌊budget / (S · C)⌋ (paper: 25); per-step quota Q = ⌊chain budget / H⌋.
- sop: C · i₀ (ODE seed to grid index i₀ = f + 1) + C · K · (f + 2) · (H − i₀). Defaults C = 2,
  f ≤ max(1, ⌊H / 3⌋) and K = the largest that fits, choosing the f that spends most of the budget (the paper's
  K = 5 belongs to its continuous-time schedule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from .budget import split_evenly
from .smc import SMCConfig

METHODS = ("bon", "sop", "smc", "code", "svdd", "rbf")

SMC_KNOBS = tuple(f.name for f in fields(SMCConfig))

#: The knobs each method takes (anything else set for a method is an error, not silently ignored).
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "bon": ("num_particles",),
    "smc": ("num_particles", *SMC_KNOBS),
    "svdd": ("num_chains", "num_proposals", "init_particles"),
    "code": ("num_chains", "num_proposals", "init_particles", "block_size"),
    "sop": ("num_chains", "num_proposals", "forward_steps"),
    "rbf": ("num_chains", "init_particles", "rollover"),
}

#: The paper's values (500 NFE, 10 steps); counts scale with the budget, see `plan_search`.
PAPER_DEFAULTS = {
    "bon": {"num_particles": 50},
    "smc": {"num_particles": 50, **SMCConfig().to_dict()},
    "svdd": {"num_chains": 2, "num_proposals": 25, "init_particles": 25},
    "code": {"num_chains": 2, "num_proposals": 25, "init_particles": 25, "block_size": 2},
    "sop": {"num_chains": 2, "num_proposals": 5},
    "rbf": {"num_chains": 2, "init_particles": 25, "rollover": True},
}

_COUNTS = ("num_particles", "num_chains", "num_proposals", "init_particles", "block_size", "forward_steps")


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
        temperature, ess_threshold, resampling, potential, initial_weights, tempering, tempering_gamma: SMC's
            knobs (the fields of [`~diffusers_ttsplugin.search.smc.SMCConfig`]; `plan.smc` is that config).
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
    potential: str | None = None
    initial_weights: str | None = None
    tempering: str | None = None
    tempering_gamma: float | None = None
    rollover: bool | None = None

    @property
    def smc(self) -> SMCConfig | None:
        """SMC's knobs as an [`~diffusers_ttsplugin.search.smc.SMCConfig`] (`None` for the other methods)."""
        if self.method != "smc":
            return None
        return SMCConfig(**{k: getattr(self, k) for k in SMC_KNOBS if getattr(self, k) is not None})

    def to_dict(self) -> dict:
        """The plan as JSON-able settings (unset fields left out)."""
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
    """Resolve a method's knobs for a budget (the defaults scale down with it) and check the NFE fit (costs: the
    module docstring).

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
    for name in _COUNTS:
        if name in given:
            _positive_int(name, given[name])
    return PLANNERS[method](method, budget, steps, given)


def _plan_particles(method: str, budget: int, steps: int, given: dict) -> SearchPlan:
    """bon and smc: N independent trajectories of S steps."""
    particles = given.get("num_particles", budget // steps)
    if particles < 1 or particles * steps > budget:
        need = max(particles, 1)
        raise _too_small(method, budget, need * steps, f"{need} particle(s) × {steps} steps")
    smc = SMCConfig(**{k: given[k] for k in SMC_KNOBS if k in given}).to_dict() if method == "smc" else {}
    return SearchPlan(method, steps, steps - 1, particles * steps, num_particles=particles, **smc)


def _default_chains(budget: int, steps: int, given: dict, method: str) -> int:
    return given.get("num_chains", min(PAPER_DEFAULTS[method]["num_chains"], max(1, budget // steps)))


def _plan_selection(method: str, budget: int, steps: int, given: dict) -> SearchPlan:
    """svdd and code: C chains, K candidates per chain at every block of L steps, best-of-K₀ initial noise."""
    horizon, chains = steps - 1, _default_chains(budget, steps, given, method)
    block = 1 if method == "svdd" else given.get("block_size", PAPER_DEFAULTS["code"]["block_size"])
    proposals = given.get("num_proposals", max(1, budget // (steps * chains)))
    # Default K₀ = K, plus whatever K · C · H leaves unused (so the plan spends as much as it can).
    init = given.get("init_particles", max(1, (budget - chains * proposals * horizon) // chains))
    need = chains * init + chains * proposals * horizon
    if need > budget:
        what = f"{chains} chain(s) × ({init} initial + {proposals} proposals × {horizon} steps)"
        raise _too_small(method, budget, need, what)
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


def _plan_rbf(method: str, budget: int, steps: int, given: dict) -> SearchPlan:
    """rbf: best-of-K₀ initial noise per chain, then the rest of the budget split evenly over the chains."""
    horizon, chains = steps - 1, _default_chains(budget, steps, given, method)
    init = given.get("init_particles", max(1, budget // (steps * chains)))
    rollover = given.get("rollover", PAPER_DEFAULTS["rbf"]["rollover"])
    if not isinstance(rollover, bool):
        raise ValueError(f"`rollover` must be True or False, got {rollover!r}")
    proposals_budget = budget - chains * init
    if proposals_budget < chains * horizon:
        what = f"{chains} chain(s) × ({init} initial + at least 1 proposal × {horizon} steps)"
        raise _too_small(method, budget, chains * init + chains * horizon, what)
    return SearchPlan(
        method,
        steps,
        horizon,
        budget,
        num_chains=chains,
        init_particles=init,
        chain_budgets=tuple(split_evenly(proposals_budget, chains)),
        rollover=rollover,
    )


def _sop_cost(chains: int, forward: int, proposals: int, horizon: int) -> tuple[int, int, int]:
    """(NFE, seed steps i₀, iterations) of search over paths."""
    seed = min(forward + 1, horizon - 1)
    return chains * seed + chains * proposals * (forward + 2) * (horizon - seed), seed, horizon - seed


def _plan_sop(method: str, budget: int, steps: int, given: dict) -> SearchPlan:
    """sop: with defaults, shrink the forward distance, then the chains, until one candidate per chain fits."""
    horizon = steps - 1
    if horizon < 2:
        raise ValueError(
            f"method 'sop' needs `num_steps` >= 3 (it forward-noises and re-solves), got {steps}"
        )
    if "forward_steps" in given and given["forward_steps"] > horizon - 1:
        raise ValueError(
            f"`forward_steps` must be <= num_steps - 2 = {horizon - 1}, got {given['forward_steps']}"
        )
    chains = _default_chains(budget, steps, given, method)
    default_forward = min(max(1, horizon // 3), horizon - 1)
    forwards = [given["forward_steps"]] if "forward_steps" in given else list(range(default_forward, 0, -1))
    chain_options = [chains] if "num_chains" in given else list(range(chains, 0, -1))
    for c in chain_options:
        fits = []
        for f in forwards:
            fixed, seed, iterations = _sop_cost(c, f, 0, horizon)
            k = given.get("num_proposals", (budget - fixed) // (c * (f + 2) * iterations))
            need = _sop_cost(c, f, max(k, 1), horizon)[0]
            if k >= 1 and need <= budget:
                fits.append((need, f, k, seed))
        if fits:  # the configuration that uses most of the budget (ties: the larger forward distance)
            need, f, k, seed = max(fits)
            return SearchPlan(
                method, steps, horizon, need, num_chains=c, num_proposals=k, forward_steps=f, seed_steps=seed
            )
    c, f = chain_options[-1], forwards[-1]
    k = given.get("num_proposals", 1)
    need, seed, iterations = _sop_cost(c, f, k, horizon)
    what = f"{c} chain(s): a {seed}-step seed + {iterations} iteration(s) × {k} candidate(s) × {f + 2} NFE"
    raise _too_small(method, budget, need, what)


PLANNERS: dict[str, Callable[[str, int, int, dict], SearchPlan]] = {
    "bon": _plan_particles,
    "smc": _plan_particles,
    "svdd": _plan_selection,
    "code": _plan_selection,
    "rbf": _plan_rbf,
    "sop": _plan_sop,
}
