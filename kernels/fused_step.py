"""Fused SDE step for flow samplers: public API and dispatch (kernel in `sde_step.py`, torch expression beside it).

On an H200 the fused pass is ~7x the torch expression a scheduler writes (BENCHMARKS.md, "Fused SDE step"), so it
is offered as an op. In absolute terms it saves ~8 us per particle-step, a rounding error next to a FLUX
transformer step: use it where the step itself is the hot loop (toy flows, large particle counts).

Dispatch (`backend="auto"`): CUDA tensors run the Triton kernel; CPU tensors run the torch expression, or the kernel
under the interpreter when `TRITON_INTERPRET=1` was set before import. The noise is drawn by torch from
`generator` before dispatch (unless given), so both backends see the same noise.
"""

from __future__ import annotations

import math

import torch

from .utils import resolve_backend

__all__ = ["affine_step", "sde_step", "sde_step_coefficients"]


def affine_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    coef_sample: float,
    coef_velocity: float,
    coef_noise: float,
    noise: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """`out = coef_sample * x + coef_velocity * velocity + coef_noise * noise` in one pass (float32 math).

    Every Euler–Maruyama step of a flow SDE (any interpolant, any frame, e.g. `FlowSDEScheduler`'s VP step) is
    affine in (sample, model output, noise) with three scalars per step.

    Args:
        x (`torch.Tensor` of any shape): the current sample, fp32/fp16/bf16.
        velocity (`torch.Tensor`, x's shape): the model output at x.
        coef_sample, coef_velocity, coef_noise (`float`): the step's scalars (finite).
        noise (`torch.Tensor`, x's shape, *optional*): standard normal noise; drawn with `torch.randn` from
            `generator` on x's device when omitted (and `coef_noise != 0`).
        generator (`torch.Generator`, *optional*): source of the noise when `noise` is omitted.
        out (`torch.Tensor`, x's shape and dtype, *optional*): output buffer (may be `x` itself).
        backend (`str`, defaults to `"auto"`): "auto", "triton" or "torch".

    Returns:
        `torch.Tensor` of x's shape and dtype.

    Examples::

        >>> import torch, ttsplugin_kernels as tk
        >>> x, u = torch.randn(4, 16), torch.randn(4, 16)
        >>> y = tk.affine_step(x, u, 1.0, -0.1, 0.0)
        >>> torch.allclose(y, x - 0.1 * u)
        True
    """
    if not isinstance(x, torch.Tensor) or not isinstance(velocity, torch.Tensor):
        raise TypeError("`x` and `velocity` must be tensors")
    if velocity.shape != x.shape or velocity.device != x.device:
        raise ValueError(
            f"`velocity` must have x's shape {tuple(x.shape)} and device, got {tuple(velocity.shape)}"
        )
    coefs = (float(coef_sample), float(coef_velocity), float(coef_noise))
    if not all(math.isfinite(c) for c in coefs):
        raise ValueError(f"step coefficients must be finite, got {coefs}")
    if noise is not None and (noise.shape != x.shape or noise.device != x.device):
        raise ValueError(f"`noise` must have x's shape {tuple(x.shape)} and device, got {tuple(noise.shape)}")
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device):
        raise ValueError("`out` must have x's shape, dtype and device")
    if noise is None and coefs[2] != 0.0:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)

    if resolve_backend(backend, x.device) == "torch":
        result = coefs[0] * x.float() + coefs[1] * velocity.float()
        if noise is not None:
            result = result + coefs[2] * noise.float()
        result = result.to(x.dtype)
        return result if out is None else out.copy_(result)

    from .sde_step_triton import affine_step_triton

    target = out if out is not None and out.is_contiguous() else None
    result = affine_step_triton(
        x.contiguous(),
        velocity.contiguous(),
        *coefs,
        noise=None if noise is None else noise.contiguous(),
        seed=0 if noise is None else None,  # coef_noise == 0 here: the in-kernel draw is multiplied by 0
        out=target,
    )
    if out is not None and target is None:
        out.copy_(result)
        return out
    return result


def sde_step_coefficients(t: float, dt: float, g: float) -> tuple[float, float, float]:
    """(a, b, c) with x_next = a x + b u + c eps for the linear interpolant at time t, step dt, diffusion g."""
    if not (0 < t <= 1) or not (0 < dt <= t) or not (g >= 0) or not math.isfinite(g):
        raise ValueError(f"need 0 < t <= 1, 0 < dt <= t and finite g >= 0, got t={t}, dt={dt}, g={g}")
    half_g2_over_t = 0.5 * g * g / t
    return 1.0 - dt * half_g2_over_t, -dt * (1.0 + half_g2_over_t * (1.0 - t)), g * math.sqrt(dt)


def sde_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    t: float,
    dt: float,
    diffusion: float,
    noise: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One reverse-SDE step t -> t - dt of a linear-interpolant flow (x_t = (1 - t) x0 + t x1), fused.

    x_next = x - (u - g²/2 · score) dt + g √dt ε with score = -(x + (1 - t) u) / t (PAPERS.md §4); g = 0 is the
    probability-flow ODE's Euler step. Same arguments as [`affine_step`], with `t` in (0, 1], `0 < dt <= t` and the
    diffusion coefficient `diffusion` = g_t ≥ 0 (e.g. 3 t²).
    """
    return affine_step(
        x,
        velocity,
        *sde_step_coefficients(t, dt, diffusion),
        noise,
        generator=generator,
        out=out,
        backend=backend,
    )
