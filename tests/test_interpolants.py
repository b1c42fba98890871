"""The interpolant math (diffusers_ttsplugin.interpolants) against finite differences and the analytic flow."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from flow_sde_helpers import one_intra_op_thread

from diffusers_ttsplugin.interpolants import (
    FrameMap,
    LinearInterpolant,
    VPInterpolant,
    convert_velocity,
    diffusion_coefficient,
    frame_map,
    frame_step_coefficients,
    get_interpolant,
    linear_to_vp_time,
    paper_time_grid,
    renoise,
    reverse_sde_step,
    sde_drift,
    sde_step_coefficients,
    velocity_to_noise,
    velocity_to_score,
    velocity_to_x0,
    vp_scale,
    vp_to_linear_time,
    x0_coefficients,
)
from diffusers_ttsplugin.toy import GaussianMixture, default_mixture

LIN, VP = LinearInterpolant(), VPInterpolant()


@pytest.fixture(scope="module", autouse=True)
def _small_tensors_one_thread():
    yield from one_intra_op_thread()


TIMES = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98], dtype=torch.float64)


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return default_mixture(3)


@pytest.mark.parametrize("interp", [LIN, VP, VPInterpolant(0.5, 12.0)], ids=repr)
def test_schedule_derivatives_match_finite_differences(interp):
    h = 1e-6
    sch, up, down = interp.schedule(TIMES), interp.schedule(TIMES + h), interp.schedule(TIMES - h)
    torch.testing.assert_close(sch.d_alpha, (up.alpha - down.alpha) / (2 * h), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sch.d_sigma, (up.sigma - down.sigma) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("interp", [LIN, VP, VPInterpolant(0.5, 12.0)], ids=repr)
def test_time_from_snr_inverts_snr(interp):
    torch.testing.assert_close(interp.time_from_snr(interp.snr(TIMES)), TIMES, rtol=1e-10, atol=1e-12)
    ends = interp.time_from_snr(torch.tensor([math.inf, 0.0], dtype=torch.float64))
    assert ends[0].item() == 0.0
    assert ends[1].item() == (1.0 if interp == LIN else math.inf)


def test_vp_schedule_is_variance_preserving_and_matches_papers_constants():
    sch = VP.schedule(TIMES)
    torch.testing.assert_close(sch.alpha**2 + sch.sigma**2, torch.ones_like(TIMES))
    # T(1) = (β_max + β_min) / 2 = 10.05: ᾱ_1 = e^{-5.025}; t_{s=1} = σ̄/(ᾱ+σ̄); c_1 = ᾱ+σ̄.
    alpha1, sigma1 = math.exp(-5.025), math.sqrt(1 - math.exp(-10.05))
    assert VP.schedule(1.0).alpha.item() == pytest.approx(alpha1, rel=1e-12)
    assert vp_to_linear_time(1.0).item() == pytest.approx(sigma1 / (alpha1 + sigma1), rel=1e-12)
    assert vp_to_linear_time(1.0).item() == pytest.approx(0.99347, abs=1e-5)
    assert vp_scale(1.0).item() == pytest.approx(alpha1 + sigma1, rel=1e-12)


def test_linear_and_vp_time_maps_are_inverse_and_keep_the_snr():
    s = linear_to_vp_time(TIMES)
    torch.testing.assert_close(vp_to_linear_time(s), TIMES, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(VP.snr(s), LIN.snr(TIMES), rtol=1e-10, atol=0)
    assert linear_to_vp_time(1.0).item() == math.inf and linear_to_vp_time(0.0).item() == 0.0


@pytest.mark.parametrize(
    "source,target", [(LIN, VP), (VP, LIN), (LIN, LIN)], ids=["lin->vp", "vp->lin", "id"]
)
def test_frame_map_scales_and_derivatives(source, target):
    s = TIMES
    fm = frame_map(s, source, target)
    src, tgt = source.schedule(fm.time), target.schedule(s)
    torch.testing.assert_close(fm.scale * src.alpha, tgt.alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fm.scale * src.sigma, tgt.sigma, rtol=1e-10, atol=1e-12)
    h = 1e-6
    up, down = frame_map(s + h, source, target), frame_map(s - h, source, target)
    torch.testing.assert_close(fm.d_time, (up.time - down.time) / (2 * h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fm.d_scale, (up.scale - down.scale) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("interp", [LIN, VP], ids=repr)
def test_score_tweedie_and_noise_from_velocity_equal_the_closed_forms(mixture, interp):
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(64, 3, generator=g, dtype=torch.float64)
    t = 0.02 + 0.96 * torch.rand(64, generator=g, dtype=torch.float64)  # one time per sample
    post = mixture.posterior(x, t, interp)
    sch = interp.schedule(t)
    torch.testing.assert_close(velocity_to_score(post.velocity, x, sch), post.score, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(velocity_to_x0(post.velocity, x, sch), post.x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(velocity_to_noise(post.velocity, x, sch), post.x1, rtol=1e-9, atol=1e-9)
    p, q = x0_coefficients(sch)
    torch.testing.assert_close(p[:, None] * post.velocity + q[:, None] * x, post.x0, rtol=1e-9, atol=1e-9)


def test_converted_vp_velocity_equals_the_vp_mixtures_closed_form(mixture):
    g = torch.Generator().manual_seed(1)
    s = torch.cat(
        [torch.tensor([1.0, 0.9, 0.5, 0.1, 0.01], dtype=torch.float64), torch.rand(59, generator=g)]
    )
    x_vp = 2.0 * torch.randn(64, 3, generator=g, dtype=torch.float64)
    fm = frame_map(s, LIN, VP)
    # The linear model is asked at (x̄ / c, t_s) -- the only model call the conversion needs.
    u_lin = mixture.velocity(x_vp / fm.scale[:, None], fm.time)
    u_vp = convert_velocity(u_lin, x_vp, fm)
    torch.testing.assert_close(u_vp, mixture.velocity(x_vp, s, VP), rtol=1e-9, atol=1e-9)
    # ... and Tweedie does not depend on the frame: E[x₀ | x̄_s] = E[x₀ | x_{t_s}].
    x0_vp = velocity_to_x0(u_vp, x_vp, VP.schedule(s))
    x0_lin = velocity_to_x0(u_lin, x_vp / fm.scale[:, None], LIN.schedule(fm.time))
    torch.testing.assert_close(x0_vp, x0_lin, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x0_vp, mixture.posterior_mean(x_vp, s, VP), rtol=1e-9, atol=1e-9)


def test_convert_velocity_is_not_the_unconverted_velocity(mixture):
    # Guard against a vacuous conversion test: the two frames' velocities really differ.
    x = torch.randn(16, 3, dtype=torch.float64)
    assert (mixture.velocity(x, 0.5, VP) - mixture.velocity(x, 0.5, LIN)).abs().max() > 0.1


def test_ode_step_coefficients_are_euler():
    c = sde_step_coefficients(0.7, 0.6, 0.0, LIN)
    assert (c.sample.item(), c.noise.item()) == (1.0, 0.0)
    assert c.velocity.item() == pytest.approx(-0.1, abs=1e-15)
    c0 = sde_step_coefficients(0.0, 0.0, 0.0, LIN)  # no score terms, so t = 0 is fine
    assert (c0.sample.item(), c0.velocity.item(), c0.noise.item()) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("interp", [LIN, VP], ids=repr)
def test_step_coefficients_equal_the_drift_and_diffusion_definition(mixture, interp):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(32, 3, generator=g, dtype=torch.float64)
    t, t_next, gt = 0.6, 0.55, 1.3
    post = mixture.posterior(x, t, interp)
    expected = x - 0.05 * sde_drift(post.velocity, post.score, gt) + gt * math.sqrt(0.05) * noise
    out = reverse_sde_step(x, post.velocity, t, t_next, interp, gt, noise=noise)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_frame_step_equals_convert_step_and_map_back(mixture):
    """The composite a·x + b·u + n·z equals: x̄ = c x, ū from u, VP Euler–Maruyama with the VP score, x̄'/c'."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 3, generator=g, dtype=torch.float64)
    z = torch.randn(32, 3, generator=g, dtype=torch.float64)
    s, s_next = 0.62, 0.57
    gs = diffusion_coefficient(s, "square", 3.0)
    here, there = frame_map(s, LIN, VP), frame_map(s_next, LIN, VP)
    u = mixture.velocity(x, here.time)
    x_vp = here.scale * x
    u_vp = convert_velocity(u, x_vp, here)
    score_vp = velocity_to_score(u_vp, x_vp, VP.schedule(s))
    x_vp_next = x_vp - (s - s_next) * sde_drift(u_vp, score_vp, gs) + gs * math.sqrt(s - s_next) * z
    expected = x_vp_next / there.scale
    c = frame_step_coefficients(s, s_next, gs, LIN, VP)
    torch.testing.assert_close(c.sample * x + c.velocity * u + c.noise * z, expected, rtol=1e-10, atol=1e-10)
    assert frame_step_coefficients(0.0, 0.0, gs, LIN, VP).sample.item() == 1.0  # zero-length step = identity


def test_renoise_moves_marginals_forward():
    mix = GaussianMixture([1.0], [[1.5, -0.5]], 0.3)
    for interp, (t, t_next) in [(LIN, (0.3, 0.8)), (VP, (0.2, 0.6))]:
        g = torch.Generator().manual_seed(4)
        x = mix.sample_marginal(200_000, t, interp, generator=g, dtype=torch.float64)
        y = renoise(x, t, t_next, interp, generator=g)
        sch = interp.schedule(t_next)
        mean, var = sch.alpha * mix.means[0], sch.alpha**2 * 0.3 + sch.sigma**2
        # 5 standard errors (n = 200k): false-failure probability < 1e-5 per entry.
        se_mean, se_var = torch.sqrt(var / 2e5), var * math.sqrt(2 / 2e5)
        assert ((y.mean(0) - mean).abs() < 5 * se_mean).all()
        assert ((y.var(0) - var).abs() < 5 * se_var).all()


def test_diffusion_coefficients():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(diffusion_coefficient(t, "square", 3.0), 3.0 * t**2)
    torch.testing.assert_close(diffusion_coefficient(t, "linear", 2.0), 2.0 * t)
    torch.testing.assert_close(diffusion_coefficient(t, "constant", 1.5), torch.full_like(t, 1.5))
    torch.testing.assert_close(diffusion_coefficient(t, "sigma", 2.0, VP), 2.0 * VP.schedule(t).sigma)
    with pytest.raises(ValueError, match="diffusion_coefficient"):
        diffusion_coefficient(t, "cubic", 1.0)
    with pytest.raises(ValueError, match="interpolant"):
        diffusion_coefficient(t, "sigma", 1.0)


def test_paper_time_grid_matches_papers_md():
    grid = paper_time_grid(10)
    expected = [1, 0.995, 0.980, 0.954, 0.917, 0.866, 0.800, 0.714, 0.600, 0.436, 0]
    assert grid.tolist() == pytest.approx(expected, abs=5e-4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_steps"):
            paper_time_grid(bad)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta_min=-0.1), "beta_min"),
        (dict(beta_min=float("nan")), "beta_min"),
        (dict(beta_min=5.0, beta_max=5.0), "beta_max"),
        (dict(beta_max=float("inf")), "beta_max"),
    ],
)
def test_vp_interpolant_rejects_bad_betas(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VPInterpolant(**kwargs)


def test_get_interpolant_and_equality():
    assert get_interpolant("linear") == LIN
    assert get_interpolant("vp", 0.1, 20.0) == VP and get_interpolant("vp", 0.2, 20.0) != VP
    assert len({LIN, VP, VPInterpolant()}) == 2
    with pytest.raises(ValueError, match="interpolant"):
        get_interpolant("cosine")


def test_frame_map_is_a_dataclass_of_tensors():
    fm = frame_map(0.5, LIN, VP)
    assert isinstance(fm, FrameMap) and fm.time.dtype == torch.float64


def test_math_and_toy_do_not_import_diffusers():
    """The core is framework-free: search code and the analytic flow run without loading diffusers."""
    code = (
        "import sys, diffusers_ttsplugin as d; d.toy.default_mixture(2); d.interpolants.VPInterpolant(); "
        "assert 'diffusers' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
