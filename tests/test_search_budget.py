"""Pure arithmetic of the search: NFE plans, Rollover Budget Forcing (Algorithm 2), SMC weights/ESS, traces."""

from __future__ import annotations

import math

import pytest
import torch

from diffusers_ttsplugin.search import (
    METHODS,
    NFELedger,
    RolloverBudgetForcing,
    SearchTrace,
    StepRecord,
    effective_sample_size,
    plan_search,
    plot_reward_vs_nfe,
    resample,
    update_log_weights,
)
from diffusers_ttsplugin.search.budget import BudgetExceededError, split_evenly

# ---------------------------------------------------------------------------------------------------------------
# Plans


def test_paper_settings_at_500_nfe():
    plans = {m: plan_search(m, 500, 10) for m in METHODS}
    assert plans["bon"].num_particles == 50 and plans["bon"].nfe == 500
    assert plans["smc"].num_particles == 50 and plans["smc"].ess_threshold == 0.5
    assert plans["smc"].resampling == "multinomial"
    assert (plans["svdd"].num_chains, plans["svdd"].num_proposals, plans["svdd"].init_particles) == (
        2,
        25,
        25,
    )
    assert plans["svdd"].block_size == 1 and plans["svdd"].nfe == 500
    assert (plans["code"].num_chains, plans["code"].num_proposals, plans["code"].block_size) == (2, 25, 2)
    assert plans["rbf"].num_chains == 2 and plans["rbf"].init_particles == 25
    # Q = (500 - 2 * 25) / (9 search steps * 2 chains) = 25 per chain and step, spent exactly.
    assert plans["rbf"].chain_budgets == (225, 225) and plans["rbf"].nfe == 500
    assert plans["sop"].num_chains == 2 and plans["sop"].nfe <= 500


@pytest.mark.parametrize(
    "budget,steps", [(48, 4), (20, 10), (50, 10), (100, 10), (200, 10), (501, 10), (7, 3)]
)
@pytest.mark.parametrize("method", [m for m in METHODS if m != "sop"])
def test_defaults_scale_down_and_never_exceed(method, budget, steps):
    plan = plan_search(method, budget, steps)
    assert 0 < plan.nfe <= budget
    if method == "rbf":
        assert (
            plan.nfe == budget and sum(plan.chain_budgets) + plan.num_chains * plan.init_particles == budget
        )


@pytest.mark.parametrize("budget,steps", [(48, 4), (50, 10), (100, 10), (500, 10), (12, 3)])
def test_sop_fits(budget, steps):
    plan = plan_search("sop", budget, steps)
    seed, f, c, k = plan.seed_steps, plan.forward_steps, plan.num_chains, plan.num_proposals
    assert plan.nfe == c * seed + c * k * (f + 2) * (plan.search_steps - seed) <= budget


def test_budget_smaller_than_the_steps_need():
    with pytest.raises(ValueError, match="smaller than method 'bon' needs: 10 NFE"):
        plan_search("bon", 9, 10)
    with pytest.raises(ValueError, match="smaller than method 'rbf'"):
        plan_search("rbf", 5, 10)
    with pytest.raises(ValueError, match="smaller than method 'svdd'"):
        plan_search("svdd", 100, 10, num_chains=2, num_proposals=10)
    with pytest.raises(ValueError, match="smaller than method 'sop'"):
        plan_search("sop", 20, 10)


def test_bad_knobs():
    with pytest.raises(ValueError, match="unknown method 'beam'"):
        plan_search("beam", 100, 10)
    with pytest.raises(ValueError, match="`block_size` does not apply to method 'rbf'"):
        plan_search("rbf", 100, 10, block_size=3)
    with pytest.raises(ValueError, match="`num_particles` must be an int >= 1"):
        plan_search("bon", 100, 10, num_particles=0)
    with pytest.raises(ValueError, match="`num_chains` must be an int >= 1"):
        plan_search("rbf", 100, 10, num_chains=True)
    with pytest.raises(ValueError, match="temperature"):
        plan_search("smc", 100, 10, temperature=float("nan"))
    with pytest.raises(ValueError, match="ess_threshold"):
        plan_search("smc", 100, 10, ess_threshold=1.5)
    with pytest.raises(ValueError, match="resampling"):
        plan_search("smc", 100, 10, resampling="cubic")
    with pytest.raises(ValueError, match="rollover"):
        plan_search("rbf", 100, 10, rollover="yes")
    with pytest.raises(ValueError, match="num_steps"):
        plan_search("bon", 100, 1)
    with pytest.raises(ValueError, match="nfe_budget"):
        plan_search("bon", 10.5, 10)
    with pytest.raises(ValueError, match="forward_steps"):
        plan_search("sop", 500, 10, forward_steps=9)


def test_ledger_refuses_to_overspend():
    ledger = NFELedger(2, 10)
    ledger.charge([4, 10])
    with pytest.raises(BudgetExceededError):
        ledger.charge({0: 7})
    assert ledger.used == [4, 10] and ledger.remaining(0) == 6


def test_split_evenly():
    assert split_evenly(11, 3) == [4, 4, 3] and sum(split_evenly(450, 2)) == 450


# ---------------------------------------------------------------------------------------------------------------
# Rollover Budget Forcing, Algorithm 2, on scripted reward sequences


def _run(machine, chain, rewards):
    return [machine.observe(chain, r) for r in rewards]


def test_rbf_accept_rolls_the_unused_quota_over():
    # One chain, 12 NFE over 3 steps: Q = 4.
    rbf = RolloverBudgetForcing([12], 3, initial_best=[0.5])
    assert rbf.quota == [4]
    first, second = _run(rbf, 0, [0.4, 0.7])  # the second proposal beats r* = 0.5
    assert (first.action, first.used, first.best) == ("continue", 1, 0.5)
    assert (second.action, second.quota, second.used, second.rollover, second.chosen) == (
        "accept",
        4,
        2,
        2,
        1,
    )
    assert second.best == 0.7 and rbf.step == [2]
    # Step 2 gets Q + rollover = 4 + 2 = 6.
    assert rbf.quota == [6]


def test_rbf_quota_exhausted_moves_on_with_the_best_of_the_step_and_keeps_r_star():
    rbf = RolloverBudgetForcing([12], 3, initial_best=[0.9])
    decisions = _run(rbf, 0, [0.1, 0.6, 0.3, 0.2])
    assert [d.action for d in decisions] == ["continue", "continue", "continue", "exhausted"]
    assert decisions[-1].chosen == 1  # 0.6 was the best proposal of the step
    assert decisions[-1].best == 0.9 and rbf.best == [0.9]  # r* unchanged
    assert decisions[-1].rollover == 0 and rbf.quota == [4] and rbf.step == [2]


def test_rbf_last_step_spends_the_rest():
    # 20 NFE over 3 steps: Q = 6; accept at once twice, so 10 are rolled into... the last step takes all 18 left.
    rbf = RolloverBudgetForcing([20], 3, initial_best=[0.0])
    assert _run(rbf, 0, [0.1])[0].action == "accept"
    assert rbf.quota == [6 + 5]
    assert _run(rbf, 0, [0.2])[0].action == "accept"
    assert rbf.step == [3] and rbf.quota == [18] and rbf.spent == [2]
    decisions = _run(rbf, 0, [0.3, 0.9, 0.05] + [0.0] * 15)
    assert [d.action for d in decisions[:-1]] == ["final"] * 17 and decisions[-1].action == "done"
    assert rbf.done and rbf.spent == [20] and rbf.final_choice(0) == 1
    with pytest.raises(RuntimeError):
        rbf.observe(0, 1.0)


def test_rbf_full_script_matches_algorithm_2():
    # Two chains, 2 x 15 NFE over 3 steps (Q = 5 each), r* starting at 0.2 and 0.8.
    rbf = RolloverBudgetForcing([15, 15], 3, initial_best=[0.2, 0.8])
    # chain 0: improves on its 3rd draw (rollover 2), then exhausts step 2 (quota 7) without improving.
    log0 = _run(rbf, 0, [0.1, 0.15, 0.3])
    assert log0[-1].action == "accept" and log0[-1].rollover == 2 and rbf.quota[0] == 7
    log0 = _run(rbf, 0, [0.25, 0.29, 0.1, 0.2, 0.28, 0.05, 0.1])
    assert [d.action for d in log0] == ["continue"] * 6 + ["exhausted"]
    assert log0[-1].chosen == 1 and rbf.best[0] == 0.3 and rbf.quota[0] == 15 - 10 and rbf.step[0] == 3
    # chain 1: never beats 0.8 at step 1 (exhausted: best of step = 3rd), then accepts at once at step 2.
    log1 = _run(rbf, 1, [0.5, 0.6, 0.7, 0.1, 0.2])
    assert log1[-1].action == "exhausted" and log1[-1].chosen == 2 and rbf.best[1] == 0.8
    log1 = _run(rbf, 1, [0.85])
    assert log1[0].action == "accept" and log1[0].rollover == 4 and rbf.step[1] == 3
    assert rbf.quota[1] == 15 - 6  # the last step spends all the chain has left
    assert rbf.active_chains() == [0, 1]
    _run(rbf, 0, [0.4] * 5)
    _run(rbf, 1, [0.9] * 9)
    assert rbf.done and rbf.spent == [15, 15]


def test_rbf_without_rollover_keeps_the_unused_quota_for_the_last_step():
    rbf = RolloverBudgetForcing([12], 3, initial_best=[0.0], rollover=False)
    assert _run(rbf, 0, [1.0])[0].rollover == 0
    assert rbf.quota == [4]
    _run(rbf, 0, [2.0])
    assert rbf.quota == [12 - 2]


def test_rbf_rejects_nan_and_never_accepts_minus_inf():
    rbf = RolloverBudgetForcing([6], 2, initial_best=[-math.inf])
    assert rbf.observe(0, -math.inf).action == "continue"
    with pytest.raises(ValueError, match="NaN"):
        rbf.observe(0, math.nan)
    with pytest.raises(ValueError, match="at least one per step"):
        RolloverBudgetForcing([1], 2, initial_best=[0.0])


# ---------------------------------------------------------------------------------------------------------------
# SMC


def test_smc_weights_follow_the_definition():
    lam = 0.5
    previous = torch.tensor([[0.1, 0.2, 0.3, -math.inf]])
    rewards = torch.tensor([[0.4, 0.1, 0.3, 0.9]])
    log_w = update_log_weights(torch.zeros(1, 4), rewards, previous, lam)
    expected = torch.tensor([[0.6, -0.2, 0.0, -math.inf]])
    assert torch.allclose(log_w, expected)
    w = torch.exp(log_w)
    ess_expected = float(w.sum() ** 2 / (w**2).sum())
    assert float(effective_sample_size(log_w)[0]) == pytest.approx(ess_expected, rel=1e-5)
    assert effective_sample_size(torch.zeros(2, 8)).tolist() == [8.0, 8.0]
    assert float(effective_sample_size(torch.tensor([[0.0, -math.inf, -math.inf]]))[0]) == pytest.approx(1.0)
    assert float(effective_sample_size(torch.full((1, 3), -math.inf))[0]) == 0.0


def test_resample_only_requested_rows_and_never_dead_particles():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    log_w = torch.tensor([[0.0, -math.inf, 0.0, -math.inf, 0.0], [0.0] * 5])
    new, ancestors = resample(
        x, log_w, "multinomial", torch.Generator().manual_seed(0), rows=torch.tensor([True, False])
    )
    assert ancestors[1].tolist() == [0, 1, 2, 3, 4] and torch.equal(new[1], x[1])
    assert not ({1, 3} & set(ancestors[0].tolist()))
    assert torch.equal(new[0, :, 0], x[0, ancestors[0], 0])


# ---------------------------------------------------------------------------------------------------------------
# Traces and plots


def test_trace_json_round_trip_and_curve(tmp_path):
    trace = SearchTrace("rbf", {"num_chains": 2}, 10, nfe=[9], prompts=["p"])
    trace.records += [
        StepRecord(prompt=0, step=0, time=1.0, nfe=4, kind="init", rewards=[0.1, -math.inf], best_reward=0.1),
        StepRecord(
            prompt=0, step=1, time=0.5, nfe=6, kind="propose", rewards=[0.3], action="accept", best_reward=0.3
        ),
        StepRecord(prompt=0, step=1, time=0.5, nfe=6, kind="propose", rewards=[0.2], best_reward=0.3),
        StepRecord(
            prompt=0, step=2, time=0.2, nfe=9, kind="resample", rewards=[0.5], resampled=True, best_reward=0.5
        ),
    ]
    path = tmp_path / "trace.json"
    trace.to_json(path)
    back = SearchTrace.from_json(path)
    assert back.records[0].rewards[1] == -math.inf and back.records[1].action == "accept"
    assert back.curve() == ([4, 6, 9], [0.1, 0.3, 0.5])
    assert [r.step for r in back.resampling_events()] == [2]
    png = plot_reward_vs_nfe(
        {"rbf": back, "bon": ([10, 20], [0.1, 0.2], [0.01, 0.02])}, tmp_path / "p" / "c.png"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_reward_vs_nfe({}, tmp_path / "x.png")
