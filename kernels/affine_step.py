"""The affine flow-sampler step x_next = a·x + b·u + c·ε: public op, dispatch and torch reference.

Every Euler–Maruyama step of a flow SDE (any interpolant, any frame: `FlowSDEScheduler`'s VP step, the particle
search's proposals) and Tweedie's estimate x̂₀ = q·x + p·u are affine in (sample, model output, noise) with a few
scalars per step. This is the one implementation of that expression; the Triton kernel is in
`affine_step_triton.py`.

Dispatch (`backend="auto"`): CUDA tensors run the Triton kernel; CPU tensors run [`affine_step_reference`], or the
kernel under the interpreter when `TRITON_INTERPRET=1` was set before import. The noise is drawn by torch from
`generator` before dispatch (unless given), so both backends see the same noise. On an H200 the fused pass was
~7x the torch expression at 512 particles (BENCHMARKS.md, "Fused SDE step"), i.e. ~8 µs per particle-step: a
rounding error next to a FLUX transformer step, worth it where the step itself is the hot loop.
"""

from __future__ import annotations

import math

import torch

from .utils import resolve_backend

__all__ = ["affine_step", "affine_step_reference", "compute_dtype"]

Coefficient = float | torch.Tensor


def _per_row(coefs: tuple[Coefficient, ...], x: torch.Tensor) -> tuple[Coefficient, ...]:
    """Floats as they are, or, when any coefficient is a tensor of shape [B], all of them as float32 [B, 1, ...]
    views broadcasting over x's trailing dims."""
    if not any(isinstance(c, torch.Tensor) for c in coefs):
        return tuple(float(c) for c in coefs)
    shape = (-1, *([1] * (x.dim() - 1)))
    rows = x.shape[0]
    return tuple(
        (c if isinstance(c, torch.Tensor) else torch.full((rows,), float(c)))
        .to(device=x.device, dtype=compute_dtype(x.dtype))
        .view(shape)
        for c in coefs
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (exact math, e.g. for tests against closed forms); everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_zero(coef: Coefficient) -> bool:
    return coef == 0.0 if not isinstance(coef, torch.Tensor) else not bool((coef != 0).any())


def affine_step_reference(
    x: torch.Tensor,
    velocity: torch.Tensor,
    coef_sample: Coefficient,
    coef_velocity: Coefficient,
    coef_noise: Coefficient = 0.0,
    noise: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`coef_noise·noise + coef_sample·x + coef_velocity·velocity` in float32 (float64 for float64 x), in that order.

    The order and the special cases are fixed so that results are reproducible bit for bit: with noise, the scaled
    noise is formed first and x, then the velocity are added to it (in place when `out` is `noise`: a buffer that
    already holds the scaled noise passes `coef_noise=1.0`); without noise `x + b·u` is one `torch.add` when
    a = 1, else `a·x` then `+ b·u`. Coefficients are floats or tensors of shape [B] (one per leading row of x).
    Returns a tensor of x's dtype (`out` if given).
    """
    dtype = compute_dtype(x.dtype)
    x32, u32 = x.to(dtype), velocity.to(dtype)
    a, b, c = _per_row((coef_sample, coef_velocity, coef_noise), x)
    per_row = isinstance(a, torch.Tensor)
    if noise is not None and not _is_zero(c):
        if out is not None and out is noise and out.dtype == dtype:
            result = out if (not per_row and c == 1.0) else out.mul_(c)
        else:
            result = torch.mul(noise.to(dtype), c)
        if per_row:
            result.addcmul_(x32, a).addcmul_(u32, b)
        else:
            result.add_(x32, alpha=a).add_(u32, alpha=b)
    elif per_row:
        result = torch.mul(x32, a).addcmul_(u32, b)
    elif a == 1.0:
        result = torch.add(x32, u32, alpha=b)
    else:
        result = torch.mul(x32, a).add_(u32, alpha=b)
    if out is None:
        return result.to(x.dtype)
    return out if result is out else out.copy_(result)


def affine_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    coef_sample: Coefficient,
    coef_velocity: Coefficient,
    coef_noise: Coefficient = 0.0,
    noise: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """`out = coef_sample·x + coef_velocity·velocity + coef_noise·noise` in one pass (float32 math).

    float64 tensors always take the torch reference, in float64 (the kernel computes in float32).

    Args:
        x (`torch.Tensor` of shape `[B, ...]`): the current sample, fp32/fp16/bf16.
        velocity (`torch.Tensor`, x's shape): the model output at x.
        coef_sample, coef_velocity, coef_noise (`float`, or `torch.Tensor` of shape `[B]`): the step's scalars, one
            per step or one per leading row of x (particles at different times); finite.
        noise (`torch.Tensor`, x's shape, *optional*): standard normal noise; drawn with `torch.randn` from
            `generator` on x's device when omitted (and `coef_noise` is not zero).
        generator (`torch.Generator`, *optional*): source of the noise when `noise` is omitted.
        out (`torch.Tensor`, x's shape and dtype, *optional*): output buffer (may be `x`, or `noise` itself).
        backend (`str`, defaults to `"auto"`): "auto", "triton" or "torch".
        validate (`bool`, defaults to `True`): check that tensor coefficients are finite (one host sync for
            tensor coefficients; floats are always checked).

    Returns:
        `torch.Tensor` of x's shape and dtype.

    Examples::

        >>> import torch, ttsplugin_kernels as tk
        >>> x, u = torch.randn(4, 16), torch.randn(4, 16)
        >>> y = tk.affine_step(x, u, 1.0, -0.1)
        >>> torch.allclose(y, x - 0.1 * u)
        True
        >>> per_row = tk.affine_step(x, u, torch.ones(4), torch.tensor([-0.1, -0.2, 0.0, 0.5]))
    """
    if not isinstance(x, torch.Tensor) or not isinstance(velocity, torch.Tensor):
        raise TypeError("`x` and `velocity` must be tensors")
    if velocity.shape != x.shape or velocity.device != x.device:
        raise ValueError(
            f"`velocity` must have x's shape {tuple(x.shape)} and device, got {tuple(velocity.shape)}"
        )
    coefs = (coef_sample, coef_velocity, coef_noise)
    _check_coefficients(coefs, x, validate)
    if noise is not None and (noise.shape != x.shape or noise.device != x.device):
        raise ValueError(f"`noise` must have x's shape {tuple(x.shape)} and device, got {tuple(noise.shape)}")
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device):
        raise ValueError("`out` must have x's shape, dtype and device")
    if noise is None and not _is_zero(coef_noise):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=compute_dtype(x.dtype))

    if resolve_backend(backend, x.device) == "torch" or x.dtype == torch.float64:
        return affine_step_reference(x, velocity, *coefs, noise=noise, out=out)

    from .affine_step_triton import affine_step_triton

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
        return out.copy_(result)
    return result


def _check_coefficients(coefs, x: torch.Tensor, validate: bool) -> None:
    for name, coef in zip(("coef_sample", "coef_velocity", "coef_noise"), coefs, strict=True):
        if isinstance(coef, torch.Tensor):
            if coef.dim() != 1 or coef.shape[0] != (x.shape[0] if x.dim() else 1) or coef.is_complex():
                raise ValueError(
                    f"`{name}` must be a float or a real tensor of shape [B={x.shape[0] if x.dim() else 1}] "
                    f"(one per row of x), got shape {tuple(coef.shape)}"
                )
            if coef.device != x.device:
                raise ValueError(f"`{name}` is on {coef.device} but x is on {x.device}")
            if validate and not bool(torch.isfinite(coef).all()):
                raise ValueError(f"step coefficients must be finite, `{name}` is not")
        elif isinstance(coef, bool) or not isinstance(coef, int | float) or not math.isfinite(coef):
            raise ValueError(f"step coefficients must be finite numbers, got {name}={coef!r}")
