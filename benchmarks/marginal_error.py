"""Marginal error of FlowSDEScheduler vs steps, for each time grid × sampler, on the analytic Gaussian mixture.

The data distribution is `diffusers_ttsplugin.toy.default_mixture(2)` (4 modes, weights .45/.3/.2/.05), whose
velocity is exact, so every error is the sampler's discretisation error (the model is perfect). For each sampler
(ODE = linear-interpolant Euler, linear-SDE, VP-SDE), grid and step count, `--seeds` independent runs of
`--samples` samples each (noise and SDE seeds differ per run) are compared with the exact distribution:

- mode weights: the share of each mode, estimated without classification noise as the mean posterior
  responsibility E[P(k | x)] over the samples (exact samples give w_k in expectation); reported as the largest
  |share − w_k| of the pooled runs, ± its s.e.m. across runs, and which mode;
- energy distance to as many exact samples (the unbiased U-statistic, so the exact sampler scores 0 in
  expectation), mean ± s.e.m. across runs.

Grids: "pipeline" (FlowMatchEuler's sigmas, linspace(1, 1/1000, N)), "uniform" (equal steps in the sampling
interpolant's own time), "paper" (the released code's VP grid r_i = √(1 − (i/N)²) with its Tweedie output at the
last non-zero time) and "paper+integrate" (the same grid integrated to t = 0).

    python benchmarks/marginal_error.py --seeds 32 --samples 1024 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from diffusers_ttsplugin import FlowSDEScheduler
from diffusers_ttsplugin.toy import default_mixture, integrate

SAMPLERS = {
    "ODE": {"sampler": "ode", "interpolant": "linear"},
    "linear-SDE": {"sampler": "sde", "interpolant": "linear"},
    "VP-SDE": {"sampler": "sde", "interpolant": "vp"},
}
GRIDS = {
    "pipeline": {"time_grid": "pipeline", "final_step": "integrate"},
    "uniform": {"time_grid": "uniform", "final_step": "integrate"},
    "paper": {"time_grid": "paper", "final_step": "tweedie"},
    "paper+integrate": {"time_grid": "paper", "final_step": "integrate"},
}


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'| (diagonals excluded)."""
    x, y = x.double(), y.double()
    n, m = len(x), len(y)
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1))
    yy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)


def run_cell(mixture, sampler: str, grid: str, steps: int, seed: int, samples: int):
    scheduler = FlowSDEScheduler(**SAMPLERS[sampler], **GRIDS[grid])
    scheduler.set_generator(torch.Generator().manual_seed(10_000 + seed))
    noise = torch.randn(samples, mixture.dim, generator=torch.Generator().manual_seed(seed))
    x = integrate(mixture.velocity, scheduler, noise, steps)
    shares = mixture.component_posterior(x.double()).mean(0)
    exact = mixture.sample(samples, generator=torch.Generator().manual_seed(20_000 + seed))
    return shares, energy_distance(x, exact)


def summarise(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=32, help="independent runs per cell")
    parser.add_argument("--samples", type=int, default=1024, help="samples per run")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 200], help="step counts")
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    parser.add_argument("--tag", default="marginal_error", help="file name stem")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mixture = default_mixture(2)
    weights = mixture.weights
    start = time.perf_counter()
    cells: dict = {}
    floor = [run_exact(mixture, seed, args.samples) for seed in range(args.seeds)]
    for sampler in SAMPLERS:
        for grid in GRIDS:
            for steps in args.steps:
                runs = [run_cell(mixture, sampler, grid, steps, s, args.samples) for s in range(args.seeds)]
                cells[(sampler, grid, steps)] = runs
        print(f"{sampler}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    elapsed = time.perf_counter() - start

    def describe(runs):
        shares = torch.stack([s for s, _ in runs])  # [seeds, K]
        error = shares.mean(0) - weights
        k = int(error.abs().argmax())
        sem = float(shares[:, k].std() / math.sqrt(len(runs)))
        energy = summarise([e for _, e in runs])
        return {
            "mode": k,
            "error": float(error[k]),
            "sem": sem,
            "energy": energy,
            "shares": shares.mean(0).tolist(),
        }

    summary = {f"{s}|{g}|{n}": describe(r) for (s, g, n), r in cells.items()}
    exact = describe(floor)
    lines = [
        f"Mixture `default_mixture(2)` (weights {[round(float(w), 2) for w in weights]}), {args.seeds} runs × "
        f"{args.samples} samples per cell. Mode error: the largest |share − weight| of the pooled runs (mode index), "
        "± s.e.m. across runs; energy distance to exact samples (unbiased; exact sampler ≈ 0), mean ± s.e.m.",
        "",
        f"Exact samples (the floor): mode error {exact['error']:+.4f} ± {exact['sem']:.4f}, "
        f"energy distance {exact['energy'][0]:.4f} ± {exact['energy'][1]:.4f}.",
        "",
    ]
    for metric, title in (("mode", "mode-weight error"), ("energy", "energy distance")):
        lines += [
            f"**{title}**",
            "",
            "| sampler | grid | " + " | ".join(f"{n} steps" for n in args.steps) + " |",
            "|---|---|" + "---|" * len(args.steps),
        ]
        for sampler in SAMPLERS:
            for grid in GRIDS:
                row = []
                for steps in args.steps:
                    d = summary[f"{sampler}|{grid}|{steps}"]
                    if metric == "mode":
                        row.append(f"{d['error']:+.3f} ± {d['sem']:.3f} (k={d['mode']})")
                    else:
                        row.append(f"{d['energy'][0]:.4f} ± {d['energy'][1]:.4f}")
                lines.append(f"| {sampler} | {grid} | " + " | ".join(row) + " |")
        lines.append("")
    lines.append(
        f"{len(cells) * args.seeds} runs in {elapsed:.0f} s on {platform.machine()} (torch {torch.__version__}, "
        "1 thread)"
    )
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.md").write_text(text + "\n")
    (out / f"{args.tag}.json").write_text(
        json.dumps({"args": vars(args), "exact": exact, "cells": summary}, indent=0)
    )
    plot(summary, args, out / f"{args.tag}.png")
    print(f"wrote {out / (args.tag + '.md')}, .json, .png")


def run_exact(mixture, seed: int, samples: int):
    x = mixture.sample(samples, generator=torch.Generator().manual_seed(30_000 + seed))
    shares = mixture.component_posterior(x.double()).mean(0)
    exact = mixture.sample(samples, generator=torch.Generator().manual_seed(20_000 + seed))
    return shares, energy_distance(x, exact)


def plot(summary: dict, args, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 6.5), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(SAMPLERS), sharex=True)
    for column, sampler in enumerate(SAMPLERS):
        for grid in GRIDS:
            cells = [summary[f"{sampler}|{grid}|{n}"] for n in args.steps]
            axes[0, column].errorbar(
                args.steps, [abs(c["error"]) for c in cells], yerr=[c["sem"] for c in cells], marker="o",
                markersize=3, capsize=2, label=grid,
            )  # fmt: skip
            axes[1, column].errorbar(
                args.steps, [c["energy"][0] for c in cells], yerr=[c["energy"][1] for c in cells], marker="o",
                markersize=3, capsize=2, label=grid,
            )  # fmt: skip
        axes[0, column].set_title(sampler)
        axes[1, column].set_xlabel("steps")
        for row in range(2):
            axes[row, column].set_xscale("log")
            axes[row, column].set_yscale("symlog", linthresh=1e-3)
            axes[row, column].grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("|mode share − weight| (worst mode)")
    axes[1, 0].set_ylabel("energy distance")
    axes[0, -1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, format="png")


if __name__ == "__main__":
    main()
