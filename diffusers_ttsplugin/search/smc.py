"""Sequential Monte Carlo, written once for `InferenceScaler(method="smc")` and `SMCCallback`: the weighting
options ([`SMCConfig`]), the weights and per-particle statistics of a run ([`SMCState`]), batched resampling.

A run scores B prompts × N particles at search steps k = 0 … H (Tweedie estimates, rewards r_k), multiplies each
particle's weight by a potential G_k, and resamples a prompt's particles when their effective sample size
ESS = (Σ w)² / Σ w² falls below `ess_threshold · N` (not at the last step, which selects by argmax); resampled
weights restart at 1. Everything is in log space and float64: log w += log G_k.

Potentials (λ = `temperature`; β_k = the tempering scale, 1 without tempering):

- `"difference"` — log G_k = (β_k r_k − β_{k−1} r_{k−1}) / λ, i.e. exp((r_t − r_{t−1}) / λ) untempered: Kim et al.
  2025 (PAPERS.md §4), the default, as FK steering's "diff" (Singhal et al. 2025, arXiv 2501.06848) and DAS's
  tempered twist (Kim et al. 2025, arXiv 2501.05803). The product telescopes to exp((β_H r_H − β_0 r_0) / λ).
- `"max"` — log G_k = β_k · max_{s ≤ k} r_s / λ along the particle's ancestry (FK steering's "max").
- `"sum"` — log G_k = β_k · Σ_{s ≤ k} r_s / λ along the ancestry (FK steering's "add").
  For "max" and "sum" FK steering corrects the last potential so that the product along a path is exp(r_H / λ):
  log G_H = β_H r_H / λ − Σ_{k<H} log G_k. That matters only where the last step resamples
  (`SMCCallback(resample_last_step=True)`); the scaler selects the argmax there.

Initial weights:

- `"uniform"` — w_0 = 1 (the paper's definition: the first potential is G_1);
- `"reward"` — G_0 = exp(β_0 φ_0 / λ) with φ_0 = r_0, so the initial particles are already weighted (and resampled
  when degenerate) by their reward: what the paper's released code does (it starts from exp(r_0 / λ) and multiplies
  exp((r_t − r_{t−1}) / λ), so until the first resampling a weight is exp(r_t / λ)), and what FK steering does
  (its previous reward starts at 0). `potential="difference", initial_weights="reward"` is the released code.

Tempering (the λ schedule λ_k = λ / β_k; DAS, Kim et al. 2025): `"none"` β_k = 1; `"linear"` β_k = min(1, γ k);
`"exponential"` β_k = min(1, (1 + γ)^k − 1) (DAS's default form). Without `tempering_gamma`, γ is chosen so that β
reaches 1 exactly at the last search step (γ = 1/H, resp. 2^{1/H} − 1).

FK steering writes exp(λ_FK · r): its λ_FK is our 1 / λ. A particle whose reward is −inf (rejected) gets weight zero
from then on. Resampling and the ESS run in `ttsplugin_kernels` (Triton on CUDA, torch reference on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

SCHEMES = ("multinomial", "systematic", "stratified", "residual")
POTENTIALS = ("difference", "max", "sum")
INITIAL_WEIGHTS = ("uniform", "reward")
TEMPERING = ("none", "linear", "exponential")


def _number(name: str, value, *, low: float, high: float = math.inf, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        upper = f" and <= {high}" if high < math.inf else ""
        raise ValueError(f"`{name}` must be {bound}{upper}, got {value!r}")
    return float(value)


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")
    return value


@dataclass(frozen=True)
class SMCConfig:
    """SMC's knobs, validated in one place (used by the scaler's plan and by `SMCCallback`).

    Args:
        temperature (`float`, defaults to 0.1): λ > 0 in exp(r / λ) (scale it with the reward's range).
        ess_threshold (`float`, defaults to 0.5): resample a prompt when ESS < threshold · N (in [0, 1]).
        resampling (`str`, defaults to "multinomial"): "multinomial" (the released code's), "systematic",
            "stratified", "residual".
        potential (`str`, defaults to "difference"): "difference", "max" or "sum" (module docstring).
        initial_weights (`str`, defaults to "uniform"): "uniform" (the paper) or "reward" (the released code, FK).
        tempering (`str`, defaults to "none"): "none", "linear" or "exponential" (DAS).
        tempering_gamma (`float`, *optional*): the tempering rate γ > 0 (default: reach β = 1 at the last step).
    """

    temperature: float = 0.1
    ess_threshold: float = 0.5
    resampling: str = "multinomial"
    potential: str = "difference"
    initial_weights: str = "uniform"
    tempering: str = "none"
    tempering_gamma: float | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "temperature", _number("temperature", self.temperature, low=0.0))
        threshold = _number("ess_threshold", self.ess_threshold, low=0.0, high=1.0, low_open=False)
        set_(self, "ess_threshold", threshold)
        _choice("resampling", self.resampling, SCHEMES)
        _choice("potential", self.potential, POTENTIALS)
        _choice("initial_weights", self.initial_weights, INITIAL_WEIGHTS)
        _choice("tempering", self.tempering, TEMPERING)
        if self.tempering_gamma is not None:
            if self.tempering == "none":
                raise ValueError("`tempering_gamma` needs `tempering='linear'` or `'exponential'`")
            set_(self, "tempering_gamma", _number("tempering_gamma", self.tempering_gamma, low=0.0))

    def scale(self, step: int, last_step: int) -> float:
        """β_k ∈ [0, 1], the tempering scale at search step `step` of 0 … `last_step`."""
        if self.tempering == "none":
            return 1.0
        gamma = self.tempering_gamma
        if self.tempering == "linear":
            gamma = gamma if gamma is not None else 1.0 / max(last_step, 1)
            return min(1.0, gamma * step)
        gamma = gamma if gamma is not None else 2.0 ** (1.0 / max(last_step, 1)) - 1.0
        return min(1.0, (1.0 + gamma) ** step - 1.0)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class SMCStep:
    """What one SMC step decided for every prompt: `ess` `[B]` (before resampling) and `resample` `[B]` bool."""

    step: int
    ess: torch.Tensor
    resample: torch.Tensor


class SMCState:
    """Weights of B prompts × N particles through one run, and the per-particle statistics the potentials need.

    Usage (scaler and callback alike): `state = SMCState(config, last_step, rewards_0)`; `decision = state.start()`;
    then for k = 1 … last_step: `decision = state.update(rewards_k, k)`; whenever `decision.resample.any()`:
    `moved, ancestors = state.resample(decision, [tensors...], generator)`.

    Args:
        config ([`SMCConfig`]): the knobs.
        last_step (`int`): H, the index of the last search step (≥ 1).
        rewards (`torch.Tensor` `[B, N]`): rewards at step 0.
        resample_last (`bool`, defaults to False): also resample at step H (else it never does).
        where (`str`): context for error messages.
    """

    def __init__(
        self,
        config: SMCConfig,
        last_step: int,
        rewards: torch.Tensor,
        resample_last: bool = False,
        where: str = "smc",
    ):
        if rewards.dim() != 2:
            raise ValueError(f"rewards must be [B, N], got shape {tuple(rewards.shape)}")
        self.config = config
        self.last_step = int(last_step)
        self.resample_last = bool(resample_last)
        self.where = where
        rewards = rewards.to(torch.float64)
        self.rewards = rewards
        # The potential's running statistic: β·r (difference), the running max, or the running sum.
        beta = config.scale(0, self.last_step)
        self._stat = rewards * beta if config.potential == "difference" else rewards.clone()
        self._beta = beta
        if config.initial_weights == "reward":
            log_g = self._log_potential(rewards, beta * rewards)
        else:
            log_g = torch.where(torch.isfinite(rewards), 0.0, -math.inf).to(torch.float64)
        self.log_weights = log_g.clone()
        self._log_product = log_g.clone()

    @property
    def num_particles(self) -> int:
        return self.rewards.shape[1]

    def _log_potential(self, rewards: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """value / λ where the reward is finite, −inf (weight zero) where it was rejected."""
        ok = torch.isfinite(rewards) & torch.isfinite(value)
        return torch.where(ok, value / self.config.temperature, torch.full_like(value, -math.inf))

    def start(self) -> SMCStep:
        """The decision at step 0 (only `initial_weights="reward"` can make it resample)."""
        return self._decide(0)

    def update(self, rewards: torch.Tensor, step: int) -> SMCStep:
        """Multiply in G_step for the particles' new rewards `[B, N]` and decide which prompts resample."""
        config, rewards = self.config, rewards.to(torch.float64)
        beta = config.scale(step, self.last_step)
        if config.potential == "difference":
            scaled = rewards * beta
            log_g = self._log_potential(rewards, scaled - self._stat)
            self._stat = scaled
        else:
            if config.potential == "max":
                self._stat = torch.maximum(self._stat, rewards)
            else:
                self._stat = self._stat + rewards
            log_g = self._log_potential(rewards, beta * self._stat)
            if step == self.last_step and self.resample_last:  # FK's terminal correction
                log_g = self._log_potential(rewards, beta * rewards) - self._log_product
        # A particle rejected earlier stays at weight zero (its statistics are no longer finite).
        log_g = torch.where(torch.isfinite(self.log_weights), log_g, torch.full_like(log_g, -math.inf))
        self.log_weights = self.log_weights + log_g
        self._log_product = self._log_product + log_g
        self.rewards = rewards
        return self._decide(step)

    def _decide(self, step: int) -> SMCStep:
        ess = effective_sample_size(self.log_weights)
        if bool((ess == 0).any()):
            b = int((ess == 0).nonzero()[0])
            raise ValueError(
                f"{self.where}: every particle of prompt {b} has weight zero at step {step} (all rewards -inf / "
                "rejected): nothing to resample"
            )
        degenerate = ess < self.config.ess_threshold * self.num_particles
        if step >= self.last_step and not self.resample_last:
            degenerate = torch.zeros_like(degenerate)
        return SMCStep(step, ess, degenerate)

    def resample(
        self,
        decision: SMCStep,
        tensors: Sequence[torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Resample the rows `decision.resample` marks: each of `tensors` (`[B·N, ...]` or `[B, N, ...]`) is moved
        by the same ancestors, and so are the state's rewards and statistics; their weights restart at 1.
        Returns the moved tensors (same shapes) and the ancestors `[B, N]` (identity for the other rows)."""
        rows = decision.resample
        ancestors = resample_ancestors(self.log_weights, self.config.resampling, generator, rows)
        moved = [gather_rows(t, ancestors) for t in tensors]
        for name in ("rewards", "_stat", "_log_product"):
            setattr(self, name, getattr(self, name).gather(1, ancestors.to(self.rewards.device)))
        self.log_weights = torch.where(rows[:, None], torch.zeros_like(self.log_weights), self.log_weights)
        return moved, ancestors


def gather_rows(x: torch.Tensor, ancestors: torch.Tensor) -> torch.Tensor:
    """`x` `[B·N, ...]` or `[B, N, ...]` → the same shape with particle k of prompt b taken from
    `ancestors[b, k]` (one `ttsplugin_kernels.gather_particles` launch)."""
    from ttsplugin_kernels import gather_particles

    batch, n = ancestors.shape
    grouped = x if tuple(x.shape[:2]) == (batch, n) else x.reshape(batch, n, *x.shape[1:])
    return gather_particles(grouped, ancestors.to(x.device)).reshape(x.shape)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """ESS = (Σ w)² / Σ w² per row of `log_weights` `[B, N]` (float32 result); rows that are all −inf have ESS 0.

    The log weights are max-shifted in their own precision (float64 in a run) before the kernel
    (`ttsplugin_kernels.effective_sample_size`: Triton on CUDA, torch reference on CPU) sees them.
    """
    from ttsplugin_kernels import effective_sample_size as kernel_ess

    dead = torch.isneginf(log_weights).all(dim=-1)
    shifted = log_weights - torch.where(dead, 0.0, log_weights.amax(dim=-1)).unsqueeze(-1)
    if bool(dead.any()):
        ess = torch.zeros(log_weights.shape[:-1], dtype=torch.float32, device=log_weights.device)
        alive = ~dead
        if bool(alive.any()):
            ess[alive] = kernel_ess(shifted[alive])
        return ess
    return kernel_ess(shifted)


def resample_ancestors(
    log_weights: torch.Tensor,
    scheme: str = "multinomial",
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ancestors `[B, N]` for `log_weights` `[B, N]` (any float dtype), drawn where the generator lives (so a CPU
    generator seeds a CUDA search too), returned on the weights' device. `rows` limits resampling to those
    prompts; the others keep `arange(N)`."""
    from ttsplugin_kernels import resample_ancestors as kernel_ancestors

    _choice("resampling", scheme, SCHEMES)
    where = generator.device if generator is not None else log_weights.device
    ancestors = kernel_ancestors(
        log_weights.to(where), scheme, generator, rows=None if rows is None else rows.to(where)
    )
    return ancestors.to(log_weights.device)


def resample(
    x: torch.Tensor,
    log_weights: torch.Tensor,
    scheme: str = "multinomial",
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample `x` `[B, N, ...]` by `log_weights` `[B, N]` → `(x_resampled, ancestors [B, N])`."""
    ancestors = resample_ancestors(log_weights, scheme, generator, rows)
    return gather_rows(x, ancestors), ancestors


def update_log_weights(
    log_weights: torch.Tensor, rewards: torch.Tensor, previous_rewards: torch.Tensor, lam: float
) -> torch.Tensor:
    """log w ← log w + (r_t − r_{t−1}) / λ, with −inf where either reward is −inf (the untempered "difference"
    potential of [`SMCState`], for callers that keep their own weights)."""
    finite = torch.isfinite(rewards) & torch.isfinite(previous_rewards)
    delta = torch.where(finite, (rewards - previous_rewards) / lam, torch.full_like(rewards, -torch.inf))
    return log_weights + delta
