"""InferenceScaler sharded over 2 CPU processes (gloo) equals the one-process search: same selections, ancestors,
rewards, NFE ledger and chosen samples, for every method (tiny FLUX and the analytic flow); plus the row-transfer
planning it uses. The 2-process run spawns two fresh interpreters once per module (about 15 s on a shared CPU)."""

from __future__ import annotations

import pytest
import torch
from search_distributed_helpers import BATCH_EXACT, CASES, run_case, run_cases

from diffusers_ttsplugin.search.distributed import RowLayout, balanced_owners, transfer_plan
from diffusers_ttsplugin.testing import run_on_ranks


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    run_on_ranks(run_cases, 2, sorted(CASES), str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def single():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    models: dict = {}
    try:
        yield {name: run_case(name, models) for name in sorted(CASES)}
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_equal_one(sharded, single, name):
    one = single[name]
    for rank, results in enumerate(sharded):
        two = results[name]
        # Every decision (selections, resampling ancestors, RBF actions), the NFE ledger and the transformer rows
        # are exactly those of one process.
        assert [r[:-1] for r in two["records"]] == [r[:-1] for r in one["records"]], f"rank {rank}"
        assert two["nfe"] == one["nfe"] and two["transformer_rows"] == one["transformer_rows"]
        if name in BATCH_EXACT:  # row-by-row model calls: bit for bit
            assert [r[-1] for r in two["records"]] == [r[-1] for r in one["records"]], f"rank {rank}"
            assert torch.equal(two["reward"], one["reward"]) and torch.equal(two["latents"], one["latents"])
        else:  # a rank batches fewer rows, and the CPU kernels round a row differently by batch shape
            for a, b in zip(two["records"], one["records"], strict=True):
                assert a[-1] == pytest.approx(b[-1], rel=1e-6, abs=1e-9)
            torch.testing.assert_close(two["latents"], one["latents"], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(two["reward"], one["reward"], rtol=1e-6, atol=1e-9)


def test_ranks_that_disagree_all_raise(sharded):
    zero, one = sharded[0]["misuse"], sharded[1]["misuse"]
    for errors in (zero, one):  # every rank raises (none hangs), naming what differs
        assert errors["different prompts"].startswith("ValueError: InferenceScaler on 2 ranks")
        assert "different" in errors["different prompts"] and "prompts" in errors["different prompts"]
    assert one["reward fails on rank 1"] == "ArithmeticError: this reward failed here"
    assert zero["reward fails on rank 1"].startswith(
        "RuntimeError: smc, step 0: the reward failed on rank(s) [1]"
    )


def test_resampling_moves_only_some_rows(sharded):
    moved = [results["flux-smc"]["rows_sent"] for results in sharded]
    # 12 particles over 2 ranks, resampled at every step: some ancestors live on the other rank, most do not.
    assert sum(moved) > 0
    assert sum(moved) < 12 * 2


def test_balanced_owners_keep_rows_home():
    old = RowLayout.blocks(8, 2, 0).owners  # rows 0-3 on rank 0, 4-7 on rank 1
    # Six copies of row 1 and two of row 6: rank 0 keeps four, two must move, rank 1 keeps both copies of row 6.
    sources = torch.tensor([1, 1, 1, 1, 1, 1, 6, 6])
    owners = balanced_owners(sources, old, 2)
    assert owners.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    plan = transfer_plan(sources, old, owners, 2)
    assert list(plan) == [(0, 1)] and plan[(0, 1)].tolist() == [1]  # one row sent once, copied on arrival
    # The identity never moves anything, whatever the split.
    identity = torch.arange(7)
    odd = RowLayout.blocks(7, 3, 0).owners
    assert torch.equal(balanced_owners(identity, odd, 3), odd)
    assert transfer_plan(identity, odd, odd, 3) == {}


def test_transfer_plan_to_every_rank():
    old = RowLayout.blocks(6, 3, 0).owners  # [0, 0, 1, 1, 2, 2]
    plan = transfer_plan(torch.tensor([5, 0, 5]), old, None, 3)
    assert {k: v.tolist() for k, v in plan.items()} == {(2, 0): [5], (0, 1): [0], (2, 1): [5], (0, 2): [0]}
    assert transfer_plan(torch.tensor([5, 0]), None, None, 3) == {}  # replicated rows never move


def test_layout_local_rows():
    layout = RowLayout(5, torch.tensor([1, 0, 1, 0, 1]), rank=1)
    assert layout.positions.tolist() == [0, 2, 4]
    assert layout.local(torch.arange(10, 15)).tolist() == [10, 12, 14]
    assert RowLayout(5).local(torch.arange(5)).tolist() == list(range(5))
