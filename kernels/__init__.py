"""Triton kernels for test-time scaling (installed as `ttsplugin_kernels`), each with a torch reference.

Dispatch rule used by every public op: CUDA tensors run the Triton kernel; CPU tensors run the torch
reference, or the Triton kernel under the interpreter when `TRITON_INTERPRET=1` was set before import
(how CI exercises the kernels without a GPU).
"""

from .utils import interpreter_enabled, triton_available

__all__ = ["interpreter_enabled", "triton_available"]
