"""The affine flow-sampler step (kernels/affine_step*.py): Triton kernel vs torch reference, per-step and per-row
coefficients, in-kernel noise statistics, the reference's exact operation order, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import ttsplugin_kernels as tk
from ttsplugin_kernels.utils import resolve_backend, triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


@pytest.fixture
def triton_runs_here():
    if not triton_available() or resolve_backend("auto", torch.device(DEVICE)) != "triton":
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1")


def _linear_sde_coefficients(t: float, dt: float, g: float) -> tuple[float, float, float]:
    """The linear interpolant's reverse-SDE step t -> t - dt (PAPERS.md §4), written out by hand."""
    half_g2_over_t = 0.5 * g * g / t
    return 1.0 - dt * half_g2_over_t, -dt * (1.0 + half_g2_over_t * (1.0 - t)), g * math.sqrt(dt)


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)]
)
def test_kernel_matches_the_torch_expression(triton_runs_here, dtype, atol):
    from ttsplugin_kernels.affine_step_triton import affine_step_triton

    g = torch.Generator().manual_seed(0)
    shape = (3, 5, 7, 11)  # 1155 elements: not a multiple of the block
    x, u, eps = (torch.randn(shape, generator=g).to(dtype).to(DEVICE) for _ in range(3))
    t, dt = 0.7, 0.1
    a, b, c = _linear_sde_coefficients(t, dt, 3 * t**2)  # the paper's g_t = 3 t^2
    # The unfused expression a scheduler would write: score, drift, Euler-Maruyama.
    x32, u32 = x.float(), u.float()
    drift = u32 - 0.5 * (3 * t**2) ** 2 * (-(x32 + (1.0 - t) * u32) / t)
    expected = (x32 - drift * dt + 3 * t**2 * math.sqrt(dt) * eps.float()).to(dtype)
    got = affine_step_triton(x, u, a, b, c, noise=eps)
    assert got.dtype == dtype and got.shape == shape
    torch.testing.assert_close(got, expected, atol=atol, rtol=atol)
    torch.testing.assert_close(got, tk.affine_step_reference(x, u, a, b, c, eps), atol=atol, rtol=atol)
    # c = 0: the probability-flow ODE's Euler step x - u dt, noise ignored.
    torch.testing.assert_close(
        affine_step_triton(x, u, 1.0, -dt, 0.0, noise=eps).float(),
        (x.float() - dt * u.float()).to(dtype).float(),
        atol=atol,
        rtol=atol,
    )


def test_per_row_coefficients(triton_runs_here):
    """One (a, b, c) per leading row: particles at different grid times in one launch."""
    g = torch.Generator().manual_seed(1)
    x, u, eps = (torch.randn(5, 3, 37, generator=g).to(DEVICE) for _ in range(3))
    a, b, c = (torch.rand(5, generator=g).to(DEVICE) for _ in range(3))
    expected = a.view(5, 1, 1) * x + b.view(5, 1, 1) * u + c.view(5, 1, 1) * eps
    for backend in ("torch", "triton"):
        got = tk.affine_step(x, u, a, b, c, eps, backend=backend)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    # A mix of per-row tensors and floats, and an all-zero noise column: no noise drawn or used.
    mixed = tk.affine_step(x, u, a, -0.5, torch.zeros(5, device=DEVICE), backend="triton")
    torch.testing.assert_close(mixed, a.view(5, 1, 1) * x - 0.5 * u, atol=1e-6, rtol=1e-6)


def test_in_kernel_noise_is_standard_normal_and_seeded(triton_runs_here):
    from ttsplugin_kernels.affine_step_triton import affine_step_triton

    n = 6000
    zeros = torch.zeros(n, device=DEVICE)
    eps = affine_step_triton(zeros, zeros, 1.0, 1.0, 1.0, seed=123)
    assert torch.equal(eps, affine_step_triton(zeros, zeros, 1.0, 1.0, 1.0, seed=123))
    assert not torch.equal(eps, affine_step_triton(zeros, zeros, 1.0, 1.0, 1.0, seed=124))
    # Mean and variance of n draws: |z| < 4.4 (two-sided alpha = 1e-5), fixed seed.
    assert abs(eps.mean().item()) < 4.4 / math.sqrt(n)
    assert abs(eps.var().item() - 1.0) < 4.4 * math.sqrt(2.0 / n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_public_op_same_result_on_both_backends(triton_runs_here, dtype):
    g = torch.Generator().manual_seed(1)
    x, u = (torch.randn(2, 3, 37, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    a, b, c = _linear_sde_coefficients(0.6, 0.05, 3 * 0.6**2)
    results = {}
    for backend in ("torch", "triton"):
        gen = torch.Generator(DEVICE).manual_seed(9)  # same generator state -> same noise on both paths
        results[backend] = tk.affine_step(x, u, a, b, c, generator=gen, backend=backend)
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(results["triton"], results["torch"], atol=tol, rtol=tol)
    noise = torch.randn(x.shape, generator=torch.Generator(DEVICE).manual_seed(9), device=DEVICE)
    torch.testing.assert_close(
        results["torch"], (a * x.float() + b * u.float() + c * noise).to(dtype), atol=tol, rtol=tol
    )
    # In place into x, and no noise at all when coef_noise == 0 (the ODE's Euler step).
    y = x.clone()
    assert tk.affine_step(y, u, 1.0, -0.05, 0.0, out=y, backend="triton") is y
    torch.testing.assert_close(y, (x.float() - 0.05 * u.float()).to(dtype), atol=tol, rtol=tol)


def test_reference_operation_order_is_fixed():
    """Bit-for-bit: noise first, then + a·x, then + b·u; `x + b·u` as one add when a = 1; in place into a noise
    buffer that already holds the scaled noise (what FlowSDEScheduler does to allocate one tensor per step)."""
    g = torch.Generator().manual_seed(2)
    x, u, z = (torch.randn(4, 33, generator=g) for _ in range(3))
    a, b, c = 0.97, -0.11, 0.3
    expected = torch.mul(z, c).add_(x, alpha=a).add_(u, alpha=b)
    assert torch.equal(tk.affine_step_reference(x, u, a, b, c, z), expected)
    buffer = torch.mul(z, c)
    assert tk.affine_step_reference(x, u, a, b, 1.0, buffer, out=buffer) is buffer
    assert torch.equal(buffer, expected)
    assert torch.equal(tk.affine_step_reference(x, u, 1.0, b), torch.add(x, u, alpha=b))
    assert torch.equal(tk.affine_step_reference(x, u, a, b), torch.mul(x, a).add_(u, alpha=b))
    assert torch.equal(tk.affine_step_reference(x, u, a, b, 0.0, z), torch.mul(x, a).add_(u, alpha=b))
    half = tk.affine_step_reference(x.to(torch.bfloat16), u.to(torch.bfloat16), a, b)
    assert half.dtype == torch.bfloat16


def test_public_op_rejects_bad_input():
    x = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="velocity"):
        tk.affine_step(x, torch.zeros(4, 6), 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        tk.affine_step(x, x, float("nan"), 1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        tk.affine_step(x, x, 1.0, "0.5", 0.0)
    with pytest.raises(ValueError, match="coef_noise.*finite|finite.*coef_noise"):
        tk.affine_step(x, x, 1.0, 1.0, torch.tensor([0.0, math.inf, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"shape \[B=4\]"):
        tk.affine_step(x, x, torch.ones(3), 1.0, 0.0)
    with pytest.raises(ValueError, match="noise"):
        tk.affine_step(x, x, 1.0, 1.0, 1.0, torch.zeros(3))
    with pytest.raises(ValueError, match="out"):
        tk.affine_step(x, x, 1.0, 1.0, 0.0, out=torch.zeros(4, 5, dtype=torch.float16))
    with pytest.raises(ValueError, match="backend"):
        tk.affine_step(x, x, 1.0, 1.0, 0.0, backend="cuda")
    with pytest.raises(TypeError, match="tensors"):
        tk.affine_step([0.0], x, 1.0, 1.0)


@needs_triton
def test_kernel_launcher_rejects_bad_input(triton_runs_here):
    from ttsplugin_kernels.affine_step_triton import affine_step_triton

    x = torch.zeros(4, device=DEVICE)
    with pytest.raises(ValueError, match="exactly one of `noise` and `seed`"):
        affine_step_triton(x, x, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        affine_step_triton(x, torch.zeros(5, device=DEVICE), 1.0, 1.0, 1.0, seed=0)
