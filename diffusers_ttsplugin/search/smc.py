"""Sequential Monte Carlo pieces: potential-difference weights, effective sample size, batched resampling.

Definitions (Kim et al. 2025, as in FK steering / DAS / TDS):

- incremental weight of particle i at step t: exp((r_t^i − r_{t−1}^i) / λ), accumulated in log space since the last
  resampling: log w_t^i = log w_{t−1}^i + (r_t^i − r_{t−1}^i) / λ;
- effective sample size ESS = (Σ w)² / Σ w² = 1 / Σ w̄², with w̄ the normalised weights (N for equal weights, 1 when
  one particle holds all the weight);
- resample a prompt's particles when ESS < threshold · N; afterwards their log weights are reset to 0.

A particle whose reward is −inf (rejected) gets weight zero from then on.

Resampling and the ESS run in `ttsplugin_kernels` (Triton on CUDA, torch reference on CPU).
"""

from __future__ import annotations

import torch

SCHEMES = ("multinomial", "systematic", "stratified", "residual")


def update_log_weights(
    log_weights: torch.Tensor, rewards: torch.Tensor, previous_rewards: torch.Tensor, lam: float
) -> torch.Tensor:
    """log w ← log w + (r_t − r_{t−1}) / λ, with −inf where either reward is −inf (all shapes equal)."""
    finite = torch.isfinite(rewards) & torch.isfinite(previous_rewards)
    delta = torch.where(finite, (rewards - previous_rewards) / lam, torch.full_like(rewards, -torch.inf))
    return log_weights + delta


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """ESS = (Σ w)² / Σ w² per row of `log_weights` `[B, N]` (float32); rows that are all −inf have ESS 0.

    Computed by `ttsplugin_kernels.effective_sample_size` (Triton on CUDA, torch reference on CPU).
    """
    from ttsplugin_kernels import effective_sample_size as kernel_ess

    lw = log_weights.float()
    dead = torch.isneginf(lw).all(dim=-1)
    if bool(dead.any()):
        ess = torch.zeros(lw.shape[:-1], dtype=torch.float32, device=lw.device)
        alive = ~dead
        if bool(alive.any()):
            ess[alive] = kernel_ess(lw[alive])
        return ess
    return kernel_ess(lw)


def resample(
    x: torch.Tensor,
    log_weights: torch.Tensor,
    scheme: str = "multinomial",
    generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample `x` `[B, N, ...]` by `log_weights` `[B, N]` → `(x_resampled, ancestors [B, N])`.

    `rows` (`[B]` bool) limits resampling to those prompts; the others keep their particles (identity ancestors).
    Ancestors come from `ttsplugin_kernels.resample_ancestors` (drawn where the generator lives, so a CPU
    generator seeds a CUDA search too), then one batched gather.
    """
    from ttsplugin_kernels import gather_particles, resample_ancestors

    if scheme not in SCHEMES:
        raise ValueError(f"`resampling` must be one of {SCHEMES}, got {scheme!r}")
    lw = log_weights.float()
    where = generator.device if generator is not None else lw.device
    ancestors = resample_ancestors(
        lw.to(where), scheme, generator, rows=None if rows is None else rows.to(where)
    ).to(x.device)
    return gather_particles(x, ancestors), ancestors
