"""The experimental fused SDE step (kernels/sde_step.py): kernel vs torch expression, in-kernel noise statistics.

Only what the GPU measurement needs: if the benchmark says fusing does not pay, this file goes with the kernel.
"""

from __future__ import annotations

import math

import pytest
import torch
from ttsplugin_kernels.utils import resolve_backend, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _triton_runs_here():
    if resolve_backend("auto", torch.device(DEVICE)) != "triton":
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]
)
def test_fused_step_matches_the_torch_expression(dtype, atol):
    from ttsplugin_kernels.sde_step import sde_step_coefficients, sde_step_reference, sde_step_triton

    g = torch.Generator().manual_seed(0)
    shape = (3, 5, 7, 11)  # 1155 elements: not a multiple of the block
    x, u, eps = (torch.randn(shape, generator=g).to(dtype).to(DEVICE) for _ in range(3))
    t, dt = 0.7, 0.1
    diffusion = 3 * t**2  # the paper's g_t = 3 t^2
    expected = sde_step_reference(x, u, t, dt, diffusion, eps)
    got = sde_step_triton(x, u, t, dt, diffusion, noise=eps)
    assert got.dtype == dtype and got.shape == shape
    torch.testing.assert_close(got, expected, atol=atol, rtol=atol)
    a, b, c = sde_step_coefficients(t, dt, diffusion)  # the closed form of the same affine map
    torch.testing.assert_close(
        got.float(), a * x.float() + b * u.float() + c * eps.float(), atol=atol, rtol=atol
    )
    # g = 0 is the probability-flow ODE's Euler step: x - u dt.
    torch.testing.assert_close(
        sde_step_triton(x, u, t, dt, 0.0, noise=eps).float(),
        (x.float() - dt * u.float()).to(dtype).float(),
        atol=atol,
        rtol=atol,
    )


def test_in_kernel_noise_is_standard_normal_and_seeded():
    from ttsplugin_kernels.sde_step import sde_step_coefficients, sde_step_triton

    n = 6000
    x = torch.zeros(n, device=DEVICE)
    u = torch.zeros(n, device=DEVICE)
    t, dt, diffusion = 0.5, 0.25, 2.0
    _, _, c = sde_step_coefficients(t, dt, diffusion)
    eps = sde_step_triton(x, u, t, dt, diffusion, seed=123) / c
    assert torch.equal(eps, sde_step_triton(x, u, t, dt, diffusion, seed=123) / c)
    assert not torch.equal(eps, sde_step_triton(x, u, t, dt, diffusion, seed=124) / c)
    # Mean and variance of n draws: |z| < 4.4 (two-sided alpha = 1e-5), fixed seed.
    assert abs(eps.mean().item()) < 4.4 / math.sqrt(n)
    assert abs(eps.var().item() - 1.0) < 4.4 * math.sqrt(2.0 / n)


def test_bad_arguments():
    from ttsplugin_kernels.sde_step import sde_step_triton

    x = torch.zeros(4, device=DEVICE)
    with pytest.raises(ValueError, match="exactly one of `noise` and `seed`"):
        sde_step_triton(x, x, 0.5, 0.1, 1.0)
    with pytest.raises(ValueError, match="0 < dt <= t"):
        sde_step_triton(x, x, 0.5, 0.6, 1.0, seed=0)
    with pytest.raises(ValueError, match="one shape"):
        sde_step_triton(x, torch.zeros(5, device=DEVICE), 0.5, 0.1, 1.0, seed=0)
