"""The fused SDE-step Triton kernel and its torch expression; the public ops are in `fused_step.py`.

Measured on an H200 (BENCHMARKS.md, "Fused SDE step"): 7.1x the torch expression at 512 particles of 262,144
bf16 values, so it is exported (`ttsplugin_kernels.affine_step` / `sde_step`).

The step (PAPERS.md section 4, linear interpolant alpha_t = 1 - t, sigma_t = t, sampling t: 1 -> 0):
    score   = (alpha_t u - alpha'_t x) / (sigma_t (alpha'_t sigma_t - alpha_t sigma'_t)) = -(x + (1 - t) u) / t
    drift   = u - g**2 / 2 * score
    x_next  = x - drift * dt + g * sqrt(dt) * eps,        eps ~ N(0, I)
which is affine in (x, u, eps): x_next = a x + b u + c eps with scalars a, b, c fixed per step. The kernel reads
x and u once (and eps, unless it draws Philox noise itself) and writes x_next once; the torch expression
makes ~8 full passes over float32 temporaries.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .fused_step import sde_step_coefficients

_BLOCK = 2048


def sde_step_reference(
    x: torch.Tensor, velocity: torch.Tensor, t: float, dt: float, g: float, noise: torch.Tensor
) -> torch.Tensor:
    """The torch expression a scheduler writes (float32 math, cast back to x's dtype), the baseline."""
    sde_step_coefficients(t, dt, g)  # validates
    x32, u32 = x.float(), velocity.float()
    score = -(x32 + (1.0 - t) * u32) / t
    drift = u32 - 0.5 * g**2 * score
    return (x32 - drift * dt + g * math.sqrt(dt) * noise.float()).to(x.dtype)


@triton.jit
def _sde_step_kernel(
    x_ptr,
    velocity_ptr,
    noise_ptr,  # read only if HAS_NOISE
    out_ptr,
    n,
    coef_x,
    coef_velocity,
    coef_noise,
    seed,
    HAS_NOISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(velocity_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_NOISE:
        eps = tl.load(noise_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        eps = tl.randn(seed, offsets)
    out = coef_x * x + coef_velocity * u + coef_noise * eps
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def sde_step_triton(
    x: torch.Tensor,
    velocity: torch.Tensor,
    t: float,
    dt: float,
    g: float,
    noise: torch.Tensor | None = None,
    seed: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused step of the linear interpolant over contiguous tensors of any shape: `noise` given (the
    reference's result up to float rounding) or drawn in the kernel from `seed` (Philox; no noise tensor)."""
    return affine_step_triton(x, velocity, *sde_step_coefficients(t, dt, g), noise=noise, seed=seed, out=out)


def affine_step_triton(
    x: torch.Tensor,
    velocity: torch.Tensor,
    coef_sample: float,
    coef_velocity: float,
    coef_noise: float,
    noise: torch.Tensor | None = None,
    seed: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out = coef_sample * x + coef_velocity * velocity + coef_noise * eps in one pass (float32 math), for
    any scheduler whose step is affine in (sample, model output, noise), e.g. a VP-frame SDE step."""
    if x.shape != velocity.shape or not x.is_contiguous() or not velocity.is_contiguous():
        raise ValueError("`x` and `velocity` must be contiguous tensors of one shape")
    if (noise is None) == (seed is None):
        raise ValueError("pass exactly one of `noise` and `seed`")
    if noise is not None and (noise.shape != x.shape or not noise.is_contiguous()):
        raise ValueError("`noise` must be a contiguous tensor of x's shape")
    a, b, c = float(coef_sample), float(coef_velocity), float(coef_noise)
    out = torch.empty_like(x) if out is None else out
    n = x.numel()
    if n:
        _sde_step_kernel[(triton.cdiv(n, _BLOCK),)](
            x,
            velocity,
            noise if noise is not None else x,
            out,
            n,
            a,
            b,
            c,
            0 if seed is None else seed,
            HAS_NOISE=noise is not None,
            BLOCK=_BLOCK,
            num_warps=4,
        )
    return out
