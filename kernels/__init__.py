"""Triton kernels for test-time scaling (installed as `ttsplugin_kernels`), each with a torch reference.

Dispatch rule used by every public op: CUDA tensors run the Triton kernel; CPU tensors run the torch
reference, or the Triton kernel under the interpreter when `TRITON_INTERPRET=1` was set before import
(how CI exercises the kernels without a GPU). `backend="torch"` / `"triton"` forces one path.

Flow-sampler step (`affine_step`): x_next = a x + b u + c eps in one pass (scalars per step or per row).

Resampling (B prompts x N particles, one launch for all rows):

    >>> import torch, ttsplugin_kernels as tk
    >>> x, rewards = torch.randn(2, 16, 4, 8, 8), torch.randn(2, 16)
    >>> lw = rewards / 0.1                               # log weights = rewards / temperature
    >>> ess = tk.effective_sample_size(lw)               # [2]
    >>> x, ancestors = tk.resample(x, lw, "systematic", rows=ess < 8, out=x)  # in place, degenerate rows only
"""

from .affine_step import affine_step, affine_step_reference
from .resample import (
    MAX_PARTICLES,
    SCHEMES,
    draw_uniforms,
    effective_sample_size,
    gather_particles,
    normalized_weights,
    resample,
    resample_ancestors,
)
from .utils import interpreter_enabled, triton_available

__all__ = [
    "MAX_PARTICLES",
    "SCHEMES",
    "affine_step",
    "affine_step_reference",
    "draw_uniforms",
    "effective_sample_size",
    "gather_particles",
    "interpreter_enabled",
    "normalized_weights",
    "resample",
    "resample_ancestors",
    "triton_available",
]
