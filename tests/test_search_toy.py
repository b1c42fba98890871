"""InferenceScaler on the analytic flow: exact NFE, selections that follow the definitions, seeds, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from diffusers_ttsplugin import InferenceScaler
from diffusers_ttsplugin.rewards import MixtureModeReward
from diffusers_ttsplugin.search import METHODS, FlowAdapter, VelocityAdapter
from diffusers_ttsplugin.search.demo import toy_problem
from diffusers_ttsplugin.toy import AnalyticFlow, default_mixture

SAMPLERS = {
    "ode": {"sampler": "ode", "interpolant": "linear"},
    "linear-sde": {"sampler": "sde", "interpolant": "linear"},
    "vp-sde": {"sampler": "sde", "interpolant": "vp"},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problem():
    return toy_problem()


def _scaler(flow, reward, method, budget=48, steps=4, **kwargs):
    scaler = InferenceScaler(flow, reward, method=method, nfe_budget=budget, num_steps=steps, **kwargs)
    scaler.set_progress_bar_config(disable=True)
    return scaler


def _run(scaler, prompt="toy", seed=0, **kwargs):
    return scaler(prompt, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget,steps", [(48, 4), (100, 10)])
def test_every_method_runs_within_budget(problem, method, sampler, budget, steps):
    flow, reward = problem
    scaler = _scaler(flow, reward, method, budget, steps, **SAMPLERS[sampler])
    flow.nfe = 0
    result = _run(scaler)
    # The flow counts its own evaluations: the scaler's ledger is exact and within budget.
    assert int(result.nfe[0]) == flow.nfe == scaler.plan.nfe <= budget
    assert result.latents.shape == (1, 2) and result.images.shape == (1, 2)
    assert 0.0 <= float(result.reward[0]) <= 1.0
    assert result.trace.nfe == [flow.nfe] and result.trace.final_rewards == result.reward.tolist()
    final = [r for r in result.trace.records if r.kind == "final"]
    assert len(final) == 1 and final[0].rewards[final[0].selected[0]] == pytest.approx(
        float(result.reward[0])
    )


def test_rbf_spends_the_budget_exactly(problem):
    flow, reward = problem
    for budget in (41, 100, 333):
        flow.nfe = 0
        result = _run(_scaler(flow, reward, "rbf", budget, 10))
        assert int(result.nfe[0]) == flow.nfe == budget


def test_reward_is_the_reward_of_the_returned_sample(problem):
    flow, reward = problem
    for final_step in ("tweedie", "integrate"):
        for method in METHODS:
            result = _run(_scaler(flow, reward, method, final_step=final_step))
            assert float(result.reward[0]) == pytest.approx(
                float(reward(result.latents, ["toy"])[0]), abs=1e-6
            )


def test_bon_returns_the_argmax(problem):
    flow, _ = problem
    seen = []

    def reward(x, prompts):
        values = -((x[:, 0] - 0.5) ** 2)
        seen.append((x.clone(), values))
        return values

    result = _run(_scaler(flow, reward, "bon", 40, 4))  # 10 trajectories
    ((candidates, values),) = seen  # BoN scores once: the final Tweedie estimates of all 10 particles
    assert candidates.shape == (10, 2)
    best = int(values.argmax())
    assert torch.equal(result.latents[0], candidates[best]) and float(result.reward[0]) == float(values[best])
    record = result.trace.for_prompt(0)[-1]
    assert record.kind == "final" and record.selected == [best] and len(record.rewards) == 10


def test_svdd_keeps_the_best_proposal_each_step(problem):
    flow, reward = problem
    result = _run(_scaler(flow, reward, "svdd", 100, 10, **SAMPLERS["linear-sde"]))
    selects = [r for r in result.trace.records if r.kind == "select"]
    assert len(selects) == 9 * 2  # every search step, both chains
    for record in selects:
        assert record.selected == [max(range(len(record.rewards)), key=record.rewards.__getitem__)]


def test_smc_resampling_events_follow_the_ess_rule():
    flow, _ = toy_problem()
    threshold, n, lam = 0.6, 16, 0.05

    def reward(x, prompts):
        return -(x**2).sum(1) / 4

    scaler = _scaler(
        flow, reward, "smc", n * 10, 10, temperature=lam, ess_threshold=threshold, resampling="systematic"
    )
    result = _run(scaler)
    records = result.trace.for_prompt(0)
    assert records[0].kind == "init" and len(records[0].rewards) == n
    log_w = torch.zeros(n)
    previous = torch.tensor(records[0].rewards)
    events = 0
    for record in records[1:-1]:
        rewards = torch.tensor(record.rewards)
        log_w = log_w + (rewards - previous) / lam
        w = torch.exp(log_w - log_w.max())
        ess = float(w.sum() ** 2 / (w**2).sum())
        assert record.ess == pytest.approx(ess, rel=1e-4)
        should = ess < threshold * n and record.step < 9
        assert record.resampled == should, record.step
        if should:
            events += 1
            ancestors = torch.tensor(record.ancestors)
            assert sorted(set(ancestors.tolist())) == sorted(set(ancestors.tolist()) & set(range(n)))
            previous = rewards[ancestors]
            log_w = torch.zeros(n)
        else:
            previous = rewards
    assert events >= 1 and len(result.trace.resampling_events()) == events


def test_seeds_make_runs_reproducible(problem):
    flow, reward = problem
    for method in METHODS:
        scaler = _scaler(flow, reward, method, 60, 5)
        a, b, c = _run(scaler, seed=3), _run(scaler, seed=3), _run(scaler, seed=4)
        assert torch.equal(a.latents, b.latents) and a.trace.to_json() == b.trace.to_json()
        if method not in ("bon", "sop"):  # particle methods are stochastic: another seed, another sample
            assert not torch.equal(a.latents, c.latents)
    torch.manual_seed(11)
    first = _scaler(flow, reward, "rbf")("toy").latents
    torch.manual_seed(11)
    assert torch.equal(first, _scaler(flow, reward, "rbf")("toy").latents)


def test_several_prompts_get_their_own_budget():
    mix = default_mixture(2)
    calls = []

    def velocity(x, t, prompts):
        calls.append(list(prompts))
        return mix.velocity(x, t)

    adapter = VelocityAdapter(velocity, (2,), conditioned=True)
    scaler = _scaler(adapter, MixtureModeReward(mix, 3), "rbf", 30, 5)
    result = _run(scaler, prompt=["a", "b", "c"])
    assert (
        result.nfe.tolist() == [30, 30, 30] and result.reward.shape == (3,) and result.latents.shape == (3, 2)
    )
    rows = [p for call in calls for p in call]
    assert rows.count("a") == rows.count("b") == rows.count("c") == 30
    assert {r.prompt for r in result.trace.records} == {0, 1, 2}


def test_max_batch_size_limits_each_velocity_call(problem):
    flow, reward = problem
    sizes = []

    def velocity(x, t):
        sizes.append(x.shape[0])
        return flow.mixture.velocity(x, t)

    adapter = VelocityAdapter(velocity, (2,), max_batch_size=7)
    result = _run(_scaler(adapter, reward, "bon", 100, 5))
    assert max(sizes) == 7 and sum(sizes) == int(result.nfe[0]) == 100


def test_callback_sees_every_record(problem):
    flow, reward = problem
    seen = []
    scaler = _scaler(flow, reward, "rbf", callback=lambda s, record: seen.append(record))
    result = _run(scaler)
    assert seen == result.trace.records and seen[-1].kind == "final"
    assert sum(1 for r in seen if r.kind == "propose") == 48 - 2 * scaler.plan.init_particles


def test_trace_records_rbf_bookkeeping(problem, tmp_path):
    flow, reward = problem
    result = _run(_scaler(flow, reward, "rbf", 100, 10))
    proposals = [r for r in result.trace.records if r.kind == "propose"]
    assert {r.action for r in proposals} <= {"accept", "continue", "exhausted", "final", "done"}
    for chain in (0, 1):
        mine = [r for r in proposals if r.chain == chain]
        assert sum(1 for _ in mine) == result.trace.settings["chain_budgets"][chain]
        assert mine[-1].action == "done"
        for r in mine:
            assert 1 <= r.used <= r.quota
            if r.action == "accept":
                assert r.rollover == r.quota - r.used
    path = tmp_path / "t.json"
    result.trace.to_json(path)
    assert path.stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_construction(problem):
    flow, reward = problem
    with pytest.raises(ValueError, match="unknown method 'best'"):
        InferenceScaler(flow, reward, method="best")
    with pytest.raises(ValueError, match="smaller than method 'smc' needs"):
        InferenceScaler(flow, reward, method="smc", nfe_budget=9, num_steps=10)
    with pytest.raises(TypeError, match="callable"):
        InferenceScaler(flow, "jpeg")
    with pytest.raises(ValueError, match="final_step"):
        InferenceScaler(flow, reward, final_step="last")
    with pytest.raises(ValueError, match="sampler"):
        InferenceScaler(flow, reward, sampler="euler")
    with pytest.raises(ValueError, match="diffusion_norm"):
        InferenceScaler(flow, reward, diffusion_norm=-1.0)
    with pytest.raises(ValueError, match="nonfinite_rewards"):
        InferenceScaler(flow, reward, nonfinite_rewards="skip")
    with pytest.raises(ValueError, match="max_batch_size"):
        InferenceScaler(flow, reward, max_batch_size=0)
    with pytest.raises(TypeError, match="no search adapter"):
        InferenceScaler(object(), reward)


def test_bad_call(problem):
    flow, reward = problem
    scaler = _scaler(flow, reward, "bon")
    with pytest.raises(ValueError, match="prompt"):
        scaler([])
    with pytest.raises(ValueError, match="generator"):
        scaler("x", generator=123)
    with pytest.raises(ValueError, match="output_type"):
        scaler("x", output_type="jpg")
    with pytest.raises(ValueError, match="num_steps"):
        scaler("x", num_inference_steps=7)
    with pytest.raises(TypeError, match="unexpected call options"):
        scaler("x", height=32)


@pytest.mark.parametrize("method", METHODS)
def test_reward_with_the_wrong_shape(problem, method):
    flow, _ = problem
    scaler = _scaler(flow, lambda x, p: torch.zeros(len(x), 1), method)
    with pytest.raises(ValueError, match=rf"one score per image.*{method}"):
        _run(scaler)


@pytest.mark.parametrize("method", METHODS)
def test_nan_rewards_raise_by_default_and_are_rejected_on_request(problem, method):
    flow, reward = problem

    def sometimes_nan(x, prompts):
        values = reward(x, prompts).clone()
        values[::2] = math.nan  # every other candidate of every call is broken
        return values

    with pytest.raises(ValueError, match="NaN"):
        _run(_scaler(flow, sometimes_nan, method))
    result = _run(_scaler(flow, sometimes_nan, method, nonfinite_rewards="reject"))
    assert math.isfinite(float(result.reward[0]))
    final = result.trace.for_prompt(0)[-1]
    assert final.kind == "final" and final.rewards[final.selected[0]] == float(result.reward[0])


@pytest.mark.parametrize("method", METHODS)
def test_infinite_rewards(problem, method):
    flow, _ = problem
    with pytest.raises(ValueError, match=r"\+inf"):
        _run(_scaler(flow, lambda x, p: torch.full((len(x),), math.inf), method, nonfinite_rewards="reject"))
    with pytest.raises(ValueError, match="finite reward|weight zero"):
        _run(_scaler(flow, lambda x, p: torch.full((len(x),), -math.inf), method))


def test_custom_adapter_is_one_small_class(problem):
    flow, reward = problem

    class Shifted(FlowAdapter):
        def prepare(self, prompts, **options):
            super().prepare(prompts, **options)
            self.latent_shape = (2,)

        def _velocity(self, x, t, prompt_index):
            return flow.mixture.velocity(x, t)

    result = _run(_scaler(Shifted(), reward, "svdd"))
    assert int(result.nfe[0]) == 48 and result.latents.shape == (1, 2)


def test_analytic_flow_object_is_adapted_directly():
    mix = default_mixture(3)
    result = _run(_scaler(AnalyticFlow(mix), MixtureModeReward(mix, 3), "code", 60, 5), output_type="latent")
    assert result.images.shape == (1, 3)


def test_decoder_and_output_types(problem):
    flow, _ = problem

    def decoder(x):  # a 2-D point as a 4x4 RGB image
        return torch.sigmoid(x).mean(1).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)

    adapter = VelocityAdapter(flow.mixture.velocity, (2,), decoder=decoder)
    scaler = _scaler(adapter, lambda images, prompts: images.mean(dim=(1, 2, 3)), "svdd")
    pil = _run(scaler, output_type="pil").images
    array = _run(scaler, output_type="np").images
    tensor = _run(scaler, output_type="pt").images
    assert pil[0].size == (4, 4) and array.shape == (1, 4, 4, 3) and tensor.shape == (1, 3, 4, 4)
    assert abs(float(array[0, 0, 0, 0]) - float(tensor[0, 0, 0, 0])) < 1e-6
