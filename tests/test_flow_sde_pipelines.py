"""FlowSDEScheduler inside real, unmodified diffusers pipelines (tiny FluxPipeline and StableDiffusion3Pipeline)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from flow_sde_helpers import one_intra_op_thread

from diffusers_ttsplugin import FlowSDEScheduler
from diffusers_ttsplugin.testing import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

BUILDERS = {"flux": build_tiny_flux_pipeline, "sd3": build_tiny_sd3_pipeline}
# The schedulers the real checkpoints ship (FLUX.1-dev: dynamic shifting; SD3: shift 3), plus diffusers' default.
REAL_EULER_CONFIGS = {
    "default": {},
    "flux-dev": {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
    "sd3": {"shift": 3.0},
}
SDE_CONFIGS = {
    "vp-sde": {},
    "linear-sde": {"interpolant": "linear"},
    "paper-vp": {"time_grid": "paper"},
    "vp-ode": {"sampler": "ode"},
}


@pytest.fixture(scope="module", autouse=True)
def _small_models_one_thread():
    yield from one_intra_op_thread()


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def pipe(request):
    pipe = BUILDERS[request.param]()
    pipe.original_scheduler_config = dict(pipe.scheduler.config)
    return pipe


def _generate(pipe, seed=0, n=2, steps=4, output_type="latent", **kwargs):
    return pipe(
        "a photo of a red apple",
        num_inference_steps=steps,
        height=32,
        width=32,
        num_images_per_prompt=n,
        generator=torch.Generator().manual_seed(seed),
        output_type=output_type,
        max_sequence_length=32,
        **kwargs,
    ).images


@pytest.mark.parametrize("euler_config", sorted(REAL_EULER_CONFIGS))
def test_ode_linear_reproduces_flow_match_euler_in_the_pipeline(pipe, euler_config):
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(**REAL_EULER_CONFIGS[euler_config])
    reference = _generate(pipe)
    reference_images = _generate(pipe, output_type="pt")
    pipe.scheduler = FlowSDEScheduler.from_config(pipe.scheduler.config, sampler="ode", interpolant="linear")
    assert torch.equal(_generate(pipe), reference)  # bit for bit (float tolerance 0)
    assert torch.equal(_generate(pipe, output_type="pt"), reference_images)


@pytest.mark.parametrize("config", sorted(SDE_CONFIGS))
def test_runs_in_the_pipeline_seeded_by_its_generator(pipe, config):
    pipe.scheduler = FlowSDEScheduler.from_config(pipe.original_scheduler_config, **SDE_CONFIGS[config])
    runs = {}
    for seed in (1, 1, 2):
        pipe.scheduler.set_generator(torch.Generator().manual_seed(seed))
        runs.setdefault(seed, []).append(_generate(pipe, seed=0, output_type="pt"))
    first, again = runs[1]
    assert first.shape == (2, 3, 32, 32)
    assert torch.isfinite(first).all() and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)  # same seed -> same image
    if pipe.scheduler.config.sampler == "sde":
        assert not torch.equal(first, runs[2][0])  # different SDE seed -> different image
    else:
        assert torch.equal(first, runs[2][0])  # the ODE draws nothing
    assert not torch.equal(first[0], first[1])  # the two images of a batch differ


def test_without_a_generator_torch_manual_seed_makes_runs_reproducible(pipe):
    pipe.scheduler = FlowSDEScheduler.from_config(pipe.original_scheduler_config)
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outs.append(_generate(pipe))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_the_model_is_called_at_the_schedulers_timesteps_and_callbacks_see_tweedie(pipe):
    pipe.scheduler = FlowSDEScheduler.from_config(pipe.original_scheduler_config, time_grid="paper")
    pipe.scheduler.set_generator(torch.Generator().manual_seed(0))
    seen_timesteps, tweedies = [], []

    def record_timestep(module, args, kwargs):
        seen_timesteps.append(kwargs["timestep"][0].item())

    def on_step_end(p, i, t, callback_kwargs):
        x0 = p.scheduler.pred_original_sample
        assert x0.shape == callback_kwargs["latents"].shape
        tweedies.append(x0)
        return {}

    hook = pipe.transformer.register_forward_pre_hook(record_timestep, with_kwargs=True)
    try:
        latents = _generate(pipe, steps=5, callback_on_step_end=on_step_end)
    finally:
        hook.remove()
    scale = 1000 if "flux" in type(pipe).__name__.lower() else 1  # FluxPipeline passes timestep / 1000
    assert [t * scale for t in seen_timesteps] == pytest.approx(pipe.scheduler.timesteps.tolist(), rel=1e-6)
    assert seen_timesteps[0] * scale == pytest.approx(
        993.4712, rel=1e-6
    )  # the VP grid's s = 1 in linear time
    assert len(tweedies) == 5
    # time_grid="paper" ends on Tweedie's estimate at the last non-zero time (final_step="auto").
    assert torch.equal(latents, tweedies[-1])


def test_save_pretrained_round_trip(pipe, tmp_path):
    pipe.scheduler = FlowSDEScheduler.from_config(
        pipe.original_scheduler_config, interpolant="vp", diffusion_norm=1.5, time_grid="paper"
    )
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    assert isinstance(loaded.scheduler, FlowSDEScheduler)
    assert loaded.scheduler.config.diffusion_norm == 1.5 and loaded.scheduler.config.time_grid == "paper"
    outs = []
    for p in (pipe, loaded):
        p.scheduler.set_generator(torch.Generator().manual_seed(5))
        outs.append(_generate(p))
    # The reloaded SD3 text encoders differ from the built ones by ~2e-6 (also with FlowMatchEuler), so the
    # pipelines agree to 1e-4; the reloaded scheduler itself is checked bit for bit in the original pipeline.
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-4)
    original = pipe.scheduler
    pipe.scheduler = loaded.scheduler
    pipe.scheduler.set_generator(torch.Generator().manual_seed(5))
    assert torch.equal(_generate(pipe), outs[0])
    pipe.scheduler = original
