"""A Triton kernel runs here: under the CPU interpreter in CI, natively when a GPU is present."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, alpha, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    y = tl.load(y_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, alpha * x + y, mask=mask)


def test_triton_kernel_runs():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 1000  # not a multiple of the block: the tail is masked
    x = torch.randn(n, device=device, generator=None)
    y = torch.randn(n, device=device)
    out = torch.empty_like(x)
    block = 256
    _axpy_kernel[(triton.cdiv(n, block),)](x, y, out, 2.5, n, BLOCK=block)
    torch.testing.assert_close(out, 2.5 * x + y)
