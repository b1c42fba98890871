"""An analytic flow: a Gaussian mixture whose interpolated marginals, velocity, score and posterior are closed form.

With data x₀ ~ Σ_k w_k N(μ_k, Σ_k) and an interpolant x_t = α_t x₀ + σ_t x₁ (x₁ ~ N(0, I)), every marginal is again a
mixture, p_t = Σ_k w_k N(α_t μ_k, C_k(t)) with C_k(t) = α_t² Σ_k + σ_t² I, and for each component the pair (x₀, x₁)
is jointly Gaussian with x_t. So, exactly:

    E[x₀ | x_t, k] = μ_k + α_t Σ_k C_k⁻¹ (x_t − α_t μ_k),     E[x₁ | x_t, k] = σ_t C_k⁻¹ (x_t − α_t μ_k),
    P(k | x_t) ∝ w_k N(x_t; α_t μ_k, C_k),                    ∇log p_t = −Σ_k P(k | x_t) C_k⁻¹ (x_t − α_t μ_k),
    u_t(x) = E[α̇_t x₀ + σ̇_t x₁ | x_t = x]   (the velocity a perfectly trained flow model predicts).

Σ_k = U_k diag(λ_k) U_kᵀ is diagonalised once, so C_k(t)⁻¹ = U_k diag(1 / (α_t² λ_k + σ_t²)) U_kᵀ costs O(d²) per
sample and component for any t, including one time per sample. Every closed form takes an `interpolant`
(default linear, the FLUX/SD3 frame; pass `VPInterpolant()` for the VP-interpolated mixture).

[`AnalyticFlow`] wraps a mixture as a "model" with the calling convention of a flow transformer: `velocity(x, t)`
batched over x of shape [B, d] and t a float or [B] tensor of linear times in [0, 1], plus a `decode` (identity)
and an evaluation counter. [`integrate`] drives any diffusers-style flow scheduler over such a velocity function
exactly the way FluxPipeline drives its scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .interpolants import Interpolant, LinearInterpolant, _as_tensor

__all__ = ["AnalyticFlow", "GaussianMixture", "MixturePosterior", "default_mixture", "integrate"]

_LINEAR = LinearInterpolant()


@dataclass(frozen=True)
class MixturePosterior:
    """Everything the closed forms need at (x, t); shapes for x flattened to [N, d] and K components.

    `log_prob`: [N] log p_t(x). `responsibilities`: [N, K] P(k | x_t); `log_responsibilities`: [N, K] log P(k | x_t),
    exact where P underflows. `x0`: [N, d] E[x₀ | x_t]. `x1`: [N, d] E[x₁ | x_t]. `score`: [N, d] ∇log p_t(x).
    `velocity`: [N, d] α̇_t x0 + σ̇_t x1.
    """

    log_prob: torch.Tensor
    responsibilities: torch.Tensor
    log_responsibilities: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor
    score: torch.Tensor
    velocity: torch.Tensor


class GaussianMixture:
    """A Gaussian-mixture data distribution in d dimensions with closed-form flow quantities.

    Args:
        weights (`torch.Tensor` or sequence, shape [K]): mixture weights, positive; normalised to sum 1.
        means (shape [K, d]): component means μ_k.
        covariances: [K, d, d] full (symmetric positive definite), [K, d] diagonal, [K] isotropic variances, or
            one float for every component.
        dtype (`torch.dtype`, defaults to float64): precision of the closed forms; outputs are cast to the dtype
            of the input `x`.

    Example:
        >>> mix = GaussianMixture([0.7, 0.3], [[-2.0, 0.0], [2.0, 0.0]], 0.25)
        >>> x0 = mix.sample(1000, generator=torch.Generator().manual_seed(0))
        >>> u = mix.velocity(torch.randn(8, 2), 0.5)  # linear-interpolant velocity at t = 0.5
    """

    def __init__(self, weights, means, covariances, dtype: torch.dtype = torch.float64):
        weights = torch.as_tensor(weights, dtype=dtype)
        means = torch.as_tensor(means, dtype=dtype)
        if means.ndim != 2:
            raise ValueError(f"`means` must have shape [K, d], got {tuple(means.shape)}.")
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"`weights` must have shape [{k}] (one per mean), got {tuple(weights.shape)}.")
        if not torch.isfinite(weights).all() or (weights <= 0).any():
            raise ValueError("`weights` must be finite and > 0.")
        if not torch.isfinite(means).all():
            raise ValueError("`means` must be finite.")
        cov = torch.as_tensor(covariances, dtype=dtype)
        if cov.ndim == 0:
            cov = cov.expand(k)
        if cov.shape == (k,):
            cov = torch.diag_embed(cov[:, None].expand(k, d))
        elif cov.shape == (k, d):
            cov = torch.diag_embed(cov)
        elif cov.shape != (k, d, d):
            raise ValueError(
                f"`covariances` must be a float, [K], [K, d] or [K, d, d]; got {tuple(cov.shape)}."
            )
        if not torch.isfinite(cov).all() or not torch.allclose(cov, cov.transpose(-1, -2)):
            raise ValueError("`covariances` must be finite and symmetric.")
        evals, evecs = torch.linalg.eigh(cov)
        if (evals <= 0).any():
            raise ValueError("`covariances` must be positive definite.")
        self.weights = weights / weights.sum()
        self.means = means
        self.covariances = cov
        self._evals = evals  # [K, d]
        self._evecs = evecs  # [K, d, d], columns are eigenvectors
        self.dtype = dtype

    # -- shape ------------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> torch.Tensor:
        """Mean of the data distribution, [d]."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Covariance of the data distribution, [d, d]."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covariances)
        second = second + torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return second - torch.outer(m, m)

    def __repr__(self) -> str:
        return f"GaussianMixture(dim={self.dim}, num_components={self.num_components})"

    # -- sampling ---------------------------------------------------------------------------------------------
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        return_components: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        """Draw x₀ ~ data: [num_samples, d] (and the component index of each, if `return_components`)."""
        comps = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        z = torch.randn(num_samples, self.dim, generator=generator, dtype=self.dtype)
        scaled = self._evecs[comps] @ (self._evals[comps].sqrt() * z).unsqueeze(-1)
        x = (self.means[comps] + scaled.squeeze(-1)).to(dtype)
        return (x, comps) if return_components else x

    def sample_marginal(
        self,
        num_samples: int,
        t: float,
        interpolant: Interpolant = _LINEAR,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw x_t = α_t x₀ + σ_t x₁ ~ p_t: [num_samples, d]."""
        sch = interpolant.schedule(t)
        x0 = self.sample(num_samples, generator=generator, dtype=self.dtype)
        x1 = torch.randn(num_samples, self.dim, generator=generator, dtype=self.dtype)
        return (sch.alpha * x0 + sch.sigma * x1).to(dtype)

    # -- closed forms -----------------------------------------------------------------------------------------
    def posterior(self, x: torch.Tensor, t, interpolant: Interpolant = _LINEAR) -> MixturePosterior:
        """All closed forms at once for x of shape [N, d] and t a float or [N] tensor (float64 results)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"`x` must have shape [N, {self.dim}], got {tuple(x.shape)}.")
        x = x.to(self.dtype)
        sch = interpolant.schedule(_as_tensor(t).to(self.dtype))
        alpha = sch.alpha.to(self.dtype).reshape(-1, 1, 1)  # [N or 1, 1, 1]
        sigma = sch.sigma.to(self.dtype).reshape(-1, 1, 1)
        centered = x[:, None, :] - alpha * self.means[None]  # [N, K, d]
        y = torch.einsum("nki,kij->nkj", centered, self._evecs)  # eigenbasis coordinates
        var = alpha * alpha * self._evals[None] + sigma * sigma  # [N, K, d] eigenvalues of C_k(t)
        z = y / var  # C_k⁻¹ (x − α μ_k) in the eigenbasis
        log_norm = -0.5 * ((y * z).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        joint = self.weights.log()[None] + log_norm  # [N, K]
        log_prob = torch.logsumexp(joint, dim=-1)
        log_resp = joint - log_prob[:, None]
        resp = torch.exp(log_resp)
        back = lambda v: torch.einsum("nkj,kij->nki", v, self._evecs)  # noqa: E731  eigenbasis -> original
        r = resp[..., None]
        x0 = (r * (self.means[None] + back(alpha * self._evals[None] * z))).sum(1)
        whitened = (r * back(z)).sum(1)
        x1 = sigma[:, :, 0] * whitened
        d_alpha = sch.d_alpha.to(self.dtype).reshape(-1, 1)
        d_sigma = sch.d_sigma.to(self.dtype).reshape(-1, 1)
        return MixturePosterior(
            log_prob=log_prob,
            responsibilities=resp,
            log_responsibilities=log_resp,
            x0=x0,
            x1=x1,
            score=-whitened,
            velocity=d_alpha * x0 + d_sigma * x1,
        )

    def _apply(
        self,
        x: torch.Tensor,
        t,
        interpolant: Interpolant,
        pick: Callable[[MixturePosterior], torch.Tensor],
        dtype: torch.dtype | None = None,
    ):
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        t_flat = t
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            t_flat = t.expand(lead).reshape(-1)
            if bool((t_flat == t_flat[0]).all()):  # one time for the batch (a pipeline step): cheaper path
                t_flat = t_flat[0]
        out = pick(self.posterior(flat, t_flat, interpolant))
        out_dtype = dtype or (x.dtype if x.is_floating_point() else torch.float32)
        return out.reshape(*lead, *out.shape[1:]).to(out_dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p₀(x), the data log-density: x [..., d] → [...]."""
        return self.marginal_log_prob(x, 0.0)

    def marginal_log_prob(self, x: torch.Tensor, t, interpolant: Interpolant = _LINEAR) -> torch.Tensor:
        """log p_t(x) of the interpolated marginal: x [..., d], t a float or a tensor of shape [...]."""
        return self._apply(x, t, interpolant, lambda p: p.log_prob)

    def score(self, x: torch.Tensor, t, interpolant: Interpolant = _LINEAR) -> torch.Tensor:
        """∇log p_t(x): [..., d]."""
        return self._apply(x, t, interpolant, lambda p: p.score)

    def posterior_mean(self, x: torch.Tensor, t, interpolant: Interpolant = _LINEAR) -> torch.Tensor:
        """E[x₀ | x_t = x] (what Tweedie's formula recovers from the velocity): [..., d]."""
        return self._apply(x, t, interpolant, lambda p: p.x0)

    def posterior_noise(self, x: torch.Tensor, t, interpolant: Interpolant = _LINEAR) -> torch.Tensor:
        """E[x₁ | x_t = x]: [..., d]."""
        return self._apply(x, t, interpolant, lambda p: p.x1)

    def velocity(self, x: torch.Tensor, t, interpolant: Interpolant = _LINEAR) -> torch.Tensor:
        """u_t(x) = α̇_t E[x₀ | x_t] + σ̇_t E[x₁ | x_t], the exact flow-matching velocity: [..., d]."""
        return self._apply(x, t, interpolant, lambda p: p.velocity)

    def component_posterior(self, x: torch.Tensor, t=0.0, interpolant: Interpolant = _LINEAR) -> torch.Tensor:
        """P(k | x_t = x): [..., K] in x's dtype. At t = 0 this classifies data points by component."""
        return self._apply(x, t, interpolant, lambda p: p.responsibilities)

    def component_log_posterior(
        self, x: torch.Tensor, t=0.0, interpolant: Interpolant = _LINEAR
    ) -> torch.Tensor:
        """log P(k | x_t = x): [..., K], in the mixture's dtype (float64), never cast down: a far component's
        probability (1e-49 at the origin for the default mixture's outer mode) underflows float32 to 0."""
        return self._apply(x, t, interpolant, lambda p: p.log_responsibilities, dtype=self.dtype)

    # -- constructors -----------------------------------------------------------------------------------------
    @classmethod
    def random(
        cls,
        dim: int,
        num_components: int,
        seed: int = 0,
        radius: float = 3.0,
        std_range: tuple[float, float] = (0.3, 0.8),
        weights=None,
    ) -> GaussianMixture:
        """A reproducible random mixture: means on a sphere of `radius`, randomly rotated anisotropic covariances
        with standard deviations in `std_range`, uniform weights unless given."""
        if dim < 1 or num_components < 1:
            raise ValueError("`dim` and `num_components` must be >= 1.")
        g = torch.Generator().manual_seed(seed)
        directions = torch.randn(num_components, dim, generator=g, dtype=torch.float64)
        means = radius * directions / directions.norm(dim=1, keepdim=True)
        lo, hi = std_range
        stds = lo + (hi - lo) * torch.rand(num_components, dim, generator=g, dtype=torch.float64)
        rot, _ = torch.linalg.qr(torch.randn(num_components, dim, dim, generator=g, dtype=torch.float64))
        covs = rot @ torch.diag_embed(stds**2) @ rot.transpose(-1, -2)
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        if weights is None:
            weights = torch.full((num_components,), 1.0 / num_components, dtype=torch.float64)
        return cls(weights, means, covs)


def default_mixture(dim: int = 2) -> GaussianMixture:
    """The reference toy problem: 4 components in `dim` dimensions with weights (.45, .3, .2, .05).

    Three common modes sit around the origin at distance 3; the rare one (index 3, weight 5 %) sits further out at
    distance 5, so a reward that prefers it has a known optimum that plain sampling rarely hits.
    """
    if dim < 2:
        raise ValueError("`dim` must be >= 2.")
    g = torch.Generator().manual_seed(1234)
    means = torch.zeros(4, dim, dtype=torch.float64)
    for k in range(3):
        angle = 2 * math.pi * k / 3
        means[k, 0], means[k, 1] = 3.0 * math.cos(angle), 3.0 * math.sin(angle)
    means[3, 0], means[3, 1] = -5.0 * math.cos(math.pi / 3), -5.0 * math.sin(math.pi / 3)
    stds = torch.tensor([[0.6, 0.35], [0.5, 0.3], [0.4, 0.4], [0.3, 0.3]], dtype=torch.float64)
    stds = torch.cat([stds, torch.full((4, dim - 2), 0.5, dtype=torch.float64)], dim=1)
    rot, _ = torch.linalg.qr(torch.randn(4, dim, dim, generator=g, dtype=torch.float64))
    covs = rot @ torch.diag_embed(stds**2) @ rot.transpose(-1, -2)
    return GaussianMixture([0.45, 0.3, 0.2, 0.05], means, 0.5 * (covs + covs.transpose(-1, -2)))


class AnalyticFlow:
    """A mixture seen as a flow model: a velocity function in the linear (FLUX/SD3) frame plus a decoder.

    `velocity(x, t)` takes latents [B, d] and t a float or [B] tensor of linear times in [0, 1] (what FluxPipeline
    passes its transformer as `timestep / 1000`) and counts evaluations in `nfe` (one per sample).
    `decode(x)` is the identity: the data space is the latent space.
    """

    def __init__(self, mixture: GaussianMixture, interpolant: Interpolant = _LINEAR):
        self.mixture = mixture
        self.interpolant = interpolant
        self.nfe = 0

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.mixture.dim,)

    def velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        self.nfe += x.shape[0] if x.ndim > 1 else 1
        return self.mixture.velocity(x, t, self.interpolant)

    __call__ = velocity

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def prior(self, num_samples: int, generator: torch.Generator | None = None, dtype=torch.float32):
        """Initial noise x₁ ~ N(0, I): [num_samples, d]."""
        return torch.randn(num_samples, self.mixture.dim, generator=generator, dtype=dtype)


def integrate(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    latents: torch.Tensor,
    num_inference_steps: int | None = None,
    *,
    sigmas=None,
    mu: float | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Run a flow scheduler over a velocity function the way FluxPipeline's denoising loop does.

    `scheduler.set_timesteps(...)`, `set_begin_index(0)`, then for each `t` in `scheduler.timesteps`:
    `u = velocity(x, t / num_train_timesteps)` (t expanded to [B]) and `x = scheduler.step(u, t, x)[0]`.
    `callback(i, t, x)` runs after each step and may return replacement latents (like `callback_on_step_end`).
    """
    kwargs = {}
    if sigmas is not None:
        kwargs["sigmas"] = sigmas
    if mu is not None:
        kwargs["mu"] = mu
    scheduler.set_timesteps(num_inference_steps, device=latents.device, **kwargs)
    scheduler.set_begin_index(0)
    scale = float(scheduler.config.num_train_timesteps)
    x = latents
    for i, t in enumerate(scheduler.timesteps):
        model_t = t.expand(x.shape[0]).to(x.dtype) / scale
        x = scheduler.step(velocity(x, model_t), t, x, return_dict=False)[0]
        if callback is not None:
            replaced = callback(i, t, x)
            if replaced is not None:
                x = replaced
    return x
