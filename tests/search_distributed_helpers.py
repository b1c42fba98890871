"""Search cases run both in one process and sharded over ranks (tests/test_search_distributed.py, benchmarks)."""

from __future__ import annotations

import torch

from diffusers_ttsplugin import InferenceScaler
from diffusers_ttsplugin.rewards import BrightnessReward
from diffusers_ttsplugin.search.demo import toy_problem
from diffusers_ttsplugin.testing import build_tiny_flux_pipeline

FLUX_OPTIONS = {"height": 32, "width": 32, "max_sequence_length": 32, "output_type": "latent"}
PROMPTS = ["a photo of a red apple", "a blue car"]

# name → (model, method, scaler options, prompts). SMC with ess_threshold=1 resamples at (nearly) every step; odd
# particle counts leave the ranks uneven shares. `max_batch_size=1` runs every model call row by row, so a row's
# arithmetic cannot depend on which rows share its batch: those cases must match one process bit for bit (BATCH_EXACT).
ROW = {"max_batch_size": 1}
CASES = {
    "flux-bon": ("flux", "bon", ROW, PROMPTS[:1]),
    "flux-bon-integrate": ("flux", "bon", {"final_step": "integrate", "num_particles": 7}, PROMPTS[:1]),
    "flux-smc": ("flux", "smc", {"ess_threshold": 1.0, **ROW}, PROMPTS[:1]),
    "flux-smc-2prompts": (
        "flux",
        "smc",
        {"ess_threshold": 1.0, "num_particles": 5, "resampling": "systematic", "initial_weights": "reward"},
        PROMPTS,
    ),
    "flux-svdd": ("flux", "svdd", ROW, PROMPTS[:1]),
    "flux-code": ("flux", "code", {"final_step": "integrate", **ROW}, PROMPTS[:1]),
    "flux-sop": ("flux", "sop", ROW, PROMPTS[:1]),
    "flux-rbf": ("flux", "rbf", ROW, PROMPTS),
    "toy-smc": ("toy", "smc", {"ess_threshold": 1.0, "num_particles": 11, "temperature": 0.05}, ["toy"]),
    "toy-rbf": ("toy", "rbf", {}, ["toy"]),
}
BATCH_EXACT = {name for name, case in CASES.items() if case[2].get("max_batch_size") == 1}


def build(model: str):
    if model == "flux":
        return build_tiny_flux_pipeline(), BrightnessReward(), 24, 3, FLUX_OPTIONS
    flow, reward = toy_problem()
    return flow, reward, 48, 4, {}


def run_case(name: str, models: dict, seed: int = 0) -> dict:
    """Run one case; return what must not depend on the number of processes."""
    model, method, options, prompts = CASES[name]
    if model not in models:
        models[model] = build(model)
    pipe, reward, budget, steps, call_options = models[model]
    scaler = InferenceScaler(pipe, reward, method=method, nfe_budget=budget, num_steps=steps, **options)
    scaler.set_progress_bar_config(disable=True)
    result = scaler(prompts, generator=torch.Generator().manual_seed(seed), **call_options)
    records = [
        (r.kind, r.prompt, r.chain, r.step, r.nfe, r.selected, r.ancestors, r.action, r.rewards)
        for r in result.trace.records
    ]
    traffic = scaler.traffic
    return {
        "latents": result.latents.cpu(),
        "reward": result.reward,
        "nfe": result.nfe.tolist(),
        "transformer_rows": result.transformer_rows,
        "records": records,
        "rows_sent": traffic.rows_sent if traffic else 0,
    }


class FailsOnRank:
    """A reward that raises on one rank only (a rank must not wait forever for the others)."""

    def __init__(self, reward, rank: int):
        self.reward, self.rank = reward, rank

    def __call__(self, images, prompts):
        if torch.distributed.get_rank() == self.rank:
            raise ArithmeticError("this reward failed here")
        return self.reward(images, prompts)


def misuse_errors(rank: int) -> dict:
    """What each rank raises for calls that differ between ranks, and for a reward failing on rank 1."""
    flow, reward = toy_problem()
    errors = {}
    for name, scaler_reward, prompt in [
        ("different prompts", reward, f"prompt of rank {rank}"),
        ("reward fails on rank 1", FailsOnRank(reward, 1), "toy"),
    ]:
        scaler = InferenceScaler(flow, scaler_reward, method="smc", nfe_budget=16, num_steps=4)
        scaler.set_progress_bar_config(disable=True)
        try:
            scaler(prompt, generator=torch.Generator().manual_seed(0))
            errors[name] = None
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"
    return errors


def run_cases(rank: int, world_size: int, names: list[str], out_dir: str) -> None:
    """A rank's part: every case in turn (the same calls on every rank), then the misuse checks; results saved per
    rank."""
    models: dict = {}
    results = {name: run_case(name, models) for name in names}
    results["misuse"] = misuse_errors(rank)
    torch.save(results, f"{out_dir}/rank{rank}.pt")
