"""SMC's weighting options (potentials, initial weights, tempering): definitions replayed exactly from the traces of
`InferenceScaler(method="smc")` and `SMCCallback`, the released code's and FK steering's forms, and garbage knobs."""

from __future__ import annotations

import math

import pytest
import torch

from diffusers_ttsplugin import InferenceScaler, SMCCallback
from diffusers_ttsplugin.rewards import BrightnessReward
from diffusers_ttsplugin.search import SMCConfig, SMCState, plan_search
from diffusers_ttsplugin.search.demo import toy_problem
from diffusers_ttsplugin.search.smc import INITIAL_WEIGHTS, POTENTIALS, TEMPERING


def _reward(x, prompts):
    return -(x.double() ** 2).sum(1) / 4


def _ess(log_w: torch.Tensor) -> torch.Tensor:
    w = torch.exp(log_w - log_w.max(dim=-1, keepdim=True).values)
    return w.sum(-1) ** 2 / (w**2).sum(-1)


def _replay(config: SMCConfig, last: int, events: list[dict]) -> int:
    """Recompute weights from the recorded rewards with the definitions of the smc module's docstring, check every
    recorded ESS and resampling decision, and follow the recorded ancestors. Returns the resampling count."""
    lam = config.temperature
    rewards = events[0]["rewards"]
    beta = config.scale(0, last)
    stat = beta * rewards if config.potential == "difference" else rewards.clone()
    log_w = beta * rewards / lam if config.initial_weights == "reward" else torch.zeros_like(rewards)
    count = 0
    for k, event in enumerate(events):
        if k > 0:
            r, beta = event["rewards"], config.scale(k, last)
            if config.potential == "difference":
                log_g, stat = (beta * r - stat) / lam, beta * r
            else:
                stat = torch.maximum(stat, r) if config.potential == "max" else stat + r
                log_g = beta * stat / lam
            log_w = log_w + log_g
        ess = _ess(log_w)
        torch.testing.assert_close(torch.tensor(event["ess"], dtype=torch.float64), ess, rtol=1e-4, atol=1e-4)
        should = (ess < config.ess_threshold * log_w.shape[1]) & torch.tensor(k < last)
        assert event["resampled"] == should.tolist(), (config, k)
        for b in range(log_w.shape[0]):
            if event["resampled"][b]:
                count += 1
                ancestors = torch.tensor(event["ancestors"][b])
                stat[b], log_w[b] = stat[b, ancestors], 0.0
    return count


@pytest.mark.parametrize("tempering", TEMPERING)
@pytest.mark.parametrize("initial", INITIAL_WEIGHTS)
@pytest.mark.parametrize("potential", POTENTIALS)
def test_scaler_weights_follow_the_definitions(potential, initial, tempering):
    flow, _ = toy_problem()
    knobs = dict(potential=potential, initial_weights=initial, tempering=tempering, temperature=0.3)
    scaler = InferenceScaler(
        flow,
        _reward,
        method="smc",
        nfe_budget=160,
        num_steps=10,
        resampling="systematic",
        ess_threshold=0.6,
        **knobs,
    )
    scaler.set_progress_bar_config(disable=True)
    result = scaler("toy", generator=torch.Generator().manual_seed(0))
    records = [r for r in result.trace.for_prompt(0) if r.kind != "final"]
    assert [r.step for r in records] == list(range(10))
    events = [
        {
            "rewards": torch.tensor([r.rewards], dtype=torch.float64),
            "ess": [r.ess],
            "resampled": [r.resampled],
            "ancestors": [r.ancestors],
        }
        for r in records
    ]
    events_count = _replay(SMCConfig(resampling="systematic", ess_threshold=0.6, **knobs), 9, events)
    assert events_count == len(result.trace.resampling_events())
    for key, value in knobs.items():
        assert result.trace.settings[key] == value


def test_released_code_weights_are_exp_reward_until_the_first_resampling():
    """initial_weights="reward" with the difference potential: the product exp(r₀/λ) Π exp((r_k − r_{k−1})/λ) is
    exp(r_k / λ) until a resampling (the paper's released code); with "uniform" it is exp((r_k − r₀)/λ)."""
    g = torch.Generator().manual_seed(0)
    rewards = [torch.randn(2, 8, generator=g, dtype=torch.float64) for _ in range(4)]
    for initial, offset in (("reward", 0), ("uniform", 1)):
        config = SMCConfig(temperature=0.5, ess_threshold=0.0, initial_weights=initial)
        state = SMCState(config, 3, rewards[0])
        state.start()
        for k in range(1, 4):
            state.update(rewards[k], k)
            torch.testing.assert_close(state.log_weights, (rewards[k] - offset * rewards[0]) / 0.5)


@pytest.mark.parametrize("potential", ["max", "sum"])
def test_fk_terminal_correction_makes_the_path_product_exp_final_reward(potential):
    """FK steering: when the last step resamples, its potential is exp(r_H/λ) / Π_{k<H} G_k along the ancestry,
    so a particle's total weight is exp(β_H r_H / λ) however it got there."""
    g = torch.Generator().manual_seed(1)
    rewards = [torch.randn(1, 6, generator=g, dtype=torch.float64) for _ in range(5)]
    config = SMCConfig(temperature=0.25, ess_threshold=0.0, potential=potential, initial_weights="reward")
    state = SMCState(config, 4, rewards[0], resample_last=True)
    state.start()
    for k in range(1, 5):
        state.update(rewards[k], k)
    torch.testing.assert_close(state._log_product, rewards[4] / 0.25)
    # Without the terminal step resampling, the max potential's last weight is the running max itself.
    plain = SMCState(config, 4, rewards[0])
    for k in range(1, 5):
        plain.update(rewards[k], k)
    stats = torch.stack(rewards).cummax(0).values if potential == "max" else torch.stack(rewards).cumsum(0)
    torch.testing.assert_close(plain.log_weights, stats.sum(0) / 0.25)


def test_tempering_schedules():
    assert [SMCConfig().scale(k, 4) for k in range(5)] == [1.0] * 5
    linear = SMCConfig(tempering="linear")
    assert [linear.scale(k, 4) for k in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    exponential = SMCConfig(tempering="exponential")
    values = [exponential.scale(k, 4) for k in range(5)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(1.0) and values == sorted(values)
    assert values[2] == pytest.approx(2 ** (2 / 4) - 1)  # (1 + γ)^k − 1 with γ = 2^{1/H} − 1
    das = SMCConfig(tempering="exponential", tempering_gamma=0.5)
    assert [das.scale(k, 10) for k in range(3)] == [0.0, 0.5, 1.0]  # DAS: min(1, (1 + γ)^k − 1)
    assert SMCConfig(tempering="linear", tempering_gamma=0.4).scale(2, 10) == pytest.approx(0.8)


def test_rejected_particles_keep_weight_zero_under_every_potential():
    rewards0 = torch.tensor([[0.0, -math.inf, 1.0]], dtype=torch.float64)
    for potential in POTENTIALS:
        for initial in INITIAL_WEIGHTS:
            config = SMCConfig(potential=potential, initial_weights=initial, tempering="linear")
            state = SMCState(config, 3, rewards0)
            state.start()
            state.update(torch.tensor([[0.5, 2.0, -math.inf]], dtype=torch.float64), 1)
            assert state.log_weights[0, 1] == -math.inf and state.log_weights[0, 2] == -math.inf
            assert math.isfinite(float(state.log_weights[0, 0]))
    with pytest.raises(ValueError, match="weight zero"):
        state.update(torch.full((1, 3), -math.inf, dtype=torch.float64), 2)


def test_callback_uses_the_same_smc_step():
    """SMCCallback with FK's max potential and the released code's start: its trace replays with the same
    definitions as the scaler's."""
    from diffusers_ttsplugin import FlowSDEScheduler
    from diffusers_ttsplugin.rewards import ColorReward
    from diffusers_ttsplugin.testing import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = FlowSDEScheduler.from_config(pipe.scheduler.config, sampler="sde", interpolant="vp")
    pipe.scheduler.set_generator(torch.Generator().manual_seed(0))
    knobs = dict(temperature=2e-4, potential="max", initial_weights="reward", tempering="exponential")
    smc = SMCCallback(
        ColorReward((1, 0, 0)), prompt=["a", "b"], generator=torch.Generator().manual_seed(0), **knobs
    )
    pipe(
        ["a", "b"],
        num_inference_steps=5,
        num_images_per_prompt=4,
        callback_on_step_end=smc,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        height=32,
        width=32,
        max_sequence_length=32,
    )
    events = [{**r, "rewards": torch.tensor(r["rewards"], dtype=torch.float64)} for r in smc.trace]
    assert _replay(SMCConfig(**knobs), 4, events) >= 1


GARBAGE = [
    ("temperature", 0),
    ("temperature", -1.0),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", "0.1"),
    ("temperature", True),
    ("ess_threshold", -0.1),
    ("ess_threshold", 1.5),
    ("ess_threshold", math.nan),
    ("resampling", "best"),
    ("potential", "diff"),
    ("potential", 3),
    ("initial_weights", "ones"),
    ("tempering", "cosine"),
    ("tempering_gamma", 0.0),
    ("tempering_gamma", -0.5),
    ("tempering_gamma", math.nan),
    ("tempering_gamma", "fast"),
]


@pytest.mark.parametrize(("name", "value"), GARBAGE, ids=[f"{n}={v!r}" for n, v in GARBAGE])
def test_garbage_knobs_are_rejected_everywhere(name, value):
    extra = {"tempering": "linear"} if name == "tempering_gamma" else {}
    with pytest.raises(ValueError, match=name):
        SMCConfig(**{name: value, **extra})
    with pytest.raises(ValueError, match=name):
        plan_search("smc", 100, 10, **{name: value, **extra})
    flow, reward = toy_problem()
    with pytest.raises(ValueError, match=name):
        InferenceScaler(flow, reward, method="smc", nfe_budget=100, **{name: value, **extra})
    with pytest.raises(ValueError, match=name):
        SMCCallback(BrightnessReward(), **{name: value, **extra})


def test_gamma_without_tempering_and_knobs_of_other_methods():
    with pytest.raises(ValueError, match="tempering_gamma"):
        SMCConfig(tempering_gamma=0.1)
    with pytest.raises(ValueError, match="`potential` does not apply to method 'rbf'"):
        plan_search("rbf", 100, 10, potential="max")
