"""The analytic flow (diffusers_ttsplugin.toy): its closed forms are checked against definitions, not themselves."""

from __future__ import annotations

import math

import pytest
import torch
from flow_sde_helpers import one_intra_op_thread

from diffusers_ttsplugin.interpolants import LinearInterpolant, VPInterpolant
from diffusers_ttsplugin.toy import AnalyticFlow, GaussianMixture, default_mixture

LIN, VP = LinearInterpolant(), VPInterpolant()


@pytest.fixture(scope="module", autouse=True)
def _small_tensors_one_thread():
    yield from one_intra_op_thread()


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return default_mixture(3)


def _points(n=24, d=3, seed=0):
    return 2.5 * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("interp", [LIN, VP], ids=repr)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.8, 1.0])
def test_score_is_the_gradient_of_the_log_density(mixture, interp, t):
    if interp == VP and t == 1.0:
        t = 0.99
    x = _points().requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.marginal_log_prob(x, t, interp).sum(), x)
    torch.testing.assert_close(mixture.score(x.detach(), t, interp), grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("interp", [LIN, VP], ids=repr)
@pytest.mark.parametrize("t", [0.15, 0.5, 0.85])
def test_velocity_solves_the_continuity_equation(mixture, interp, t):
    """∂_t log p_t(x) = −∇·u − u·∇log p_t: the velocity transports the marginals (checked via autograd + FD)."""
    x = _points(seed=1).requires_grad_(True)
    u = mixture.velocity(x, t, interp)
    div = sum(torch.autograd.grad(u[:, j].sum(), x, retain_graph=True)[0][:, j] for j in range(x.shape[1]))
    h = 1e-5
    x0 = x.detach()
    dlogp = (mixture.marginal_log_prob(x0, t + h, interp) - mixture.marginal_log_prob(x0, t - h, interp)) / (
        2 * h
    )
    rhs = -div - (u * mixture.score(x0, t, interp)).sum(-1)
    torch.testing.assert_close(dlogp, rhs.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("interp", [LIN, VP], ids=repr)
def test_posterior_means_reconstruct_x(mixture, interp):
    x, t = _points(seed=2), torch.linspace(0.05, 0.95, 24, dtype=torch.float64)
    post = mixture.posterior(x, t, interp)
    sch = interp.schedule(t)
    torch.testing.assert_close(
        sch.alpha[:, None] * post.x0 + sch.sigma[:, None] * post.x1, x, rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(post.responsibilities.sum(-1), torch.ones(24, dtype=torch.float64))


def test_posterior_mean_matches_monte_carlo():
    """E[x₀ | x_t] by importance weighting data samples with the Gaussian likelihood N(x_t; α x₀, σ² I)."""
    mix = default_mixture(2)
    x0 = mix.sample(200_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = 0.6
    x = torch.tensor([[0.5, 0.2], [-1.0, 1.5], [2.0, -0.5]], dtype=torch.float64)
    logw = -((x[:, None, :] - (1 - t) * x0[None]) ** 2).sum(-1) / (2 * t * t)
    w = torch.softmax(logw, dim=1)
    mc = w @ x0
    ess = 1.0 / (w**2).sum(1)
    assert (ess > 5000).all()
    # Self-normalised IS error ~ spread / sqrt(ESS) < 0.05 here; the tolerance is 0.05 absolute.
    torch.testing.assert_close(mix.posterior_mean(x, t), mc, rtol=0, atol=0.05)


def test_log_density_integrates_to_one():
    mix = default_mixture(2)
    grid = torch.linspace(-9, 9, 361, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    cell = (grid[1] - grid[0]) ** 2
    for t, interp in [(0.0, LIN), (0.5, LIN), (0.5, VP)]:
        mass = mix.marginal_log_prob(pts, t, interp).exp().sum() * cell
        assert mass.item() == pytest.approx(1.0, abs=1e-4)


def test_sampler_matches_weights_and_moments():
    mix = default_mixture(2)
    n = 100_000
    x, comps = mix.sample(
        n, generator=torch.Generator().manual_seed(5), return_components=True, dtype=torch.float64
    )
    freq = torch.bincount(comps, minlength=4).double() / n
    se = torch.sqrt(mix.weights * (1 - mix.weights) / n)
    assert ((freq - mix.weights).abs() < 5 * se).all()  # 5 SE: false-failure prob < 1e-5 per component
    torch.testing.assert_close(x.mean(0), mix.mean(), rtol=0, atol=0.05)
    torch.testing.assert_close(torch.cov(x.T), mix.covariance(), rtol=0.03, atol=0.05)
    for k in range(4):
        xk = x[comps == k]
        torch.testing.assert_close(
            torch.cov(xk.T), mix.covariances[k], rtol=0, atol=0.1 * mix.covariances[k].abs().max()
        )
    # Component classification at t = 0 recovers the true labels for well-separated modes.
    assert (mix.component_posterior(x).argmax(-1) == comps).double().mean() > 0.99


def test_sample_marginal_has_the_interpolated_moments():
    mix = default_mixture(2)
    for interp, t in [(LIN, 0.4), (VP, 0.3)]:
        sch = interp.schedule(t)
        x = mix.sample_marginal(
            100_000, t, interp, generator=torch.Generator().manual_seed(6), dtype=torch.float64
        )
        cov = sch.alpha**2 * mix.covariance() + sch.sigma**2 * torch.eye(2, dtype=torch.float64)
        torch.testing.assert_close(x.mean(0), sch.alpha * mix.mean(), rtol=0, atol=0.05)
        torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.03, atol=0.05)


def test_per_sample_times_and_leading_dims_are_batched(mixture):
    x = _points(12, seed=7)
    t = torch.linspace(0.1, 0.9, 12, dtype=torch.float64)
    loop = torch.stack([mixture.velocity(x[i : i + 1], t[i].item())[0] for i in range(12)])
    torch.testing.assert_close(mixture.velocity(x, t), loop, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        mixture.velocity(x.reshape(3, 4, 3), t.reshape(3, 4)), loop.reshape(3, 4, 3), rtol=1e-12, atol=1e-12
    )
    assert mixture.velocity(x.float(), 0.5).dtype == torch.float32


def test_covariance_formats_and_validation():
    iso = GaussianMixture([1, 1], [[0.0, 0.0], [3.0, 0.0]], [0.5, 0.2])
    diag = GaussianMixture([1, 1], [[0.0, 0.0], [3.0, 0.0]], [[0.5, 0.5], [0.2, 0.2]])
    torch.testing.assert_close(iso.covariances, diag.covariances)
    torch.testing.assert_close(iso.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    bad = [
        (dict(weights=[1.0], means=[0.0, 1.0], covariances=1.0), "means"),
        (dict(weights=[1.0, 1.0], means=[[0.0, 1.0]], covariances=1.0), "weights"),
        (dict(weights=[-1.0], means=[[0.0, 1.0]], covariances=1.0), "weights"),
        (dict(weights=[float("nan")], means=[[0.0, 1.0]], covariances=1.0), "weights"),
        (dict(weights=[1.0], means=[[0.0, float("inf")]], covariances=1.0), "means"),
        (dict(weights=[1.0], means=[[0.0, 1.0]], covariances=[[1.0, 2.0, 3.0]]), "covariances"),
        (dict(weights=[1.0], means=[[0.0, 1.0]], covariances=[[[1.0, 2.0], [0.0, 1.0]]]), "symmetric"),
        (
            dict(weights=[1.0], means=[[0.0, 1.0]], covariances=[[[1.0, 2.0], [2.0, 1.0]]]),
            "positive definite",
        ),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            GaussianMixture(**kwargs)
    with pytest.raises(ValueError, match="x"):
        iso.posterior(torch.zeros(4, 3), 0.5)


def test_random_and_default_mixtures():
    a, b = GaussianMixture.random(4, 3, seed=1), GaussianMixture.random(4, 3, seed=1)
    torch.testing.assert_close(a.covariances, b.covariances)
    assert a.dim == 4 and a.num_components == 3
    mix = default_mixture(5)
    assert mix.dim == 5 and mix.weights[3].item() == pytest.approx(0.05)
    assert mix.means[3].norm().item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="dim"):
        default_mixture(1)


def test_analytic_flow_adapter_counts_evaluations():
    flow = AnalyticFlow(default_mixture(2))
    x = flow.prior(6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, *flow.latent_shape)
    u = flow(x, torch.full((6,), 0.5))
    torch.testing.assert_close(u, flow.mixture.velocity(x, 0.5))
    flow.velocity(x, 0.2)
    assert flow.nfe == 12
    assert flow.decode(x) is x
    assert math.isfinite(flow.mixture.log_prob(x).sum().item())
