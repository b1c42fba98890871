"""InferenceScaler and SMCCallback on the real tiny FluxPipeline and StableDiffusion3Pipeline.

NFE are counted independently by wrapping the transformer's forward: one NFE is one particle's velocity, so FLUX
runs exactly NFE transformer rows and SD3 with classifier-free guidance exactly 2 × NFE.
"""

from __future__ import annotations

import pytest
import torch

from diffusers_ttsplugin import FlowSDEScheduler, InferenceScaler, SMCCallback
from diffusers_ttsplugin.rewards import BrightnessReward, ColorReward
from diffusers_ttsplugin.search import METHODS
from diffusers_ttsplugin.testing import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

OPTIONS = {"height": 32, "width": 32, "max_sequence_length": 32}
PROMPT = "a photo of a red apple"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RowCounter:
    """Wraps `pipe.transformer.forward` and records the batch size of every call."""

    def __init__(self, pipe):
        self.rows: list[int] = []
        original = pipe.transformer.forward

        def counting(*args, **kwargs):
            self.rows.append(kwargs["hidden_states"].shape[0])
            return original(*args, **kwargs)

        pipe.transformer.forward = counting

    def reset(self):
        self.rows.clear()


@pytest.fixture(scope="module")
def flux():
    pipe = build_tiny_flux_pipeline()
    return pipe, RowCounter(pipe)


@pytest.fixture(scope="module")
def sd3():
    pipe = build_tiny_sd3_pipeline()
    return pipe, RowCounter(pipe)


def _scaler(pipe, method, budget=24, steps=3, reward=None, **kwargs):
    scaler = InferenceScaler(
        pipe, reward or BrightnessReward(), method=method, nfe_budget=budget, num_steps=steps, **kwargs
    )
    scaler.set_progress_bar_config(disable=True)
    return scaler


@pytest.mark.parametrize("method", METHODS)
def test_flux_every_method(flux, method):
    pipe, counter = flux
    counter.reset()
    scaler = _scaler(pipe, method, max_batch_size=5)
    result = scaler(PROMPT, generator=torch.Generator().manual_seed(0), **OPTIONS)
    nfe = int(result.nfe[0])
    assert nfe == scaler.plan.nfe <= 24 and sum(counter.rows) == nfe == result.transformer_rows
    assert max(counter.rows) <= 5
    assert len(result.images) == 1 and result.images[0].size == (32, 32)
    assert float(result.reward[0]) == pytest.approx(
        float(BrightnessReward()(scaler.adapter.decode(result.latents), [PROMPT])[0]), abs=1e-5
    )


@pytest.mark.parametrize("method", METHODS)
def test_sd3_every_method_with_cfg(sd3, method):
    pipe, counter = sd3
    counter.reset()
    scaler = _scaler(pipe, method, max_batch_size=6)
    result = scaler(
        PROMPT, generator=torch.Generator().manual_seed(0), guidance_scale=5.0, output_type="pt", **OPTIONS
    )
    nfe = int(result.nfe[0])
    # Classifier-free guidance: one NFE = one guided velocity = two transformer rows.
    assert nfe == scaler.plan.nfe <= 24 and sum(counter.rows) == 2 * nfe == result.transformer_rows
    assert max(counter.rows) <= 6 and all(rows % 2 == 0 for rows in counter.rows)
    assert (
        result.images.shape == (1, 3, 32, 32)
        and 0 <= float(result.images.min()) <= float(result.images.max()) <= 1
    )


def test_sd3_without_cfg_is_one_row_per_nfe(sd3):
    pipe, counter = sd3
    counter.reset()
    result = _scaler(pipe, "bon", 8, 4)(PROMPT, guidance_scale=1.0, output_type="latent", **OPTIONS)
    assert sum(counter.rows) == int(result.nfe[0]) == 8 and result.images.shape == (1, 4, 32, 32)


def test_flux_true_cfg_counts_two_rows_per_nfe(flux):
    pipe, counter = flux
    counter.reset()
    result = _scaler(pipe, "svdd", 12, 3)(
        PROMPT, negative_prompt="blurry", true_cfg_scale=2.0, output_type="latent", **OPTIONS
    )
    assert sum(counter.rows) == 2 * int(result.nfe[0]) == 2 * 12 == result.transformer_rows


def test_prompts_are_encoded_once(flux):
    pipe, _ = flux
    calls = []
    original = pipe.encode_prompt

    def counting(*args, **kwargs):
        calls.append(kwargs.get("prompt"))
        return original(*args, **kwargs)

    pipe.encode_prompt = counting
    try:
        result = _scaler(pipe, "rbf")([PROMPT, "a blue car"], **OPTIONS)
    finally:
        pipe.encode_prompt = original
    assert calls == [[PROMPT, "a blue car"]] and result.nfe.tolist() == [24, 24] and len(result.images) == 2


@pytest.mark.parametrize("build", [build_tiny_flux_pipeline, build_tiny_sd3_pipeline])
def test_bon_ode_with_one_particle_is_the_pipeline(build):
    pipe = build()
    steps = 4
    scaler = _scaler(pipe, "bon", steps, steps, final_step="integrate", time_grid="pipeline")
    result = scaler(PROMPT, generator=torch.Generator().manual_seed(7), output_type="pt", **OPTIONS)
    reference = pipe(
        PROMPT,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(7),
        output_type="pt",
        **OPTIONS,
    ).images
    assert torch.allclose(result.images, reference, atol=1e-4)


def test_flux_seeds_reproduce(flux):
    pipe, _ = flux
    scaler = _scaler(pipe, "smc", 12, 3)
    a = scaler(PROMPT, generator=torch.Generator().manual_seed(1), output_type="latent", **OPTIONS)
    b = scaler(PROMPT, generator=torch.Generator().manual_seed(1), output_type="latent", **OPTIONS)
    c = scaler(PROMPT, generator=torch.Generator().manual_seed(2), output_type="latent", **OPTIONS)
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents)


def test_bad_pipeline_options(flux):
    pipe, _ = flux
    scaler = _scaler(pipe, "bon", 8, 4)
    with pytest.raises(TypeError, match="cannot be used with the search"):
        scaler(PROMPT, latents=torch.zeros(1), **OPTIONS)
    with pytest.raises(TypeError, match="unexpected FluxPipeline option"):
        scaler(PROMPT, strength=0.5, **OPTIONS)
    with pytest.raises(ValueError, match="divisible"):
        scaler(PROMPT, height=33, width=32)


# ---------------------------------------------------------------------------------------------------------------
# Zero-code SMC


@pytest.mark.parametrize("build", [build_tiny_flux_pipeline, build_tiny_sd3_pipeline])
def test_smc_callback_resamples_inside_the_pipeline(build):
    pipe = build()
    pipe.scheduler = FlowSDEScheduler.from_config(pipe.scheduler.config, sampler="sde", interpolant="vp")
    pipe.scheduler.set_generator(torch.Generator().manual_seed(0))
    counter = RowCounter(pipe)
    # A huge weight on small reward differences forces resampling at every step.
    smc = SMCCallback(
        ColorReward((1, 0, 0)),
        prompt=[PROMPT, "a dog"],
        temperature=1e-6,
        generator=torch.Generator().manual_seed(0),
    )
    steps, n = 5, 3
    images = pipe(
        [PROMPT, "a dog"],
        num_inference_steps=steps,
        num_images_per_prompt=n,
        callback_on_step_end=smc,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        guidance_scale=1.0,
        **OPTIONS,
    ).images
    assert images.shape == (6, 3, 32, 32)
    assert sum(counter.rows) == steps * 6  # no extra NFE
    assert [r["step"] for r in smc.trace] == [0, 1, 2, 3, 4]
    resampled = [r for r in smc.trace if any(r.get("resampled", []))]
    # Not at step 0 (no weights yet), not at step 2 (the copies made at step 1 share one x̂₀, so equal weights), not
    # at the last step.
    assert [r["step"] for r in resampled] == [1, 3]
    assert smc.trace[2]["ess"] == pytest.approx([n, n])
    # Replay the definitions: log w += (r_i - r_{i-1}) / λ; the weights are ~one-hot, so every particle of a
    # resampled group descends from the argmax of its own group's log weights.
    log_w = torch.zeros(2, n)
    previous = torch.tensor(smc.trace[0]["rewards"])
    for record in smc.trace[1:]:
        rewards = torch.tensor(record["rewards"])
        log_w += (rewards - previous) / 1e-6
        previous = rewards.clone()
        for group in range(2):
            if record["resampled"][group]:
                assert set(record["ancestors"][group]) == {int(log_w[group].argmax())}
                previous[group] = rewards[group, record["ancestors"][group]]
                log_w[group] = 0
    assert len(smc.best_indices()) == 2 and smc.best_indices()[1] >= 3


def test_smc_callback_needs_an_sde_scheduler(flux):
    pipe, _ = flux
    with pytest.raises(ValueError, match="FlowSDEScheduler"):
        pipe(
            PROMPT,
            num_inference_steps=2,
            num_images_per_prompt=2,
            callback_on_step_end=SMCCallback(BrightnessReward()),
            **OPTIONS,
        )
    with pytest.raises(ValueError, match="temperature"):
        SMCCallback(BrightnessReward(), temperature=0)
    with pytest.raises(ValueError, match="resampling"):
        SMCCallback(BrightnessReward(), resampling="best")
