"""The experimental fused SDE step (kernels/sde_step_triton.py): kernel vs torch expression, in-kernel noise statistics.

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
    from ttsplugin_kernels.sde_step_triton import sde_step_coefficients, sde_step_reference, sde_step_triton

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
    from ttsplugin_kernels.sde_step_triton import sde_step_coefficients, sde_step_triton

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
    from ttsplugin_kernels.sde_step_triton import sde_step_triton

    x = torch.zeros(4, device=DEVICE)
    with pytest.raises(ValueError, match="exactly one of `noise` and `seed`"):
        sde_step_triton(x, x, 0.5, 0.1, 1.0)
    with pytest.raises(ValueError, match="0 < dt <= t"):
        sde_step_triton(x, x, 0.5, 0.6, 1.0, seed=0)
    with pytest.raises(ValueError, match="one shape"):
        sde_step_triton(x, torch.zeros(5, device=DEVICE), 0.5, 0.1, 1.0, seed=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_public_ops_same_result_on_both_backends(dtype):
    import ttsplugin_kernels as tk

    g = torch.Generator().manual_seed(1)
    x, u = (torch.randn(2, 3, 37, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    t, dt, diffusion = 0.6, 0.05, 3 * 0.6**2
    results = {}
    for backend in ("torch", "triton"):
        gen = torch.Generator(DEVICE).manual_seed(9)  # same generator state -> same noise on both paths
        results[backend] = tk.sde_step(x, u, t, dt, diffusion, generator=gen, backend=backend)
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(results["triton"], results["torch"], atol=tol, rtol=tol)
    a, b, c = tk.sde_step_coefficients(t, dt, diffusion)
    noise = torch.randn(x.shape, generator=torch.Generator(DEVICE).manual_seed(9), device=DEVICE)
    expected = (a * x.float() + b * u.float() + c * noise).to(dtype)
    torch.testing.assert_close(results["torch"], expected, atol=tol, rtol=tol)
    # In place into x, and no noise at all when coef_noise == 0 (the ODE's Euler step).
    y = x.clone()
    assert tk.affine_step(y, u, 1.0, -dt, 0.0, out=y, backend="triton") is y
    torch.testing.assert_close(y, (x.float() - dt * u.float()).to(dtype), atol=tol, rtol=tol)


def test_public_ops_reject_bad_input():
    import ttsplugin_kernels as tk

    x = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="velocity"):
        tk.affine_step(x, torch.zeros(4, 6), 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        tk.affine_step(x, x, float("nan"), 1.0, 0.0)
    with pytest.raises(ValueError, match="noise"):
        tk.affine_step(x, x, 1.0, 1.0, 1.0, torch.zeros(3))
    with pytest.raises(ValueError, match="out"):
        tk.affine_step(x, x, 1.0, 1.0, 0.0, out=torch.zeros(4, 5, dtype=torch.float16))
    with pytest.raises(ValueError, match="0 < dt <= t"):
        tk.sde_step(x, x, 0.5, 0.7, 1.0)
    with pytest.raises(ValueError, match="backend"):
        tk.sde_step(x, x, 0.5, 0.1, 1.0, backend="cuda")
