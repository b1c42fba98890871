"""Rewards and the search's comparisons keep float64 (or log-space) precision: nothing underflows to a tie.

The analytic flow's mode reward is a probability that is ~1e-49 at high noise (float32's smallest subnormal is
1.4e-45), and a reward may legitimately differ between candidates only below float32's resolution. Every
comparison the search makes (best of K, RBF's "beats r*", SMC's weights) must see the difference.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusers_ttsplugin import InferenceScaler
from diffusers_ttsplugin.rewards import AnalyticTargetReward, MixtureModeReward, check_rewards
from diffusers_ttsplugin.search.demo import toy_problem


@pytest.fixture(scope="module")
def problem():
    return toy_problem()


def _scaler(flow, reward, method, budget, steps, **kwargs):
    scaler = InferenceScaler(flow, reward, method=method, nfe_budget=budget, num_steps=steps, **kwargs)
    scaler.set_progress_bar_config(disable=True)
    return scaler


def _first_grid_tweedie(flow, num=256, t=0.99347):
    """Tweedie estimates E[x0 | x_t] of prior draws at the first grid time of the VP sampler (linear t)."""
    noise = torch.randn(num, 2, generator=torch.Generator().manual_seed(0))
    return flow.mixture.posterior_mean(noise, t)


def test_mode_reward_does_not_underflow_at_the_first_grid_point(problem):
    flow, reward = problem
    x0 = _first_grid_tweedie(flow)
    values = reward(x0, [""] * len(x0))
    assert values.dtype == torch.float64
    exact = flow.mixture.posterior(x0.double(), 0.0).responsibilities[:, reward.component]
    assert bool((exact < 1e-45).all())  # the regime float32 cannot represent
    assert bool((values > 0).all())
    torch.testing.assert_close(values, exact, rtol=1e-9, atol=0.0)
    assert len(set(values.tolist())) == len(values)  # no ties: a best-of-K has a unique winner


def test_mode_log_reward_is_exact_far_from_the_mode(problem):
    flow, _ = problem
    mixture = flow.mixture
    log_reward = MixtureModeReward(mixture, 3, log=True)
    far = torch.tensor([[40.0, 40.0], [3.0, 0.0], [0.0, 0.0]])
    values = log_reward(far, ["", "", ""])
    assert values.dtype == torch.float64 and bool(torch.isfinite(values).all())
    # log P(k | x) = log w_k + log N_k(x) - log p(x), all in float64 and without exponentiating.
    post = mixture.posterior(far.double(), 0.0)
    assert values[0] < -1000.0  # a clamp at 1e-300 would stop at -690.8
    torch.testing.assert_close(values[1:], post.responsibilities[1:, 3].log(), rtol=1e-9, atol=1e-9)


def test_analytic_target_reward_keeps_far_points_apart():
    reward = AnalyticTargetReward([0.0, 0.0], bandwidth=0.1)
    values = reward(torch.tensor([[5.0, 0.0], [5.1, 0.0]]), ["", ""])
    assert values.dtype == torch.float64 and bool((values > 0).all()) and values[0] > values[1]


def test_check_rewards_keeps_float64():
    values = [1e-50, 2e-50, 1.0 - 1e-12, 1.0, -math.inf]
    out = check_rewards(values, 5)
    assert out.dtype == torch.float64 and out.tolist() == values
    assert check_rewards(torch.tensor([1e-50, 2e-50], dtype=torch.float64), 2).tolist() == [1e-50, 2e-50]
    assert check_rewards(torch.tensor([0.5, 0.25]), 2).dtype == torch.float64  # float32 in, exact float64 out


def _tiny(x, prompts):
    """A reward whose values differ only far below float32's range: 1e-60 · (1 + the first coordinate's rank)."""
    order = x[:, 0].double().argsort().argsort().double()
    return 1e-60 * (1.0 + order)


def test_best_of_k_selections_see_differences_below_float32(problem):
    flow, _ = problem
    bon = _scaler(flow, _tiny, "bon", 40, 4)(["toy"], generator=torch.Generator().manual_seed(0))
    final = bon.trace.for_prompt(0)[-1]
    assert final.selected == [max(range(10), key=final.rewards.__getitem__)] and final.selected != [0]
    assert float(bon.reward[0]) == max(final.rewards) == 1e-59
    svdd = _scaler(flow, _tiny, "svdd", 100, 5, sampler="sde", interpolant="linear")
    result = svdd(["toy"], generator=torch.Generator().manual_seed(0))
    selects = [r for r in result.trace.records if r.kind in ("init", "select")]
    for record in selects:
        assert record.selected == [max(range(len(record.rewards)), key=record.rewards.__getitem__)]
    assert any(record.selected != [0] for record in selects)


def test_rbf_compares_against_r_star_in_float64(problem):
    flow, reward = problem
    result = _scaler(flow, reward, "rbf", 200, 10)(["toy"], generator=torch.Generator().manual_seed(0))
    records = result.trace.for_prompt(0)
    for record in (r for r in records if r.kind == "init"):
        assert all(v > 0 for v in record.rewards)  # float32 made every one of these exactly 0
    best = {r.chain: r.rewards[r.selected[0]] for r in records if r.kind == "init"}
    for record in (r for r in records if r.kind == "propose"):
        if record.action == "accept":
            assert record.rewards[0] > best[record.chain]
            best[record.chain] = record.rewards[0]
        elif record.action in ("continue", "exhausted"):
            assert record.rewards[0] <= best[record.chain]


def test_smc_weights_see_differences_below_float32(problem):
    flow, _ = problem

    def reward(x, prompts):
        return -1e-50 * (x.double() ** 2).sum(1)

    lam = 1e-51
    result = _scaler(flow, reward, "smc", 160, 10, temperature=lam, resampling="systematic")(
        ["toy"], generator=torch.Generator().manual_seed(0)
    )
    records = result.trace.for_prompt(0)
    previous = torch.tensor(records[0].rewards, dtype=torch.float64)
    log_w = torch.zeros(16, dtype=torch.float64)
    for record in records[1:-1]:
        rewards = torch.tensor(record.rewards, dtype=torch.float64)
        log_w = log_w + (rewards - previous) / lam
        w = torch.exp(log_w - log_w.max())
        assert record.ess == pytest.approx(float(w.sum() ** 2 / (w**2).sum()), rel=1e-4)
        if record.resampled:
            previous, log_w = rewards[torch.tensor(record.ancestors)], torch.zeros(16, dtype=torch.float64)
        else:
            previous = rewards
    assert len(result.trace.resampling_events()) >= 1  # in float32 every weight was exp(0): never resampled
