"""Interpolant math for flow models: schedules, velocity → score / Tweedie, interpolant conversion, reverse SDE.

Pure torch (no diffusers), shared by [`~diffusers_ttsplugin.FlowSDEScheduler`], the particle search and the tests.

Convention (Kim et al. 2025, "Inference-time scaling for flow models"): an interpolant writes

    x_t = α_t x₀ + σ_t x₁,    x₀ ~ data,  x₁ ~ N(0, I),  t = 1 noise, t = 0 data,

and sampling runs t: 1 → 0. FLUX and SD3 are trained on the *linear* interpolant α_t = 1 − t, σ_t = t; their
transformer predicts the velocity u_t(x) = E[α̇_t x₀ + σ̇_t x₁ | x_t = x]. From u alone (no retraining):

- score            ∇log p_t(x) = (α_t u − α̇_t x) / (σ_t (α̇_t σ_t − α_t σ̇_t))               [`velocity_to_score`]
- Tweedie          x̂₀ = E[x₀ | x_t] = (σ_t u − σ̇_t x) / (α̇_t σ_t − σ̇_t α_t)                [`velocity_to_x0`]
- reverse SDE      x_{t−Δ} ~ N(x_t − Δ (u − ½ g_t² ∇log p_t), g_t² Δ I) keeps the ODE's marginals for any
  g_t ≥ 0                                                                                 [`reverse_sde_step`]
- conversion       another interpolant (ᾱ_s, σ̄_s), e.g. variance preserving (VP), is the same process seen in a
  rescaled frame: x̄_s = c_s x_{t_s} with t_s the source time of equal signal-to-noise ratio and
  c_s = σ̄_s / σ_{t_s}; its velocity is ū_s(x̄) = (ċ_s / c_s) x̄ + c_s ṫ_s u_{t_s}(x̄ / c_s)    [`frame_map`,
  `convert_velocity`]

Times and coefficients may be Python floats, 0-d tensors or tensors with one entry per sample (shape [B] for
x of shape [B, ...]); every function broadcasts them over the trailing dimensions of x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "DIFFUSION_COEFFICIENTS",
    "INTERPOLANTS",
    "FrameMap",
    "Interpolant",
    "LinearInterpolant",
    "Schedule",
    "StepCoefficients",
    "VPInterpolant",
    "convert_velocity",
    "diffusion_coefficient",
    "frame_map",
    "frame_step_coefficients",
    "get_interpolant",
    "linear_to_vp_time",
    "paper_time_grid",
    "renoise",
    "reverse_sde_step",
    "sde_drift",
    "sde_step_coefficients",
    "velocity_to_noise",
    "velocity_to_score",
    "velocity_to_x0",
    "vp_scale",
    "vp_to_linear_time",
    "x0_coefficients",
]

TimeLike = float | torch.Tensor

INTERPOLANTS = ("linear", "vp")
DIFFUSION_COEFFICIENTS = ("square", "linear", "constant", "sigma")


def _as_tensor(t: TimeLike) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t if t.is_floating_point() else t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


def _expand(coef: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """View a per-sample coefficient of shape S as S + (1,) * k so it broadcasts over x of shape S + rest."""
    if not isinstance(coef, torch.Tensor):
        return coef
    coef = coef.to(device=x.device, dtype=x.dtype if x.is_floating_point() else coef.dtype)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


@dataclass(frozen=True)
class Schedule:
    """α_t, σ_t and their time derivatives at some times t (tensors of the shape of t)."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: torch.Tensor
    d_sigma: torch.Tensor


class Interpolant:
    """An interpolant x_t = α_t x₀ + σ_t x₁ with a monotone signal-to-noise ratio α_t / σ_t.

    Subclasses implement `schedule(t)` and `time_from_snr(snr)`.
    """

    name: str = "interpolant"

    def schedule(self, t: TimeLike) -> Schedule:
        """α_t, σ_t, dα_t/dt, dσ_t/dt at `t` (float64 when `t` is a float)."""
        raise NotImplementedError

    def time_from_snr(self, snr: TimeLike) -> torch.Tensor:
        """The time t with α_t / σ_t = `snr` (snr = +inf gives t = 0)."""
        raise NotImplementedError

    def snr(self, t: TimeLike) -> torch.Tensor:
        """Signal-to-noise ratio α_t / σ_t."""
        s = self.schedule(t)
        return s.alpha / s.sigma

    def _key(self) -> tuple:
        return ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearInterpolant(Interpolant):
    """The rectified-flow interpolant of FLUX and SD3: α_t = 1 − t, σ_t = t."""

    name = "linear"

    def schedule(self, t: TimeLike) -> Schedule:
        t = _as_tensor(t)
        one = torch.ones_like(t)
        return Schedule(alpha=1.0 - t, sigma=t, d_alpha=-one, d_sigma=one)

    def time_from_snr(self, snr: TimeLike) -> torch.Tensor:
        return 1.0 / (1.0 + _as_tensor(snr))


class VPInterpolant(Interpolant):
    """The variance-preserving interpolant with a linear β schedule (score-SDE's VP SDE).

    T(s) = ½ s² (β_max − β_min) + s β_min,  ᾱ_s = exp(−T/2),  σ̄_s = √(1 − exp(−T)),  so ᾱ_s² + σ̄_s² = 1.
    Its time s runs over [0, 1] (s = 1: ᾱ = exp(−(β_max + β_min)/4) ≈ 0.0066 with the defaults); the formulas
    extend to s > 1, but a linear time of exactly 1 (pure noise) maps to s = ∞.

    Args:
        beta_min (`float`, defaults to 0.1): β at s = 0, ≥ 0.
        beta_max (`float`, defaults to 20.0): β at s = 1, > `beta_min`.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        beta_min, beta_max = float(beta_min), float(beta_max)
        if not (math.isfinite(beta_min) and beta_min >= 0.0):
            raise ValueError(f"`beta_min` must be a finite number >= 0, got {beta_min}.")
        if not (math.isfinite(beta_max) and beta_max > beta_min):
            raise ValueError(f"`beta_max` must be finite and > `beta_min` ({beta_min}), got {beta_max}.")
        self.beta_min = beta_min
        self.beta_max = beta_max

    def integrated_beta(self, s: TimeLike) -> torch.Tensor:
        """T(s) = ∫₀ˢ β = ½ s² (β_max − β_min) + s β_min."""
        s = _as_tensor(s)
        return 0.5 * s * s * (self.beta_max - self.beta_min) + s * self.beta_min

    def beta(self, s: TimeLike) -> torch.Tensor:
        """β(s) = dT/ds."""
        return _as_tensor(s) * (self.beta_max - self.beta_min) + self.beta_min

    def schedule(self, s: TimeLike) -> Schedule:
        s = _as_tensor(s)
        big_t = self.integrated_beta(s)
        beta = self.beta(s)
        alpha = torch.exp(-0.5 * big_t)
        sigma = torch.sqrt(-torch.expm1(-big_t))
        return Schedule(
            alpha=alpha,
            sigma=sigma,
            d_alpha=-0.5 * beta * alpha,
            d_sigma=0.5 * beta * alpha * alpha / sigma,
        )

    def time_from_snr(self, snr: TimeLike) -> torch.Tensor:
        snr = _as_tensor(snr)
        # e^{-T} / (1 - e^{-T}) = snr²  =>  T = log(1 + snr⁻²); then solve the quadratic T(s) in a stable form.
        big_t = torch.log1p(snr.reciprocal().square())
        slope = self.beta_max - self.beta_min
        s = 2.0 * big_t / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * slope * big_t))
        return torch.where(torch.isinf(big_t), big_t, s)  # snr = 0 (pure noise) is s = +inf

    def _key(self) -> tuple:
        return (self.beta_min, self.beta_max)

    def __repr__(self) -> str:
        return f"VPInterpolant(beta_min={self.beta_min}, beta_max={self.beta_max})"


def get_interpolant(name: str, beta_min: float = 0.1, beta_max: float = 20.0) -> Interpolant:
    """`"linear"` → [`LinearInterpolant`], `"vp"` → [`VPInterpolant`] (with `beta_min`, `beta_max`)."""
    if name == "linear":
        return LinearInterpolant()
    if name == "vp":
        return VPInterpolant(beta_min, beta_max)
    raise ValueError(f"`interpolant` must be one of {INTERPOLANTS}, got {name!r}.")


# ---------------------------------------------------------------------------------------------------------------
# Velocity -> score / posterior mean / noise
# ---------------------------------------------------------------------------------------------------------------


def velocity_to_score(velocity: torch.Tensor, x: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """∇log p_t(x) = (α u − α̇ x) / (σ (α̇ σ − α σ̇)). Undefined at σ = 0 (t = 0)."""
    a, s, da, ds = (
        _expand(c, x) for c in (schedule.alpha, schedule.sigma, schedule.d_alpha, schedule.d_sigma)
    )
    return (a * velocity - da * x) / (s * (da * s - a * ds))


def velocity_to_x0(velocity: torch.Tensor, x: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Tweedie's posterior mean x̂₀ = E[x₀ | x_t = x] = (σ u − σ̇ x) / (α̇ σ − σ̇ α)."""
    a, s, da, ds = (
        _expand(c, x) for c in (schedule.alpha, schedule.sigma, schedule.d_alpha, schedule.d_sigma)
    )
    return (s * velocity - ds * x) / (da * s - ds * a)


def velocity_to_noise(velocity: torch.Tensor, x: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Posterior mean of the noise x̂₁ = E[x₁ | x_t = x] = (α̇ x − α u) / (α̇ σ − α σ̇)."""
    a, s, da, ds = (
        _expand(c, x) for c in (schedule.alpha, schedule.sigma, schedule.d_alpha, schedule.d_sigma)
    )
    return (da * x - a * velocity) / (da * s - a * ds)


def x0_coefficients(schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, q) with x̂₀ = p · u + q · x: the Tweedie estimate as two scalars per time (for fused kernels)."""
    den = schedule.d_alpha * schedule.sigma - schedule.d_sigma * schedule.alpha
    return schedule.sigma / den, -schedule.d_sigma / den


# ---------------------------------------------------------------------------------------------------------------
# Interpolant conversion (e.g. linear -> VP)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameMap:
    """How a target interpolant at its time s sees the source process: x̄_s = scale · x_src(time).

    Fields (tensors of the shape of s): `time` = t_s (source time with the same SNR), `scale` = c_s,
    `d_time` = dt_s/ds, `d_scale` = dc_s/ds.
    """

    time: torch.Tensor
    scale: torch.Tensor
    d_time: torch.Tensor
    d_scale: torch.Tensor


def frame_map(s: TimeLike, source: Interpolant, target: Interpolant) -> FrameMap:
    """Time and scale maps from `source` (the model's interpolant) to `target` at target times `s`.

    t_s solves α_t / σ_t = ᾱ_s / σ̄_s; c_s = σ̄_s / σ_{t_s} = ᾱ_s / α_{t_s}; ṫ_s = (dSNR̄/ds) / (dSNR/dt);
    ċ_s follows from c = (ᾱ + σ̄) / (α + σ), which stays finite at both ends.
    """
    tgt = target.schedule(s)
    t = source.time_from_snr(tgt.alpha / tgt.sigma)
    src = source.schedule(t)
    d_time = (
        (tgt.d_alpha * tgt.sigma - tgt.alpha * tgt.d_sigma)
        / (src.d_alpha * src.sigma - src.alpha * src.d_sigma)
        * (src.sigma / tgt.sigma) ** 2
    )
    num, den = tgt.alpha + tgt.sigma, src.alpha + src.sigma
    scale = num / den
    d_scale = ((tgt.d_alpha + tgt.d_sigma) * den - num * (src.d_alpha + src.d_sigma) * d_time) / den**2
    return FrameMap(time=t, scale=scale, d_time=d_time, d_scale=d_scale)


def convert_velocity(source_velocity: torch.Tensor, x_target: torch.Tensor, fmap: FrameMap) -> torch.Tensor:
    """The target interpolant's velocity ū_s(x̄) = (ċ/c) x̄ + c ṫ u_{t_s}(x̄ / c).

    Args:
        source_velocity: the model's velocity evaluated at (x̄ / c, t_s), i.e. at `fmap.time` on
            `x_target / fmap.scale`.
        x_target: x̄, the state in the target frame.
        fmap: `frame_map(s, source, target)`.
    """
    c, dc, dt = (_expand(v, x_target) for v in (fmap.scale, fmap.d_scale, fmap.d_time))
    return (dc / c) * x_target + (c * dt) * source_velocity


def vp_to_linear_time(s: TimeLike, vp: VPInterpolant | None = None) -> torch.Tensor:
    """Linear time of equal SNR: t_s = σ̄_s / (ᾱ_s + σ̄_s)."""
    sch = (vp or VPInterpolant()).schedule(s)
    return sch.sigma / (sch.alpha + sch.sigma)


def linear_to_vp_time(t: TimeLike, vp: VPInterpolant | None = None) -> torch.Tensor:
    """VP time of equal SNR (inverse of [`vp_to_linear_time`]); t = 1 maps to +inf."""
    t = _as_tensor(t)
    return (vp or VPInterpolant()).time_from_snr((1.0 - t) / t)


def vp_scale(s: TimeLike, vp: VPInterpolant | None = None) -> torch.Tensor:
    """c_s = ᾱ_s + σ̄_s: x̄_s(VP) = c_s · x_{t_s}(linear)."""
    sch = (vp or VPInterpolant()).schedule(s)
    return sch.alpha + sch.sigma


# ---------------------------------------------------------------------------------------------------------------
# Reverse SDE
# ---------------------------------------------------------------------------------------------------------------


def diffusion_coefficient(
    t: TimeLike, kind: str = "square", norm: float = 3.0, interpolant: Interpolant | None = None
) -> torch.Tensor:
    """g_t of the reverse SDE, with t the sampling interpolant's own time.

    `"square"`: norm · t² (the paper's choice, norm 3); `"linear"`: norm · t; `"constant"`: norm;
    `"sigma"`: norm · σ_t of `interpolant` (the released code's default shape).
    """
    t = _as_tensor(t)
    if kind == "square":
        return norm * t * t
    if kind == "linear":
        return norm * t
    if kind == "constant":
        return torch.full_like(t, float(norm))
    if kind == "sigma":
        if interpolant is None:
            raise ValueError('`diffusion_coefficient="sigma"` needs the `interpolant` whose σ_t it uses.')
        return norm * interpolant.schedule(t).sigma
    raise ValueError(f"`diffusion_coefficient` must be one of {DIFFUSION_COEFFICIENTS}, got {kind!r}.")


def sde_drift(velocity: torch.Tensor, score: torch.Tensor, g: TimeLike) -> torch.Tensor:
    """Reverse-SDE drift f_t = u_t − ½ g_t² ∇log p_t (integrated backwards: x_{t−Δ} = x_t − f_t Δ + g_t √Δ z)."""
    g = _expand(_as_tensor(g), velocity)
    return velocity - 0.5 * g * g * score


@dataclass(frozen=True)
class StepCoefficients:
    """One Euler–Maruyama step as scalars: x_next = sample · x + velocity · u + noise · z, z ~ N(0, I).

    `x0_sample`, `x0_velocity`: Tweedie x̂₀ = x0_sample · x + x0_velocity · u at the step's start.
    Values are floats (one step) or tensors (several steps / per-sample times).
    """

    sample: torch.Tensor | float
    velocity: torch.Tensor | float
    noise: torch.Tensor | float
    x0_sample: torch.Tensor | float
    x0_velocity: torch.Tensor | float


def sde_step_coefficients(
    t: TimeLike, t_next: TimeLike, g: TimeLike, interpolant: Interpolant
) -> StepCoefficients:
    """Euler–Maruyama step of the marginal-preserving reverse SDE from t to t_next < t, in one frame.

    With Δ = t − t_next and D = σ (α̇ σ − α σ̇): x_next = (1 − ½ g² Δ α̇ / D) x + (−Δ + ½ g² Δ α / D) u + g √Δ z.
    g = 0 gives the Euler step of the probability-flow ODE (the score terms are skipped, so t = 0 is fine there).
    """
    t, t_next, g = _as_tensor(t), _as_tensor(t_next), _as_tensor(g)
    sch = interpolant.schedule(t)
    delta = t - t_next
    half_g2_delta = 0.5 * g * g * delta
    den = sch.sigma * (sch.d_alpha * sch.sigma - sch.alpha * sch.d_sigma)
    stochastic = half_g2_delta != 0
    safe_den = torch.where(stochastic, den, torch.ones_like(den))
    score_x = torch.where(stochastic, half_g2_delta * sch.d_alpha / safe_den, torch.zeros_like(den))
    score_u = torch.where(stochastic, half_g2_delta * sch.alpha / safe_den, torch.zeros_like(den))
    p, q = x0_coefficients(sch)
    return StepCoefficients(
        sample=1.0 - score_x,
        velocity=-delta + score_u,
        noise=g * torch.sqrt(delta.clamp_min(0.0)),
        x0_sample=q,
        x0_velocity=p,
    )


def frame_step_coefficients(
    s: TimeLike,
    s_next: TimeLike,
    g: TimeLike,
    model: Interpolant,
    sampler: Interpolant,
) -> StepCoefficients:
    """A reverse-SDE step taken in the `sampler` interpolant's frame, written in the `model`'s frame.

    The state x and the velocity u stay in the model's (e.g. linear) frame at model times t_s, t_{s_next}; the step
    maps x̄ = c_s x, ū = ċ_s x + c_s ṫ_s u, steps x̄ with [`sde_step_coefficients`] from s to s_next, and maps
    back x_next = x̄_next / c_{s_next}. Everything is linear, so the composite step is again
    x_next = a x + b u + n z with
        a = (A c_s + B ċ_s) / c_{s_next},  b = B c_s ṫ_s / c_{s_next},  n = N / c_{s_next}.
    The Tweedie coefficients are the model frame's own at t_s (E[x₀ | x] does not depend on the frame).
    """
    if model == sampler:
        return sde_step_coefficients(s, s_next, g, sampler)
    here, there = frame_map(s, model, sampler), frame_map(s_next, model, sampler)
    inner = sde_step_coefficients(s, s_next, g, sampler)
    p, q = x0_coefficients(model.schedule(here.time))
    a = (inner.sample * here.scale + inner.velocity * here.d_scale) / there.scale
    b = inner.velocity * here.scale * here.d_time / there.scale
    n = inner.noise / there.scale
    # A zero-length step is the identity (also where the frame map is singular, e.g. s = 0).
    still = (_as_tensor(s) - _as_tensor(s_next)) == 0
    return StepCoefficients(
        sample=torch.where(still, torch.ones_like(a), a),
        velocity=torch.where(still, torch.zeros_like(b), b),
        noise=torch.where(still, torch.zeros_like(n), n),
        x0_sample=q,
        x0_velocity=p,
    )


def reverse_sde_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    t: TimeLike,
    t_next: TimeLike,
    interpolant: Interpolant,
    g: TimeLike,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_{t_next} ~ N(x_t − Δ (u − ½ g² ∇log p_t), g² Δ I), Δ = t − t_next (one Euler–Maruyama step).

    `t`, `t_next`, `g` may be per-sample tensors of shape [B]. `noise` defaults to a fresh N(0, I) draw. The step
    is [`~diffusers_ttsplugin.stepping.apply_step`] with [`sde_step_coefficients`] (float32 math, x's dtype out).
    """
    from .stepping import apply_step

    c = sde_step_coefficients(t, t_next, g, interpolant)
    coefs = []
    for value in (c.sample, c.velocity, c.noise):
        value = _as_tensor(value)
        coefs.append(float(value) if value.ndim == 0 else value.to(x.device).expand(x.shape[0]))
    return apply_step(x, velocity, *coefs, noise=noise, generator=generator).to(x.dtype)


def renoise(
    x: torch.Tensor,
    t: TimeLike,
    t_next: TimeLike,
    interpolant: Interpolant,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Forward-noise x_t to a *later* (noisier) time t_next ≥ t along the interpolant's marginals.

    x_{t_next} = (α' / α) x_t + √(σ'² − (α' σ / α)²) z keeps x_t ~ p_t ↦ x_{t_next} ~ p_{t_next} (used by
    search-over-paths). Requires α_t > 0.
    """
    here, there = interpolant.schedule(t), interpolant.schedule(t_next)
    ratio = there.alpha / here.alpha
    std = torch.sqrt((there.sigma**2 - (ratio * here.sigma) ** 2).clamp_min(0.0))
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return _expand(ratio, x) * x + _expand(std, x) * noise


def paper_time_grid(num_steps: int) -> torch.Tensor:
    """The released code's grid r_i = √(1 − (i/N)²), i = 0..N−1, then 0 (float64, length N + 1).

    Most steps sit at high noise: N = 10 gives 1, .995, .980, .954, .917, .866, .800, .714, .600, .436, 0.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
    u = torch.arange(num_steps, dtype=torch.float64) / num_steps
    return torch.cat([torch.sqrt(1.0 - u * u), torch.zeros(1, dtype=torch.float64)])
