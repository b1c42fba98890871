"""FlowSDEScheduler on its own: config, validation, diffusers' common scheduler checks, the step's algebra, grids,
generators, and sampling the analytic flow (distribution tests with stated α and fixed seeds)."""

from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from flow_sde_helpers import component_tests, energy_distance_test, one_intra_op_thread

from diffusers_ttsplugin import FlowSDEScheduler, FlowSDESchedulerOutput
from diffusers_ttsplugin.interpolants import (
    LinearInterpolant,
    VPInterpolant,
    convert_velocity,
    diffusion_coefficient,
    frame_map,
    linear_to_vp_time,
    paper_time_grid,
    sde_drift,
    velocity_to_score,
    vp_to_linear_time,
)
from diffusers_ttsplugin.toy import default_mixture, integrate

LIN, VP = LinearInterpolant(), VPInterpolant()
CONFIGS = {
    "vp-sde": {},
    "linear-sde": {"interpolant": "linear"},
    "vp-ode": {"sampler": "ode"},
    "linear-ode": {"sampler": "ode", "interpolant": "linear"},
    "paper": {"time_grid": "paper", "diffusion_coefficient": "linear", "diffusion_norm": 1.0},
    "paper-code-linear": {
        "time_grid": "paper_code",
        "interpolant": "linear",
        "diffusion_coefficient": "sigma",
    },
}


@pytest.fixture(scope="module", autouse=True)
def _small_tensors_one_thread():
    yield from one_intra_op_thread()


def _velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """A smooth stand-in for a model (deterministic in x and t)."""
    return torch.tanh(x) - 0.3 * x + t


def _trajectory(scheduler, steps=4, shape=(2, 6, 4), seed=0, **set_kwargs):
    """Run `steps` steps from seeded noise; return [(prev_sample, pred_original_sample)] per step."""
    scheduler.set_timesteps(steps, **set_kwargs)
    scheduler.set_generator(torch.Generator().manual_seed(seed + 1))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    outs = []
    for t in scheduler.timesteps:
        out = scheduler.step(_velocity(x, float(t) / 1000), t, x)
        outs.append((out.prev_sample, out.pred_original_sample))
        x = out.prev_sample
    return outs


# -- configuration --------------------------------------------------------------------------------------------


def test_accepts_every_flow_match_euler_config_key():
    euler_params = set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters) - {"self"}
    ours = set(inspect.signature(FlowSDEScheduler.__init__).parameters)
    assert euler_params <= ours
    euler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.4,
        max_shift=1.2,
        base_image_seq_len=128,
        shift_terminal=0.1,
    )
    sde = FlowSDEScheduler.from_config(euler.config, sampler="ode", interpolant="linear")
    for key in euler_params:
        assert sde.config[key] == euler.config[key], key
    assert isinstance(sde, FlowSDEScheduler) and sde.config.sampler == "ode"


def test_defaults_are_the_papers_vp_sde():
    cfg = FlowSDEScheduler().config
    assert (cfg.sampler, cfg.interpolant, cfg.diffusion_coefficient, cfg.diffusion_norm) == (
        "sde",
        "vp",
        "square",
        3.0,
    )
    assert (cfg.vp_beta_min, cfg.vp_beta_max, cfg.time_grid, cfg.final_step) == (
        0.1,
        20.0,
        "auto",  # the grid follows the interpolant: equal steps in VP time for VP, the pipeline's for linear
        "auto",
    )
    assert FlowSDEScheduler.order == 1 and len(FlowSDEScheduler()) == 1000


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"sampler": "langevin"}, "sampler"),
        ({"sampler": None}, "sampler"),
        ({"interpolant": "cosine"}, "interpolant"),
        ({"diffusion_coefficient": "cubic"}, "diffusion_coefficient"),
        ({"diffusion_norm": -1.0}, "diffusion_norm"),
        ({"diffusion_norm": float("nan")}, "diffusion_norm"),
        ({"diffusion_norm": float("inf")}, "diffusion_norm"),
        ({"diffusion_norm": "3"}, "diffusion_norm"),
        ({"diffusion_norm": True}, "diffusion_norm"),
        ({"vp_beta_min": 20.0, "vp_beta_max": 0.1}, "vp_beta_min"),
        ({"vp_beta_min": 5.0, "vp_beta_max": 5.0}, "vp_beta_min"),
        ({"vp_beta_min": -0.1}, "vp_beta_min"),
        ({"vp_beta_min": float("nan")}, "vp_beta_min"),
        ({"vp_beta_max": float("nan")}, "vp_beta_max"),
        ({"time_grid": "karras"}, "time_grid"),
        ({"final_step": "denoise"}, "final_step"),
        ({"shift": float("nan")}, "shift"),
        ({"shift": 0.0}, "shift"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"invert_sigmas": True}, "invert_sigmas"),
        ({"stochastic_sampling": True}, "stochastic_sampling"),
        ({"time_shift_type": "cubic"}, "time_shift_type"),
    ],
)
def test_bad_config_raises_a_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}"):
        FlowSDEScheduler(**kwargs)
    with pytest.raises(ValueError, match=f"`{name}"):
        FlowSDEScheduler.from_config(FlowMatchEulerDiscreteScheduler().config, **kwargs)


def test_from_config_refuses_misspelt_overrides_and_reports_the_rest():
    base = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    for typo, key in (
        ("diffusion_nrom", "diffusion_norm"),
        ("samplr", "sampler"),
        ("vp_beta_mn", "vp_beta_min"),
    ):
        with pytest.raises(TypeError, match=f"`{typo}`.*`{key}`"):
            FlowSDEScheduler.from_config(base, **{typo: 1.0})
    # A keyword that resembles no key (a loader's own) is dropped as diffusers does, but named in a warning.
    scheduler, unused = FlowSDEScheduler.from_config(base, sampler="ode", zzz=1, return_unused_kwargs=True)
    assert unused == {"zzz": 1} and scheduler.config.sampler == "ode" and scheduler.config.shift == 3.0
    assert isinstance(FlowSDEScheduler.from_config(base, interpolant="linear"), FlowSDEScheduler)


def test_set_generator_validation():
    s = FlowSDEScheduler()
    for bad in (0, "seed", [], [torch.Generator(), 3]):
        with pytest.raises(TypeError, match="generator"):
            s.set_generator(bad)
    s.set_generator([torch.Generator().manual_seed(i) for i in range(3)])
    s.set_timesteps(3)
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="one generator per row"):
        s.step(x, s.timesteps[0], x)
    s.set_generator(None)
    assert s.generator is None


def test_step_validation():
    s = FlowSDEScheduler()
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(x, torch.tensor(1000.0), x)
    s.set_timesteps(2)
    with pytest.raises(ValueError, match="integer"):
        s.step(x, 1, x)
    with pytest.raises(ValueError, match="`noise`"):
        s.step(x, s.timesteps[0], x, noise=torch.zeros(3))
    with pytest.raises(ValueError, match="`model_output`"):
        s.step(torch.zeros(2, 5), s.timesteps[0], x)
    with pytest.raises(ValueError, match="per_token_timesteps"):
        s.step(x, s.timesteps[0], x, per_token_timesteps=torch.zeros(2, 4))
    s.set_begin_index(0)
    for t in s.timesteps:
        x = s.step(x, t, x).prev_sample
    with pytest.raises(ValueError, match="2 steps"):
        s.step(x, s.timesteps[-1], x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        FlowSDEScheduler(time_grid="paper").set_timesteps(0)


# -- diffusers' common scheduler checks ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_save_load_round_trip_gives_identical_steps(tmp_path, name):
    scheduler = FlowSDEScheduler(**CONFIGS[name])
    scheduler.save_pretrained(tmp_path)
    loaded = FlowSDEScheduler.from_pretrained(tmp_path)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    again = FlowSDEScheduler.from_config(scheduler.config)
    ref = _trajectory(scheduler)
    for other in (loaded, again):
        for (a, a0), (b, b0) in zip(ref, _trajectory(other), strict=True):
            assert torch.equal(a, b) and torch.equal(a0, b0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_tuple_and_dict_outputs_are_equivalent(name):
    outs = []
    for return_dict in (True, False):
        s = FlowSDEScheduler(**CONFIGS[name])
        s.set_timesteps(3)
        s.set_generator(torch.Generator().manual_seed(0))
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
        out = s.step(_velocity(x, 1.0), s.timesteps[0], x, return_dict=return_dict)
        outs.append(out)
    as_dict, as_tuple = outs
    assert isinstance(as_dict, FlowSDESchedulerOutput) and isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert torch.equal(as_dict.prev_sample, as_tuple[0])
    assert torch.equal(as_dict.pred_original_sample, as_tuple[1])


@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (2, 64, 16), (5, 3)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_step_keeps_shape_and_dtype(shape, dtype):
    s = FlowSDEScheduler()
    s.set_timesteps(3)
    x = torch.randn(shape).to(dtype)
    out = s.step(_velocity(x.float(), 1.0).to(dtype), s.timesteps[0], x)
    for tensor in (out.prev_sample, out.pred_original_sample, s.pred_original_sample):
        assert tensor.shape == shape and tensor.dtype == dtype and torch.isfinite(tensor.float()).all()


# -- the drop-in claim ------------------------------------------------------------------------------------------

EULER_CONFIGS = {
    "default": ({}, {}),
    "sd3-shift": ({"shift": 3.0}, {}),
    "flux-dynamic": ({"shift": 3.0, "use_dynamic_shifting": True}, {"mu": 0.8}),
    "karras": ({"use_karras_sigmas": True}, {}),
    "exponential": ({"use_exponential_sigmas": True}, {}),
    "beta": ({"use_beta_sigmas": True}, {}),
    "terminal": ({"shift_terminal": 0.1}, {}),
    "linear-shift": ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.3}),
}


@pytest.mark.parametrize("name", sorted(EULER_CONFIGS))
def test_ode_linear_reproduces_flow_match_euler_bit_for_bit(name):
    config, set_kwargs = EULER_CONFIGS[name]
    for grid_kwargs in ({}, {"sigmas": [1.0, 0.8, 0.55, 0.3, 0.1]}):
        euler = FlowMatchEulerDiscreteScheduler(**config)
        ours = FlowSDEScheduler.from_config(euler.config, sampler="ode", interpolant="linear")
        steps = None if grid_kwargs else 5
        euler.set_timesteps(steps, **grid_kwargs, **set_kwargs)
        ours.set_timesteps(steps, **grid_kwargs, **set_kwargs)
        assert torch.equal(euler.timesteps, ours.timesteps) and torch.equal(euler.sigmas, ours.sigmas)
        euler.set_begin_index(0)
        ours.set_begin_index(0)
        x = y = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
        for t in euler.timesteps:
            x = euler.step(_velocity(x, float(t) / 1000), t, x).prev_sample
            y = ours.step(_velocity(y, float(t) / 1000), t, y).prev_sample
            assert torch.equal(x, y)


# -- grids ------------------------------------------------------------------------------------------------------


def test_pipeline_grid_maps_to_vp_time_and_clamps_pure_noise():
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    euler.set_timesteps(8)
    s = FlowSDEScheduler.from_config(euler.config, time_grid="pipeline")
    s.set_timesteps(8)
    t_end = vp_to_linear_time(1.0).item()
    # σ = 1 (pure noise) has no VP time: it is clamped to s = 1, i.e. linear t ≈ 0.99347; the rest are untouched.
    assert s.sigmas[0].item() == pytest.approx(t_end, abs=1e-7)
    assert s.timesteps[0].item() == pytest.approx(1000 * t_end, abs=1e-4)
    assert torch.equal(s.sigmas[1:], euler.sigmas[1:]) and torch.equal(s.timesteps[1:], euler.timesteps[1:])
    assert s.sampling_times[0].item() == 1.0
    torch.testing.assert_close(s.sampling_times[1:], linear_to_vp_time(euler.sigmas[1:].double()))
    linear = FlowSDEScheduler.from_config(euler.config, interpolant="linear")
    linear.set_timesteps(8)
    assert torch.equal(linear.timesteps, euler.timesteps)


def test_paper_grids():
    r = paper_time_grid(10)
    vp = FlowSDEScheduler(time_grid="paper", shift=3.0)  # the pipeline's shift and mu do not apply here
    vp.set_timesteps(sigmas=[1.0] * 10, mu=0.7)
    torch.testing.assert_close(vp.sampling_times, r)
    torch.testing.assert_close(vp.sigmas, vp_to_linear_time(r).float())
    torch.testing.assert_close(vp.timesteps, 1000 * vp.sigmas[:-1])
    # Linear sampler on the paper grid: the same noise levels (equal-SNR linear times) ...
    lin = FlowSDEScheduler(time_grid="paper", interpolant="linear")
    lin.set_timesteps(10)
    torch.testing.assert_close(lin.sigmas, vp.sigmas)
    torch.testing.assert_close(lin.sampling_times, vp_to_linear_time(r))
    # ... and the released code's variant uses r_i directly as linear times.
    code = FlowSDEScheduler(time_grid="paper_code", interpolant="linear")
    code.set_timesteps(10)
    torch.testing.assert_close(code.sigmas, r.float())


# -- the step's algebra -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpolant", ["vp", "linear"])
@pytest.mark.parametrize("coefficient", ["square", "linear", "constant", "sigma"])
def test_step_equals_convert_euler_maruyama_and_map_back(interpolant, coefficient):
    """The fused step equals the three stages written out: x̄ = c x, ū = (ċ/c) x̄ + c ṫ u, one Euler–Maruyama
    step of the reverse SDE in the sampling frame with g at the sampling time, x = x̄' / c'."""
    s = FlowSDEScheduler(interpolant=interpolant, diffusion_coefficient=coefficient, diffusion_norm=2.0)
    s.set_timesteps(6, mu=None)
    interp = s.sampling_interpolant
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 2, generator=gen)
    for i, t in enumerate(s.timesteps):
        u = _velocity(x, float(t) / 1000)
        z = torch.randn(x.shape, generator=gen)
        out = s.step(u, t, x, noise=z)
        tau, tau_next = s.sampling_times[i], s.sampling_times[i + 1]
        here, there = frame_map(tau, LIN, interp), frame_map(tau_next, LIN, interp)
        xd, ud, zd = x.double(), u.double(), z.double()
        xf = here.scale * xd
        uf = convert_velocity(ud, xf, here)
        g = diffusion_coefficient(tau, coefficient, 2.0, interp)
        delta = tau - tau_next
        if delta > 0:
            drift = sde_drift(uf, velocity_to_score(uf, xf, interp.schedule(tau)), g)
            xf_next = xf - delta * drift + g * delta.sqrt() * zd
        else:
            xf_next = xf
        expected = xf_next / there.scale
        torch.testing.assert_close(out.prev_sample.double(), expected, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(out.pred_original_sample, x - s.sigmas[i] * u, rtol=1e-6, atol=1e-6)
        x = out.prev_sample


def test_step_coefficients_and_tweedie_helpers_describe_the_step():
    s = FlowSDEScheduler()
    s.set_timesteps(5)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    s.set_begin_index(0)
    for t in s.timesteps[:3]:
        u = _velocity(x, float(t) / 1000)
        c = s.step_coefficients()
        x0 = s.tweedie(u, x)
        out = s.step(u, t, x, noise=z)
        torch.testing.assert_close(out.prev_sample, c.sample * x + c.velocity * u + c.noise * z)
        torch.testing.assert_close(out.pred_original_sample, x0)
        x = out.prev_sample
    assert s.step_coefficients(0).noise > 0 and s.step_coefficients(4) is s.step_coefficients(4)


def test_final_step():
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    for config, tweedie_last in [
        ({}, False),
        ({"final_step": "tweedie"}, True),
        ({"time_grid": "paper"}, True),
        ({"time_grid": "paper", "final_step": "integrate"}, False),
    ]:
        s = FlowSDEScheduler(**config)
        s.set_timesteps(4)
        y = x
        for t in s.timesteps:
            out = s.step(_velocity(y, float(t) / 1000), t, y)
            y = out.prev_sample
        assert torch.equal(out.prev_sample, out.pred_original_sample) == tweedie_last, config


def test_zero_length_steps_are_identity():
    # Two pipeline sigmas above t(s=1) collapse onto it: the first step then has zero length.
    s = FlowSDEScheduler(time_grid="pipeline")
    s.set_timesteps(sigmas=[1.0, 0.999, 0.5])
    assert s.sigmas[0] == s.sigmas[1]
    c = s.step_coefficients(0)
    assert (c.sample, c.velocity, c.noise) == (1.0, 0.0, 0.0)


def test_scale_noise_is_the_linear_forward_process():
    s = FlowSDEScheduler(time_grid="paper")
    s.set_timesteps(4)
    s.set_begin_index(1)
    x0, noise = torch.randn(2, 3), torch.randn(2, 3)
    sigma = s.sigmas[1]
    torch.testing.assert_close(s.scale_noise(x0, s.timesteps[1:2], noise), sigma * noise + (1 - sigma) * x0)


def test_set_shift_reaches_the_pipeline_grid():
    s = FlowSDEScheduler(interpolant="linear", sampler="ode")
    s.set_shift(3.0)
    euler = FlowMatchEulerDiscreteScheduler()
    euler.set_shift(3.0)
    s.set_timesteps(4)
    euler.set_timesteps(4)
    assert s.shift == 3.0 and torch.equal(s.sigmas, euler.sigmas)


# -- generators -------------------------------------------------------------------------------------------------


def test_own_generator_global_rng_and_step_override():
    def run(seed_own=None, seed_global=None, step_gen_seed=None):
        s = FlowSDEScheduler()
        if seed_own is not None:
            s.set_generator(torch.Generator().manual_seed(seed_own))
        if seed_global is not None:
            torch.manual_seed(seed_global)
        s.set_timesteps(3)
        x = torch.ones(2, 4)
        for t in s.timesteps:
            gen = None if step_gen_seed is None else torch.Generator().manual_seed(step_gen_seed)
            x = s.step(_velocity(x, 0.5), t, x, generator=gen).prev_sample
        return x

    assert torch.equal(run(seed_own=1), run(seed_own=1)) and not torch.equal(run(seed_own=1), run(seed_own=2))
    assert torch.equal(run(seed_global=5), run(seed_global=5))
    assert not torch.equal(run(seed_global=5), run(seed_global=6))
    # The own generator wins over the global seed, and a generator passed to step() wins over both.
    torch.manual_seed(123)
    a = run(seed_own=1)
    assert torch.equal(a, run(seed_own=1, seed_global=99))
    assert torch.equal(run(seed_own=1, step_gen_seed=7), run(seed_own=2, step_gen_seed=7))


def test_ode_draws_no_random_numbers():
    s = FlowSDEScheduler(sampler="ode")
    s.set_timesteps(3)
    state = torch.get_rng_state()
    x = torch.ones(2, 4)
    for t in s.timesteps:
        x = s.step(_velocity(x, 0.5), t, x).prev_sample
    assert torch.equal(state, torch.get_rng_state())


def test_one_generator_per_row_makes_paths_independent_of_the_batch():
    def run(rows):
        s = FlowSDEScheduler()
        s.set_generator([torch.Generator().manual_seed(r) for r in rows])
        s.set_timesteps(3)
        x = torch.stack([torch.full((5,), float(r)) for r in rows])
        for t in s.timesteps:
            x = s.step(_velocity(x, 0.5), t, x).prev_sample
        return x

    alone = run([7])
    together = run([3, 7, 11])
    assert torch.equal(alone[0], together[1])
    assert not torch.equal(together[0], together[2])


# -- sampling the analytic flow -----------------------------------------------------------------------------------


NUM_PARTICLES = 2000
NUM_STEPS = 200
ALPHA_COMPONENTS = 1e-3  # per test (weights, 4 means, 4 covariances): ≤ 0.9 % false failures per sampler
ALPHA_ENERGY = 0.01  # energy-distance permutation test (200 permutations)


def _fine_grid(num_steps: int) -> list[float]:
    # Uniform in VP time (linear times of equal SNR): fine where the VP-SDE's g = 3 s² is largest.
    return vp_to_linear_time(torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)).tolist()


def _sample_toy(config: dict, seed: int = 0, patch=None):
    """Integrate the analytic flow from N(0, I) with FlowSDEScheduler, driven like FluxPipeline drives it; also
    return the state near linear t = 0.5. `patch(scheduler)` may replace the step coefficients (negative control)."""
    mix = default_mixture(2)
    s = FlowSDEScheduler(**config)
    s.set_generator(torch.Generator().manual_seed(seed))
    s.set_timesteps(sigmas=_fine_grid(NUM_STEPS))
    if patch is not None:
        s._coefficients = patch(s)
    s.set_begin_index(0)
    mid_index = int((s.sigmas - 0.5).abs().argmin())
    x = torch.randn(NUM_PARTICLES, 2, generator=torch.Generator().manual_seed(seed + 100))
    middle = {}
    for i, t in enumerate(s.timesteps):
        x = s.step(mix.velocity(x, t.expand(len(x)) / 1000), t, x).prev_sample
        if i + 1 == mid_index:
            middle["x"], middle["t"] = x, float(s.sigmas[i + 1])
    return mix, x, middle


@pytest.mark.parametrize(
    "config",
    [{"sampler": "ode", "interpolant": "linear"}, {"interpolant": "linear"}, {"interpolant": "vp"}],
    ids=["ode", "linear-sde", "vp-sde"],
)
def test_samples_match_the_data_distribution(config):
    """2000 particles, 200 steps: per-component weights/means/covariances (α = 1e-3 each) and an energy-distance
    two-sample test against fresh data (α = 0.01), at t = 0 and against the closed-form marginal near t = 0.5 (the
    SDE keeps the ODE's marginals along the way, not just at the end)."""
    mix, x, middle = _sample_toy(config)
    pvalues = component_tests(mix, x)
    assert min(pvalues.values()) > ALPHA_COMPONENTS, pvalues
    data = mix.sample(1500, generator=torch.Generator().manual_seed(1000))
    assert energy_distance_test(x[:1500], data)[1] > ALPHA_ENERGY
    reference = mix.sample_marginal(1500, middle["t"], generator=torch.Generator().manual_seed(2000))
    assert abs(middle["t"] - 0.5) < 0.01
    assert energy_distance_test(middle["x"][:1500], reference)[1] > ALPHA_ENERGY


def test_the_distribution_tests_reject_an_sde_without_the_score_term():
    """Negative control: adding the noise g √Δ z without the drift correction −½ g² ∇log p must fail both tests."""

    def drop_score(s):
        return [
            dataclasses.replace(c, sample=1.0, velocity=float(s.sigmas[i + 1] - s.sigmas[i]))
            for i, c in enumerate(s._coefficients)
        ]

    mix, x, middle = _sample_toy({"interpolant": "linear"}, patch=drop_score)
    assert min(component_tests(mix, x).values()) < 1e-6
    data = mix.sample(1500, generator=torch.Generator().manual_seed(1000))
    assert energy_distance_test(x[:1500], data)[1] <= ALPHA_ENERGY


@pytest.mark.parametrize("interpolant", ["linear", "vp"])
def test_tweedie_output_is_the_posterior_mean_of_the_analytic_flow(interpolant):
    mix = default_mixture(2)
    s = FlowSDEScheduler(interpolant=interpolant)
    s.set_generator(torch.Generator().manual_seed(0))
    s.set_timesteps(12)
    s.set_begin_index(0)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for i, t in enumerate(s.timesteps):
        out = s.step(mix.velocity(x, s.sigmas[i].double()), t, x)
        expected = mix.posterior_mean(x, s.sigmas[i].double())
        torch.testing.assert_close(out.pred_original_sample, expected, rtol=1e-6, atol=1e-6)
        assert s.pred_original_sample is out.pred_original_sample
        x = out.prev_sample


def test_sde_noise_scale_follows_the_diffusion_norm():
    """Larger norm, more spread between two runs from the same start (the paper's fidelity/diversity knob)."""
    spreads = []
    for norm in (0.0, 1.0, 3.0):
        outs = []
        for seed in (0, 1):
            s = FlowSDEScheduler(diffusion_norm=norm)
            s.set_generator(torch.Generator().manual_seed(seed))
            outs.append(integrate(default_mixture(2).velocity, s, torch.zeros(512, 2), 20))
        spreads.append((outs[0] - outs[1]).norm().item())
    assert spreads[0] == 0.0 and spreads[0] < spreads[1] < spreads[2]
    assert math.isfinite(spreads[2])


# -- the default grid follows the interpolant ------------------------------------------------------------------


def test_default_grid_follows_the_interpolant():
    from diffusers_ttsplugin.scheduling_flow_sde import AUTO_TIME_GRID

    assert AUTO_TIME_GRID == {"linear": "pipeline", "vp": "uniform"}
    assert FlowSDEScheduler().time_grid == "uniform" and FlowSDEScheduler().config.time_grid == "auto"
    assert FlowSDEScheduler(interpolant="linear").time_grid == "pipeline"
    assert FlowSDEScheduler(time_grid="pipeline").time_grid == "pipeline"
    vp = FlowSDEScheduler(shift=3.0)  # equal steps in VP time: the pipeline's shift and mu do not apply
    vp.set_timesteps(sigmas=np.linspace(1.0, 0.1, 10), mu=0.7)
    torch.testing.assert_close(vp.sampling_times, torch.linspace(1.0, 0.0, 11, dtype=torch.float64))
    torch.testing.assert_close(vp.sigmas, vp_to_linear_time(vp.sampling_times).float())
    assert vp.timesteps.shape == (10,) and vp.step_coefficients(9).noise != 0.0  # integrates to t = 0
    linear = FlowSDEScheduler(interpolant="linear", time_grid="uniform")
    linear.set_timesteps(4)
    torch.testing.assert_close(linear.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_default_vp_grid_keeps_the_mode_weights_where_the_pipeline_grid_did_not():
    """VP-SDE at the paper's 10 steps on the 4-mode mixture (8192 samples, fixed seeds; the share of each mode is the
    mean posterior responsibility, s.e. <= 0.0055): the default grid (equal steps in VP time) is within 0.035 of
    every weight; the pipeline grid (uniform linear sigmas) put 13 % of the samples in the 5 % mode
    (BENCHMARKS.md, "Marginal error")."""

    mixture = default_mixture(2)

    def shares(**config):
        scheduler = FlowSDEScheduler(**config)
        scheduler.set_generator(torch.Generator().manual_seed(0))
        noise = torch.randn(8192, 2, generator=torch.Generator().manual_seed(100))
        x = integrate(mixture.velocity, scheduler, noise, 10)
        return mixture.component_posterior(x.double()).mean(0) - mixture.weights

    assert float(shares().abs().max()) < 0.035
    assert float(shares(time_grid="pipeline")[3]) > 0.06
