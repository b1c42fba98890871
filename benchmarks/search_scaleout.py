"""Particle search on 1 vs 2 processes at equal total particles: wall time and the bytes the ranks exchange.

Runs the same SMC search (tiny FLUX, `--particles` particles, resampling whenever ESS < `--ess-threshold`·N, a
reward on the latents so that the transformer's NFE dominate as with a real model: the tiny VAE's attention
would otherwise dominate at larger images) with
`InferenceScaler` in 1 process and sharded over `--world-size` processes (gloo over TCP on this machine, one
thread per process, as `torchrun --nproc-per-node` would start them). Every process builds the pipeline and runs one
warm-up search; then `--repeats` timed searches, each started after a barrier and timed on rank 0 until its result is
back. Reports the median (and min/max) wall time per search, the speed-up, the CPU time each process spent (which
a loaded machine does not inflate: the work each rank does), and per rank and search step: latent rows
and bytes sent to another rank at resampling, and the bytes of all-gathered rewards. Also checks that the sharded
search chose the same samples as one process.

    python benchmarks/search_scaleout.py --particles 16 --size 128 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


class LatentEnergy:
    """−mean(x̂₀²) on the latents: a cheap reward, so the timing measures the search, not a decoder."""

    input = "latent"

    def __call__(self, latents: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return -latents.double().pow(2).flatten(1).mean(dim=1)


def worker(rank: int, world_size: int, args: dict, out_dir: str) -> None:
    import torch.distributed as dist

    from diffusers_ttsplugin import InferenceScaler
    from diffusers_ttsplugin.testing import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline()
    scaler = InferenceScaler(
        pipe,
        LatentEnergy(),
        method="smc",
        nfe_budget=args["particles"] * args["steps"],
        num_steps=args["steps"],
        num_particles=args["particles"],
        ess_threshold=args["ess_threshold"],
        max_batch_size=args["batch"],
    )
    scaler.set_progress_bar_config(disable=True)
    options = {
        "height": args["size"],
        "width": args["size"],
        "max_sequence_length": 32,
        "output_type": "latent",
    }

    def search(seed: int):
        return scaler("a photo of a red apple", generator=torch.Generator().manual_seed(seed), **options)

    search(0)  # warm-up
    times, cpu, traffic = [], [], []
    for repeat in range(args["repeats"]):
        if world_size > 1:
            dist.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = search(1 + repeat)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        t = scaler.traffic
        resamplings = sum(1 for r in result.trace.records if r.kind == "resample")
        traffic.append(
            {
                "rows_sent": t.rows_sent if t else 0,
                "latent_bytes_sent": t.latent_bytes_sent if t else 0,
                "gathered_bytes_sent": t.gathered_bytes_sent if t else 0,
                "resamplings": resamplings,
            }
        )
    record = {
        "times": times,
        "cpu": cpu,
        "traffic": traffic,
        "latents": result.latents.tolist(),
        "nfe": result.nfe.tolist(),
        "latent_row_bytes": result.latents[0].numel() * 4,
    }
    with open(os.path.join(out_dir, f"w{world_size}-rank{rank}.json"), "w") as f:
        json.dump(record, f)


def main() -> None:
    from diffusers_ttsplugin.testing import run_on_ranks

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="image height = width (tiny FLUX)")
    parser.add_argument("--batch", type=int, default=None, help="max_batch_size")
    parser.add_argument("--ess-threshold", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args()
    config = vars(args)
    with tempfile.TemporaryDirectory() as out:
        results = {}
        for world in (1, args.world_size):
            run_on_ranks(worker, world, config, out)
            results[world] = [
                json.loads(Path(out, f"w{world}-rank{r}.json").read_text()) for r in range(world)
            ]
    one, many = results[1][0], results[args.world_size]
    same = all(r["latents"] == one["latents"] and r["nfe"] == one["nfe"] for r in many)
    t1, tw = statistics.median(one["times"]), statistics.median(many[0]["times"])
    print(
        f"SMC, tiny FLUX {args.size}x{args.size}, N={args.particles} particles, {args.steps} steps, "
        f"{args.repeats} timed searches per setting (median [min, max]):"
    )
    print(f"  1 process : {t1:.3f} s [{min(one['times']):.3f}, {max(one['times']):.3f}]")
    print(
        f"  {args.world_size} processes: {tw:.3f} s [{min(many[0]['times']):.3f}, {max(many[0]['times']):.3f}]"
        f"  speed-up {t1 / tw:.2f}x"
    )
    print(f"  same chosen sample and NFE as 1 process: {same}")
    c1 = statistics.median(one["cpu"])
    per_rank = [statistics.median(r["cpu"]) for r in many]
    print(
        f"  CPU seconds per search (median; load-independent, one thread per process): 1 process {c1:.3f}; "
        f"per rank {', '.join(f'{c:.3f}' for c in per_rank)} (largest share {max(per_rank) / c1:.2f} of 1 process)"
    )
    row = one["latent_row_bytes"]
    for rank, r in enumerate(many):
        rows = [t["rows_sent"] for t in r["traffic"]]
        steps = [max(1, t["resamplings"]) for t in r["traffic"]]
        per_step = [t["latent_bytes_sent"] / s for t, s in zip(r["traffic"], steps, strict=True)]
        gathered = [t["gathered_bytes_sent"] for t in r["traffic"]]
        print(
            f"  rank {rank}: latent rows sent per search {rows} (x + u, {2 * row} B per row); "
            f"latent bytes per resampling step median {statistics.median(per_step):.0f}; "
            f"reward all-gather bytes per search {gathered[0]}"
        )


if __name__ == "__main__":
    main()
