"""Particle search on the analytic flow: every method × {ODE, linear-SDE, VP-SDE} × NFE budgets × seeds.

The flow is `diffusers_ttsplugin.toy`'s reference Gaussian mixture with its outer mode made rare (weight
`--rare-weight`); the reward is the probability that a sample belongs to that mode (`MixtureModeReward`, in [0, 1],
saturating like a VQA score, computed in float64), so the optimum is known: 1. The velocity is exact, so differences
between methods are differences of search, not of model error.

Each cell is `--seeds` independent searches, run as that many prompts of one `InferenceScaler` call (every prompt
has its own budget and particles). Writes a markdown table (mean final reward ± s.e.m. and the rare-mode hit rate),
a JSON file with every run, and a PNG (one panel per sampler, error bars = s.e.m.); prints where RBF + VP-SDE first
reaches BoN's final reward at the largest budget, why the methods rank as they do (RBF's NFE per step, SMC's
resampling, the noise of each search step, exact ties among proposal rewards), and SMC's weighting variants.

    python benchmarks/toy_search.py --seeds 32 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diffusers_ttsplugin.search import METHODS, InferenceScaler
from diffusers_ttsplugin.search.demo import mean_sem, toy_problem
from diffusers_ttsplugin.search.smc import INITIAL_WEIGHTS, POTENTIALS, TEMPERING

SAMPLERS = {
    "ODE": {"sampler": "ode", "interpolant": "linear"},
    "linear-SDE": {"sampler": "sde", "interpolant": "linear"},
    "VP-SDE": {"sampler": "sde", "interpolant": "vp"},
}


def make_scaler(flow, reward, method, sampler, budget, args, **knobs) -> InferenceScaler | None:
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
            **knobs,
        )
    except ValueError:
        return None  # the budget is below what this method's structure needs
    scaler.set_progress_bar_config(disable=True)
    return scaler


def run_cell(scaler, args):
    """`args.seeds` independent searches → (runs, result)."""
    result = scaler(["toy"] * args.seeds, generator=torch.Generator().manual_seed(args.seed))
    runs = [{"reward": float(r), "nfe": int(n)} for r, n in zip(result.reward, result.nfe, strict=True)]
    return runs, result


def base_rates(flow, reward, args, num: int = 4096) -> dict:
    """One plain sample per draw (no search): mean reward ± s.e.m. and rare-mode share of the returned sample."""
    from diffusers_ttsplugin import FlowSDEScheduler
    from diffusers_ttsplugin.toy import integrate

    rates = {}
    for name, options in SAMPLERS.items():
        final = "integrate" if args.final_step == "integrate" else "tweedie"
        scheduler = FlowSDEScheduler(time_grid=args.time_grid, final_step=final, **options)
        scheduler.set_generator(torch.Generator().manual_seed(0))
        noise = torch.randn(num, flow.mixture.dim, generator=torch.Generator().manual_seed(1))
        x = integrate(flow.mixture.velocity, scheduler, noise, args.steps)
        values = reward(x, [""] * num)
        rates[name] = (*mean_sem(values.tolist()), float((values > 0.5).double().mean()))
    return rates


def diagnose(traces: dict, scalers: dict, args, budget: int) -> dict:
    """Why the methods rank as they do, from the traces of the searches at `budget`."""
    out = {}
    for sampler in ("linear-SDE", "VP-SDE"):
        d = {}
        smc = traces.get(("smc", sampler))
        if smc is not None:
            d["smc_resampling_events"] = len(smc.resampling_events()) / args.seeds
        rbf = traces.get(("rbf", sampler))
        if rbf is not None:
            per_step, accepts, exhausted, proposals, zeros = [0.0] * args.steps, 0, 0, [], 0
            for record in rbf.records:
                if record.kind == "propose":
                    per_step[record.step] += 1 / args.seeds
                    accepts += record.action == "accept"
                    exhausted += record.action == "exhausted"
                    proposals.append(record.rewards[0])
                    zeros += record.rewards[0] == 0.0
            d.update(
                rbf_nfe_per_step=[round(v, 1) for v in per_step[1:]],
                rbf_accepts=accepts / args.seeds,
                rbf_exhausted=exhausted / args.seeds,
                rbf_zero_rewards=zeros / max(len(proposals), 1),
            )
            scaler = scalers[("rbf", sampler)]
            d["noise_std_per_step"] = [round(float(c), 4) for c in scaler._coef_noise[:-1]]
        out[sampler] = d
    return out


def smc_variants(flow, reward, args, budget: int) -> list[dict]:
    """SMC's weighting options at `budget` (potential × initial weights × tempering), VP-SDE and linear-SDE."""
    rows = []
    for sampler in ("linear-SDE", "VP-SDE"):
        for potential, initial, tempering in itertools.product(POTENTIALS, INITIAL_WEIGHTS, TEMPERING):
            knobs = dict(potential=potential, initial_weights=initial, tempering=tempering)
            scaler = make_scaler(flow, reward, "smc", sampler, budget, args, **knobs)
            runs, result = run_cell(scaler, args)
            mean, sem = mean_sem([r["reward"] for r in runs])
            events = len(result.trace.resampling_events()) / args.seeds
            rows.append({"sampler": sampler, **knobs, "mean": mean, "sem": sem, "resamplings": events})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2, help="data dimension")
    parser.add_argument("--rare-weight", type=float, default=0.02, help="weight of the rewarded mode")
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200, 500], help="NFE budgets")
    parser.add_argument("--seeds", type=int, default=32, help="independent searches per cell")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator of every cell")
    parser.add_argument("--steps", type=int, default=10, help="grid steps")
    parser.add_argument(
        "--time-grid", default="auto", help="FlowSDEScheduler time grid (auto: per interpolant)"
    )
    parser.add_argument("--final-step", default="tweedie", help="tweedie or integrate")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="methods to run")
    parser.add_argument(
        "--rbf-budgets",
        type=int,
        nargs="+",
        default=[25, 50, 75, 100, 125, 150, 200],
        help="extra budgets for RBF + VP-SDE (to find where it reaches BoN)",
    )
    parser.add_argument("--no-smc-variants", action="store_true", help="skip the SMC weighting table")
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    parser.add_argument("--tag", default="toy_search", help="file name stem")
    args = parser.parse_args()
    torch.set_num_threads(1)
    flow, reward = toy_problem(args.dim, args.rare_weight)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    top = max(args.budgets)
    start = time.perf_counter()
    runs, traces, scalers = {}, {}, {}
    for method in args.methods:
        for sampler in SAMPLERS:
            budgets = set(args.budgets)
            if (method, sampler) == ("rbf", "VP-SDE"):
                budgets |= set(args.rbf_budgets)
            for budget in sorted(budgets):
                scaler = make_scaler(flow, reward, method, sampler, budget, args)
                if scaler is None:
                    continue
                runs[f"{method}|{sampler}|{budget}"], result = run_cell(scaler, args)
                if budget == top:
                    traces[(method, sampler)], scalers[(method, sampler)] = result.trace, scaler
        print(f"{method}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    variants = (
        [] if args.no_smc_variants or "smc" not in args.methods else smc_variants(flow, reward, args, top)
    )
    elapsed = time.perf_counter() - start

    lines = [
        f"Analytic flow: d = {args.dim}, rare-mode weight {args.rare_weight}, reward P(rare mode | sample) in float64 "
        f"(optimum 1), {args.steps} steps, time grid `{args.time_grid}`, final step `{args.final_step}`, "
        f"{args.seeds} independent searches per cell; mean ± s.e.m. (hit rate = share of searches whose sample is in "
        "the rare mode).",
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
                mean, sem = mean_sem([r["reward"] for r in cell])
                hits = sum(r["reward"] > 0.5 for r in cell) / len(cell)
                table[(method, sampler, budget)] = (mean, sem, hits)
                cells.append(f"{mean:.3f} ± {sem:.3f} ({hits:.0%})")
            lines.append(f"| {method} | {sampler} | " + " | ".join(cells) + " |")

    lines.append("")
    for bon_sampler in SAMPLERS:
        if ("bon", bon_sampler, top) not in table:
            continue
        target = table[("bon", bon_sampler, top)][0]
        reached = None
        for key in sorted(
            (k for k in runs if k.startswith("rbf|VP-SDE|")), key=lambda k: int(k.split("|")[2])
        ):
            if statistics.fmean(r["reward"] for r in runs[key]) >= target:
                reached = int(key.split("|")[2])
                break
        lines.append(
            f"- BoN ({bon_sampler}) at {top} NFE: {target:.3f}; RBF + VP-SDE reaches it (mean) at "
            + (f"{reached} NFE ({reached / top:.0%} of BoN's)" if reached else "no budget tried")
        )
    rates = base_rates(flow, reward, args)
    lines.append(
        "- One plain sample (no search), 4096 draws: "
        + "; ".join(
            f"{name} mean reward {m:.3f} ± {s:.3f}, rare-mode share {h:.1%}"
            for name, (m, s, h) in rates.items()
        )
    )
    why = diagnose(traces, scalers, args, top)
    for sampler, d in why.items():
        parts = []
        if "smc_resampling_events" in d:
            parts.append(f"SMC resamples {d['smc_resampling_events']:.1f} times")
        if "rbf_nfe_per_step" in d:
            parts.append(
                f"RBF NFE per search step 1..{args.steps - 1} = {d['rbf_nfe_per_step']} ({d['rbf_accepts']:.1f} "
                f"accepts, {d['rbf_exhausted']:.1f} exhausted quotas per search, both chains; proposal rewards "
                f"exactly 0: {d['rbf_zero_rewards']:.1%}); SDE noise std of each step (model frame) "
                f"{d['noise_std_per_step']}"
            )
        lines.append(f"- {sampler} at {top} NFE (mean over {args.seeds} searches): " + "; ".join(parts))
    if variants:
        lines += [
            "",
            f"SMC weighting variants at {top} NFE (λ = 0.1, threshold 0.5, multinomial; {args.seeds} searches):",
            "",
            "| sampler | potential | initial weights | tempering | reward | resamplings per search |",
            "|---|---|---|---|---|---|",
        ]
        for v in variants:
            lines.append(
                f"| {v['sampler']} | {v['potential']} | {v['initial_weights']} | {v['tempering']} | "
                f"{v['mean']:.3f} ± {v['sem']:.3f} | {v['resamplings']:.1f} |"
            )
    searches = sum(len(v) for v in runs.values()) + len(variants) * args.seeds
    lines.append("")
    lines.append(
        f"- {searches} searches in {elapsed:.0f} s on {platform.machine()} (torch {torch.__version__}, 1 thread)"
    )
    text = "\n".join(lines)
    print(text)
    (out / f"{args.tag}.md").write_text(text + "\n")
    (out / f"{args.tag}.json").write_text(
        json.dumps({"args": vars(args), "runs": runs, "smc_variants": variants, "diagnosis": why}, indent=0)
    )
    plot(runs, args, out / f"{args.tag}.png")
    print(f"wrote {out / (args.tag + '.md')}, .json, .png")


def plot(runs: dict, args, path: Path) -> None:
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
            stats = [mean_sem([r["reward"] for r in runs[k]]) for k in keys]
            ax.errorbar(
                nfe, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", markersize=3, capsize=2,
                label=method,
            )  # fmt: skip
        ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ticks = sorted(set(args.budgets) | {min(args.rbf_budgets)})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(sampler)
        ax.set_xlabel("NFE")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"P(rare mode), mean ± s.e.m. of {args.seeds}")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, format="png")


if __name__ == "__main__":
    main()
