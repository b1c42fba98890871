"""Particle search on the analytic flow: every method × {ODE, linear-SDE, VP-SDE} × NFE budgets × seeds.

The flow is `diffusers_ttsplugin.toy`'s reference Gaussian mixture with its outer mode made rare (weight
`--rare-weight`); the reward is the probability that a sample belongs to that mode (`MixtureModeReward`, in [0, 1],
saturating like a VQA score), so the optimum is known: 1. The velocity is exact, so differences between methods are
differences of search, not of model error.

Writes a markdown table (mean final reward ± standard error over seeds, and the rare-mode hit rate), a JSON file with
every run, and a PNG (one panel per sampler), and prints the NFE at which RBF + VP-SDE first reaches BoN's final
reward at the largest budget.

    python benchmarks/toy_search.py --seeds 16 --out benchmarks/results
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

from diffusers_ttsplugin.search import METHODS, InferenceScaler
from diffusers_ttsplugin.search.demo import toy_problem

SAMPLERS = {
    "ODE": {"sampler": "ode", "interpolant": "linear"},
    "linear-SDE": {"sampler": "sde", "interpolant": "linear"},
    "VP-SDE": {"sampler": "sde", "interpolant": "vp"},
}


def run_one(flow, reward, method, sampler, budget, seed, args) -> dict | None:
    try:
        scaler = InferenceScaler(
            flow,
            reward,
            method=method,
            nfe_budget=budget,
            num_steps=args.steps,
            time_grid=args.time_grid,
            final_step=args.final_step,
            **SAMPLERS[sampler],
        )
    except ValueError:
        return None  # the budget is below what this method's structure needs
    scaler.set_progress_bar_config(disable=True)
    result = scaler("toy", generator=torch.Generator().manual_seed(seed))
    return {"reward": float(result.reward[0]), "nfe": int(result.nfe[0])}


def base_rates(flow, reward, args, num: int = 4000) -> dict:
    """One plain sample per draw (no search): mean reward and rare-mode share of the returned x̂₀, per sampler."""
    from diffusers_ttsplugin import FlowSDEScheduler
    from diffusers_ttsplugin.toy import integrate

    rates = {}
    for name, options in SAMPLERS.items():
        scheduler = FlowSDEScheduler(time_grid=args.time_grid, final_step=args.final_step, **options)
        scheduler.set_generator(torch.Generator().manual_seed(0))
        noise = torch.randn(num, flow.mixture.dim, generator=torch.Generator().manual_seed(1))
        x = integrate(flow.mixture.velocity, scheduler, noise, args.steps)
        values = reward(x, [""] * num)
        rates[name] = (float(values.mean()), float((values > 0.5).float().mean()))
    return rates


def diagnose(flow, reward, args, budget: int) -> dict:
    """Why the methods rank as they do: SMC resampling events and RBF's NFE per search step at `budget`."""
    out = {}
    seeds = range(min(args.seeds, 8))
    for sampler in ("linear-SDE", "VP-SDE"):
        events, per_step, accepts, exhausted = [], [0.0] * args.steps, 0, 0
        for seed in seeds:
            smc = InferenceScaler(
                flow,
                reward,
                method="smc",
                nfe_budget=budget,
                num_steps=args.steps,
                time_grid=args.time_grid,
                final_step=args.final_step,
                **SAMPLERS[sampler],
            )
            smc.set_progress_bar_config(disable=True)
            events.append(
                len(smc("toy", generator=torch.Generator().manual_seed(seed)).trace.resampling_events())
            )
            rbf = InferenceScaler(
                flow,
                reward,
                method="rbf",
                nfe_budget=budget,
                num_steps=args.steps,
                time_grid=args.time_grid,
                final_step=args.final_step,
                **SAMPLERS[sampler],
            )
            rbf.set_progress_bar_config(disable=True)
            for record in rbf("toy", generator=torch.Generator().manual_seed(seed)).trace.records:
                if record.kind == "propose":
                    per_step[record.step] += 1 / len(seeds)
                    accepts += record.action == "accept"
                    exhausted += record.action == "exhausted"
        out[sampler] = {
            "smc_resampling_events": statistics.fmean(events),
            "rbf_nfe_per_step": [round(v, 1) for v in per_step[1:]],
            "rbf_accepts": accepts / len(seeds),
            "rbf_exhausted": exhausted / len(seeds),
        }
    return out


def summarise(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, sem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2, help="data dimension")
    parser.add_argument("--rare-weight", type=float, default=0.02, help="weight of the rewarded mode")
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200, 500], help="NFE budgets")
    parser.add_argument("--seeds", type=int, default=16, help="seeds per cell")
    parser.add_argument("--steps", type=int, default=10, help="grid steps")
    parser.add_argument("--time-grid", default="pipeline", help="FlowSDEScheduler time grid")
    parser.add_argument("--final-step", default="tweedie", help="tweedie or integrate")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="methods to run")
    parser.add_argument(
        "--rbf-budgets",
        type=int,
        nargs="+",
        default=[25, 50, 75, 100, 125, 150, 200],
        help="extra budgets for RBF + VP-SDE (to find where it reaches BoN)",
    )
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    parser.add_argument("--tag", default="toy_search", help="file name stem")
    args = parser.parse_args()
    torch.set_num_threads(1)
    flow, reward = toy_problem(args.dim, args.rare_weight)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs: dict = {}
    for method in args.methods:
        for sampler in SAMPLERS:
            budgets = sorted(
                set(args.budgets)
                | (set(args.rbf_budgets) if (method, sampler) == ("rbf", "VP-SDE") else set())
            )
            for budget in budgets:
                cell = [run_one(flow, reward, method, sampler, budget, s, args) for s in range(args.seeds)]
                if cell[0] is None:
                    continue
                runs[f"{method}|{sampler}|{budget}"] = cell
        print(f"{method}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    elapsed = time.perf_counter() - start

    lines = [
        f"Analytic flow: d = {args.dim}, rare-mode weight {args.rare_weight}, reward P(rare mode | sample) (optimum 1), "
        f"{args.steps} steps, time grid `{args.time_grid}`, final step `{args.final_step}`, {args.seeds} seeds; "
        "mean ± s.e.m. (hit rate = share of seeds whose sample is in the rare mode).",
        "",
        "| method | sampler | " + " | ".join(f"{b} NFE" for b in args.budgets) + " |",
        "|---|---|" + "---|" * len(args.budgets),
    ]
    table: dict = {}
    for method in args.methods:
        for sampler in SAMPLERS:
            cells = []
            for budget in args.budgets:
                cell = runs.get(f"{method}|{sampler}|{budget}")
                if cell is None:
                    cells.append("—")
                    continue
                mean, sem = summarise([r["reward"] for r in cell])
                hits = sum(r["reward"] > 0.5 for r in cell) / len(cell)
                used = statistics.fmean(r["nfe"] for r in cell)
                table[(method, sampler, budget)] = (mean, sem, hits, used)
                cells.append(f"{mean:.3f} ± {sem:.3f} ({hits:.0%})")
            lines.append(f"| {method} | {sampler} | " + " | ".join(cells) + " |")

    # Where does RBF + VP-SDE reach BoN's final reward?
    top = max(args.budgets)
    findings = []
    for bon_sampler in SAMPLERS:
        if ("bon", bon_sampler, top) not in table:
            continue
        target = table[("bon", bon_sampler, top)][0]
        reached = None
        for key in sorted(
            (k for k in runs if k.startswith("rbf|VP-SDE|")), key=lambda k: int(k.split("|")[2])
        ):
            budget = int(key.split("|")[2])
            if statistics.fmean(r["reward"] for r in runs[key]) >= target:
                reached = budget
                break
        findings.append(
            f"BoN ({bon_sampler}) at {top} NFE: {target:.3f}; RBF + VP-SDE reaches it at "
            + (f"{reached} NFE ({reached / top:.0%} of BoN's)" if reached else "no budget tried")
        )
    lines += [""] + [f"- {f}" for f in findings]
    rates = base_rates(flow, reward, args)
    lines.append(
        "- One plain sample (no search), 4000 draws: "
        + "; ".join(f"{name} mean reward {m:.3f}, rare-mode share {h:.1%}" for name, (m, h) in rates.items())
    )
    why = diagnose(flow, reward, args, top)
    for sampler, d in why.items():
        lines.append(
            f"- {sampler} at {top} NFE (mean of {min(args.seeds, 8)} seeds): SMC resamples {d['smc_resampling_events']:.1f} "
            f"times; RBF NFE per search step 1..{args.steps - 1} = {d['rbf_nfe_per_step']} "
            f"({d['rbf_accepts']:.1f} accepts, {d['rbf_exhausted']:.1f} exhausted quotas per run, both chains)"
        )
    lines.append(
        f"- {len(runs) * args.seeds} searches in {elapsed:.0f} s on {platform.machine()} (torch {torch.__version__}, 1 thread)"
    )
    text = "\n".join(lines)
    print(text)
    (out / f"{args.tag}.md").write_text(text + "\n")
    (out / f"{args.tag}.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=0))

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.8), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(SAMPLERS), sharey=True)
    for ax, sampler in zip(axes, SAMPLERS, strict=True):
        for method in args.methods:
            keys = sorted(
                (k for k in runs if k.startswith(f"{method}|{sampler}|")), key=lambda k: int(k.split("|")[2])
            )
            if not keys:
                continue
            nfe = [statistics.fmean(r["nfe"] for r in runs[k]) for k in keys]
            stats = [summarise([r["reward"] for r in runs[k]]) for k in keys]
            means = [m for m, _ in stats]
            ax.errorbar(
                nfe, means, yerr=[s for _, s in stats], marker="o", markersize=3, capsize=2, label=method
            )
        ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_title(sampler)
        ax.set_xlabel("NFE")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("P(rare mode) of the returned sample")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / f"{args.tag}.png", format="png")
    print(f"wrote {out / (args.tag + '.md')}, .json, .png")


if __name__ == "__main__":
    main()
