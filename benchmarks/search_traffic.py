"""How many particle latents a sharded SMC search moves between ranks, and the bytes per step for FLUX at 1024².

The sharded `InferenceScaler` takes exactly the one-process decisions (tests/test_search_distributed.py), so the
rows it moves follow from the resampling ancestors of a one-process run: this script runs SMC with `--particles`
particles per prompt (the analytic flow, and tiny FLUX with a brightness reward), reads every resampling's ancestors
from the trace, and replays them through `balanced_owners` / `transfer_plan` for W ranks, exactly as the sharded
search places and moves rows. Also for the naive placement (row i stays on rank ⌊i·W/N⌋, every ancestor fetched
where its copy lands), to show what the balancing saves. Bytes assume FLUX.1 at 1024²: a particle is 16×128×128
latent values, and a move carries x and u (float32 in the search: 2 × 1 MiB).

    python benchmarks/search_traffic.py --particles 64 --seeds 32
"""

from __future__ import annotations

import argparse

import torch

from diffusers_ttsplugin import InferenceScaler
from diffusers_ttsplugin.search.demo import mean_sem, toy_problem
from diffusers_ttsplugin.search.distributed import RowLayout, balanced_owners, transfer_plan

FLUX_VALUES = 16 * 128 * 128  # latent values per particle at 1024² (VAE /8, 16 channels)
MOVE_BYTES = 2 * 4 * FLUX_VALUES  # x and u in float32


def moved_rows(ancestor_lists: list[list[int]], world: int, balanced: bool) -> list[int]:
    """Distinct rows sent (all ranks together) at each resampling of one prompt's run."""
    n = len(ancestor_lists[0])
    owners = RowLayout.blocks(n, world, 0).owners
    moved = []
    for ancestors in ancestor_lists:
        sources = torch.tensor(ancestors)
        new_owners = balanced_owners(sources, owners, world) if balanced else owners
        plan = transfer_plan(sources, owners, new_owners, world)
        moved.append(sum(len(rows) for rows in plan.values()))
        owners = new_owners
    return moved


def resamplings(trace, num_prompts: int) -> list[list[list[int]]]:
    per_prompt = [[] for _ in range(num_prompts)]
    for record in trace.records:
        if record.kind == "resample":
            per_prompt[record.prompt].append(record.ancestors)
    return per_prompt


def run(name, pipe, reward, prompts, args, temperature, **options):
    steps = args.steps
    scaler = InferenceScaler(
        pipe,
        reward,
        method="smc",
        nfe_budget=args.particles * steps,
        num_steps=steps,
        num_particles=args.particles,
        temperature=temperature,
    )
    scaler.set_progress_bar_config(disable=True)
    result = scaler(prompts, generator=torch.Generator().manual_seed(0), **options)
    events = resamplings(result.trace, len(prompts))
    count = sum(len(e) for e in events)
    print(
        f"\n{name}: SMC, N={args.particles}, {steps} steps, λ={temperature}, {len(prompts)} searches, "
        f"{count} resampling steps ({count / len(prompts):.2f} per search)"
    )
    print(
        "| ranks W | placement | rows moved per resampling step, mean ± s.e.m. (max) | worst case N(W−1)/W |"
        " FLUX 1024² MiB per resampling step, mean (max) |"
    )
    print("|---|---|---|---|---|")
    for world in args.worlds:
        for balanced in (True, False):
            rows = [m for e in events if e for m in moved_rows(e, world, balanced)]
            if not rows:
                continue
            mean, sem = mean_sem([float(r) for r in rows])
            mib = MOVE_BYTES / 2**20
            print(
                f"| {world} | {'balanced_owners' if balanced else 'fixed blocks'} | {mean:.1f} ± {sem:.1f} ({max(rows)}) | "
                f"{args.particles * (world - 1) // world} | {mean * mib:.1f} ({max(rows) * mib:.0f}) |"
            )
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--temperature", type=float, default=0.1, help="λ on the analytic flow (reward in [0, 1])"
    )
    parser.add_argument(
        "--flux-temperature", type=float, default=0.002, help="λ on tiny FLUX (brightness varies by ~1e-3)"
    )
    parser.add_argument(
        "--seeds", type=int, default=32, help="independent searches (prompts) on the analytic flow"
    )
    parser.add_argument(
        "--flux-seeds", type=int, default=4, help="independent searches on tiny FLUX (0: skip)"
    )
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    flow, reward = toy_problem()
    if args.seeds:
        run(
            "analytic flow (rare-mode reward)",
            flow,
            reward,
            [f"seed {i}" for i in range(args.seeds)],
            args,
            args.temperature,
        )
    if args.flux_seeds:
        from diffusers_ttsplugin.rewards import BrightnessReward
        from diffusers_ttsplugin.testing import build_tiny_flux_pipeline

        prompts = [f"a photo of object {i}" for i in range(args.flux_seeds)]
        run(
            "tiny FLUX 32², brightness reward",
            build_tiny_flux_pipeline(),
            BrightnessReward(),
            prompts,
            args,
            args.flux_temperature,
            height=32,
            width=32,
            max_sequence_length=32,
            output_type="latent",
        )
    print(
        f"\nPer step also: rewards all-gathered, (⌈N/W⌉ + 1) float64 per rank ({8 * (args.particles // 2 + 1)} B "
        "at W=2); no noise moves (every rank draws it)."
    )


if __name__ == "__main__":
    main()
