"""The affine-step Triton kernel and its launcher; the public op and the torch reference are in `affine_step.py`.

x_next = a·x + b·u + c·ε with a, b, c one scalar each per call, or one per leading row of x (`ROW_COEFS`: particles
at different grid times, e.g. Rollover Budget Forcing's chains). The kernel reads x and u once (and ε, unless it
draws Philox noise itself) and writes x_next once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 2048


@triton.jit(do_not_specialize=["n", "row_size", "num_rows"])
def _affine_step_kernel(
    x_ptr,
    velocity_ptr,
    noise_ptr,  # read only if HAS_NOISE
    out_ptr,
    coef_ptr,  # [3, B] float32 (sample, velocity, noise), read only if ROW_COEFS
    n,
    row_size,  # elements per leading row of x
    num_rows,  # B: stride between the coefficient table's rows
    coef_x,
    coef_velocity,
    coef_noise,
    seed,
    HAS_NOISE: tl.constexpr,
    ROW_COEFS: tl.constexpr,
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
    if ROW_COEFS:
        row = offsets // row_size
        a = tl.load(coef_ptr + row, mask=mask, other=0.0)
        b = tl.load(coef_ptr + num_rows + row, mask=mask, other=0.0)
        c = tl.load(coef_ptr + 2 * num_rows + row, mask=mask, other=0.0)
        out = c * eps + a * x + b * u
    else:
        out = coef_noise * eps + coef_x * x + coef_velocity * u
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def affine_step_triton(
    x: torch.Tensor,
    velocity: torch.Tensor,
    coef_sample: float | torch.Tensor,
    coef_velocity: float | torch.Tensor,
    coef_noise: float | torch.Tensor,
    noise: torch.Tensor | None = None,
    seed: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out = coef_sample·x + coef_velocity·velocity + coef_noise·ε over contiguous tensors of any shape, with ε
    given (`noise`) or drawn in the kernel from `seed` (Philox). Coefficients: floats, or tensors of shape [B] for
    x of shape [B, ...]. Inputs are validated by `affine_step`, except for what the launch itself needs."""
    if x.shape != velocity.shape or not x.is_contiguous() or not velocity.is_contiguous():
        raise ValueError("`x` and `velocity` must be contiguous tensors of one shape")
    if (noise is None) == (seed is None):
        raise ValueError("pass exactly one of `noise` and `seed`")
    if noise is not None and (noise.shape != x.shape or not noise.is_contiguous()):
        raise ValueError("`noise` must be a contiguous tensor of x's shape")
    out = torch.empty_like(x) if out is None else out
    n = x.numel()
    if n == 0:
        return out
    coefs = (coef_sample, coef_velocity, coef_noise)
    row_coefs = any(isinstance(c, torch.Tensor) for c in coefs)
    num_rows = x.shape[0] if x.dim() else 1
    table = x  # placeholder pointer when the coefficients are scalars
    scalars = (0.0, 0.0, 0.0)
    if row_coefs:
        table = torch.stack(
            [
                c.to(device=x.device, dtype=torch.float32).reshape(num_rows)
                if isinstance(c, torch.Tensor)
                else torch.full((num_rows,), float(c), device=x.device, dtype=torch.float32)
                for c in coefs
            ]
        ).contiguous()
    else:
        scalars = tuple(float(c) for c in coefs)
    _affine_step_kernel[(triton.cdiv(n, _BLOCK),)](
        x,
        velocity,
        noise if noise is not None else x,
        out,
        table,
        n,
        max(n // num_rows, 1),
        num_rows,
        *scalars,
        0 if seed is None else seed,
        HAS_NOISE=noise is not None,
        ROW_COEFS=row_coefs,
        BLOCK=_BLOCK,
        num_warps=4,
    )
    return out
