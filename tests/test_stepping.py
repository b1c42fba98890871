"""The one sampler step (`diffusers_ttsplugin.stepping.apply_step`): what the scheduler, the search and
`reverse_sde_step` all run, its noise handling, and its dispatch to the fused Triton kernel."""

from __future__ import annotations

import pytest
import torch
from ttsplugin_kernels.utils import resolve_backend, triton_available

from diffusers_ttsplugin import FlowSDEScheduler, InferenceScaler
from diffusers_ttsplugin.search.demo import toy_problem
from diffusers_ttsplugin.stepping import apply_step, draw_noise, step_backend
from diffusers_ttsplugin.toy import integrate


def test_backend_follows_the_device():
    assert step_backend(torch.device("cpu")) == "torch"
    assert step_backend(torch.device("cuda")) == ("triton" if triton_available() else "torch")


def test_noise_is_drawn_only_when_needed():
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    apply_step(x, u, 1.0, -0.1, 0.0, generator=gen)
    apply_step(x, u, torch.ones(3), torch.full((3,), -0.1), torch.zeros(3), generator=gen)
    assert torch.equal(gen.get_state(), state)  # an ODE step consumes no random numbers
    got = apply_step(x, u, 0.9, -0.1, 0.5, generator=gen)
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, 0.9 * x - 0.1 * u + 0.5 * z)
    rows = apply_step(x, u, torch.full((3,), 0.9), torch.full((3,), -0.1), torch.tensor([0.5, 0.0, 1.0]),
                      generator=torch.Generator().manual_seed(1))  # fmt: skip
    torch.testing.assert_close(rows, 0.9 * x - 0.1 * u + torch.tensor([[0.5], [0.0], [1.0]]) * z)


def test_one_generator_per_row():
    like = torch.zeros(3, 4)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    noise = draw_noise(like, gens, std=2.0)
    assert torch.equal(noise[1], torch.randn(4, generator=torch.Generator().manual_seed(6)) * 2.0)
    with pytest.raises(ValueError, match="one generator per row"):
        draw_noise(like, gens[:2])


@pytest.mark.skipif(
    not triton_available() or resolve_backend("auto", torch.device("cpu")) != "triton",
    reason="needs the Triton interpreter (TRITON_INTERPRET=1, set by conftest without a GPU)",
)
def test_scheduler_and_search_run_the_fused_kernel(monkeypatch):
    """Force the CUDA dispatch on CPU tensors (the kernel runs under the interpreter): the scheduler and the search
    give what the torch path gives, up to float rounding."""
    import diffusers_ttsplugin.stepping as stepping

    flow, reward = toy_problem()
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))

    def run(backend):
        monkeypatch.setattr(stepping, "step_backend", lambda device: backend)
        scheduler = FlowSDEScheduler(time_grid="pipeline")
        scheduler.set_generator(torch.Generator().manual_seed(1))
        samples = integrate(flow.mixture.velocity, scheduler, noise, 6)
        scaler = InferenceScaler(flow, reward, method="rbf", nfe_budget=40, num_steps=4)
        scaler.set_progress_bar_config(disable=True)
        return samples, scaler("toy", generator=torch.Generator().manual_seed(2)).latents

    calls = []
    import ttsplugin_kernels.affine_step_triton as kernel

    original = kernel.affine_step_triton
    monkeypatch.setattr(kernel, "affine_step_triton", lambda *a, **k: calls.append(1) or original(*a, **k))
    fused = run("triton")
    assert len(calls) > 10
    plain = run("torch")
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_scheduler_step_keeps_its_operation_order_bit_for_bit():
    """FlowSDEScheduler.step through apply_step computes exactly what it computed before the step function was shared:
    n·z drawn straight into the output buffer (normal_ with std n), then + a·x, then + b·u; x̂₀ = x + p·u."""
    scheduler = FlowSDEScheduler()
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    x, u, z = (torch.randn(4, 6, generator=g) for _ in range(3))
    c = scheduler.step_coefficients(2)
    expected_given = torch.mul(z, c.noise).add_(x, alpha=c.sample).add_(u, alpha=c.velocity)
    expected_drawn = torch.empty(4, 6).normal_(0.0, c.noise, generator=torch.Generator().manual_seed(7))
    expected_drawn.add_(x, alpha=c.sample).add_(u, alpha=c.velocity)
    expected_x0 = torch.mul(x, c.x0_sample).add_(u, alpha=c.x0_velocity) if c.x0_sample != 1.0 else None
    for noise, expected in ((z, expected_given), (None, expected_drawn)):
        scheduler.set_timesteps(10)
        scheduler.set_begin_index(2)
        scheduler.set_generator(torch.Generator().manual_seed(7))
        prev, x0 = scheduler.step(u, scheduler.timesteps[2], x, noise=noise, return_dict=False)
        assert torch.equal(prev, expected)
        assert torch.equal(x0, torch.add(x, u, alpha=c.x0_velocity) if expected_x0 is None else expected_x0)
