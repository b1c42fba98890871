"""Shared helpers for the kernels: availability checks and backend dispatch."""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.cache
def triton_available() -> bool:
    """Whether `triton` imports (it is an optional extra)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreter_enabled() -> bool:
    """Whether kernels run under the Triton CPU interpreter (`TRITON_INTERPRET=1`, read at import time)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that runs an op on `device`: "triton" or "torch".

    "auto": CUDA tensors run the Triton kernels (torch when triton is not installed); CPU tensors run the torch
    reference, or the kernels under the Triton interpreter when `TRITON_INTERPRET=1` was set before the kernels
    were imported (how CI exercises the kernels without a GPU). "triton" insists on the kernels (on CPU tensors
    that needs the interpreter); "torch" always runs the reference.
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the `triton` package: pip install 'ttsplugin[triton]'")
        if device.type != "cuda" and not _kernels_interpreted():
            raise RuntimeError(
                f"backend='triton' on {device.type} tensors runs the Triton CPU interpreter: set "
                "TRITON_INTERPRET=1 before ttsplugin_kernels' Triton kernels are first used (or use CUDA tensors)"
            )
        return "triton"
    if device.type == "cuda":
        return "triton" if triton_available() else "torch"
    if interpreter_enabled() and triton_available() and _kernels_interpreted():
        return "triton"
    return "torch"


def _kernels_interpreted() -> bool:
    from .resample_triton import kernels_interpreted

    return kernels_interpreted()
