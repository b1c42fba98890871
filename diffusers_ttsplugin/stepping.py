"""One sampler step for the whole diffusion side: x_next = a·x + b·u + n·z, and Tweedie's x̂₀ = q·x + p·u.

Every Euler–Maruyama step of the marginal-preserving reverse SDE (and the ODE's Euler step, n = 0), in any
interpolant and frame, is affine in the sample x, the model's velocity u and standard normal noise z, with scalars
from [`~diffusers_ttsplugin.interpolants.sde_step_coefficients`] / `frame_step_coefficients`. So is the posterior
mean. [`apply_step`] is the one place that evaluates it, for [`~diffusers_ttsplugin.FlowSDEScheduler`] (one set of
scalars per step), the particle search (one set per row: chains at different grid times) and
`interpolants.reverse_sde_step`. The arithmetic is `ttsplugin_kernels.affine_step`: the fused Triton kernel for
CUDA tensors, its torch reference (a fixed operation order, so runs are reproducible bit for bit) on the CPU.
"""

from __future__ import annotations

import torch

__all__ = ["apply_step", "draw_noise", "step_backend"]

Coefficient = float | torch.Tensor


def step_backend(device: torch.device) -> str:
    """ "triton" for CUDA tensors (when triton is installed), else "torch" (also under `TRITON_INTERPRET=1`: the
    interpreter is for testing the kernels, not for sampling)."""
    if device.type != "cuda":
        return "torch"
    from ttsplugin_kernels import triton_available

    return "triton" if triton_available() else "torch"


def draw_noise(
    like: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    std: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """N(0, std²) noise of `like`'s shape on its device (float32; float64 for float64 `like`), from `generator`.

    `generator` is one generator (or `None`: torch's global RNG), or a list with one per leading row (row i's noise
    then depends only on generator i). A generator on another device than `like` (e.g. a CPU generator for CUDA
    latents) draws there and the noise is copied over. Filling `out` in place allocates nothing when the generator
    lives on the tensor's device.
    """
    if out is None:
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        out = torch.empty(like.shape, dtype=dtype, device=like.device)
    if isinstance(generator, list):
        if len(generator) != out.shape[0]:
            raise ValueError(
                f"{len(generator)} generators for a batch of {out.shape[0]} rows; pass one generator per row."
            )
        for row, gen in zip(out, generator, strict=True):
            draw_noise(row, gen, std, out=row)
        return out
    if generator is None or generator.device.type == out.device.type:
        return out.normal_(0.0, std, generator=generator)
    from diffusers.utils.torch_utils import randn_tensor

    out.copy_(randn_tensor(out.shape, generator=generator, device=out.device, dtype=out.dtype))
    return out.mul_(std)


def _is_zero(coef: Coefficient) -> bool:
    return coef == 0.0 if not isinstance(coef, torch.Tensor) else not bool((coef != 0).any())


def apply_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    sample_coef: Coefficient,
    velocity_coef: Coefficient,
    noise_coef: Coefficient = 0.0,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """`sample_coef·x + velocity_coef·velocity + noise_coef·z` in float32 (float64 for float64 x), returned so.

    Args:
        x (`torch.Tensor` `[B, ...]`): the sample (any float dtype; computed in float32, or float64).
        velocity (`torch.Tensor`, x's shape): the model output at x.
        sample_coef, velocity_coef, noise_coef (`float`, or `torch.Tensor` `[B]` on x's device): the step's
            scalars, or one set per row (rows at different grid indices).
        noise (`torch.Tensor`, *optional*): the standard normal z to use; drawn from `generator` otherwise, and only
            when some `noise_coef` is non-zero (an ODE step consumes no random numbers).
        generator (`torch.Generator`, list of them, or `None`): see [`draw_noise`].
        backend (`str`, *optional*): "torch" or "triton"; default [`step_backend`] of x's device.
    """
    x32 = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    backend = backend or step_backend(x.device)
    if noise is None and not _is_zero(noise_coef):
        if not isinstance(noise_coef, torch.Tensor):
            # Draw N(0, n²) straight into the output buffer: one allocation for the whole step.
            buffer = draw_noise(x32, generator, std=noise_coef)
            return _affine(x32, velocity, sample_coef, velocity_coef, 1.0, buffer, buffer, backend)
        noise = draw_noise(x32, generator)
    return _affine(x32, velocity, sample_coef, velocity_coef, noise_coef, noise, None, backend)


def _affine(x, velocity, a, b, c, noise, out, backend) -> torch.Tensor:
    from ttsplugin_kernels import affine_step

    return affine_step(x, velocity, a, b, c, noise, out=out, backend=backend, validate=False)
