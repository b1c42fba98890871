"""The Rollover Budget Forcing paper's tables in miniature, on the trained counting model.

Every method (base sampling, BoN, SoP, SMC, CoDe, SVDD, RBF) × sampler (ODE, linear SDE, VP-SDE) × NFE budget on
the counting task of `diffusers_ttsplugin.counting`: the reward is the paper's counting reward −Σ(count error)²
on the decoded Tweedie estimates, and the returned samples are scored with the paper's metrics, RSS and accuracy,
plus the trained matching score (`CountMatchReward`, our VQAScore stand-in). As in the paper, BoN and SoP run on the
ODE (they do not need a stochastic sampler) and the particle methods on all three samplers; base sampling on all
three. Each cell is `--prompts` test prompts (`make_prompts(P, seed=--seed)`), one search each, run as one
`InferenceScaler` call (every prompt has its own budget and particles): mean ± s.e.m. over the prompts, and the
exact NFE used per prompt. The diversity ablation draws `--diversity-samples` plain samples per prompt with each
sampler and reports the mean pairwise RMS pixel distance (LPIPS needs a network we cannot download) and the
fraction of sample pairs whose counts differ.

    python benchmarks/flow_search_tables.py --out benchmarks/results

On a shared CPU the grid can run as several processes (`--methods ... --no-diversity --tag A`, ...), and
`--combine A B ...` then writes the table, JSON and PNG from their partial JSON files.
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

from diffusers_ttsplugin.counting import (
    CountingReward,
    CountMatchReward,
    count_objects,
    counting_metrics,
    load_pipeline,
    make_prompts,
)
from diffusers_ttsplugin.search import InferenceScaler
from diffusers_ttsplugin.search.demo import mean_sem

SAMPLERS = {
    "ODE": {"sampler": "ode", "interpolant": "linear"},
    "linear-SDE": {"sampler": "sde", "interpolant": "linear"},
    "VP-SDE": {"sampler": "sde", "interpolant": "vp"},
}
#: (method, samplers) as in the paper's table: BoN and SoP on the ODE, particle methods on every sampler.
ROWS = [
    ("base", tuple(SAMPLERS)),
    ("bon", ("ODE",)),
    ("sop", ("ODE",)),
    ("smc", tuple(SAMPLERS)),
    ("code", tuple(SAMPLERS)),
    ("svdd", tuple(SAMPLERS)),
    ("rbf", tuple(SAMPLERS)),
]


def run_cell(pipe, reward, matcher, prompts, method, sampler, budget, args) -> dict:
    knobs = {"num_particles": 1} if method == "base" else {}
    scaler = InferenceScaler(
        pipe,
        reward,
        method="bon" if method == "base" else method,
        nfe_budget=args.steps if method == "base" else budget,
        num_steps=args.steps,
        max_batch_size=args.max_batch_size,
        **SAMPLERS[sampler],
        **knobs,
    )
    scaler.set_progress_bar_config(disable=True)
    texts = [p.prompt for p in prompts]
    start = time.perf_counter()
    result = scaler(texts, generator=torch.Generator().manual_seed(args.seed), output_type="pt")
    seconds = time.perf_counter() - start
    metrics = counting_metrics(count_objects(result.images), [p.counts for p in prompts])
    match = [float(v) for v in matcher(result.images, texts)]
    m_mean, m_sem = mean_sem(match)
    nfe = result.nfe.tolist()
    return {
        "method": method,
        "sampler": sampler,
        "budget": args.steps if method == "base" else budget,
        "nfe_min": min(nfe),
        "nfe_max": max(nfe),
        "plan": {k: v for k, v in vars(scaler.plan).items() if isinstance(v, int | float | str | bool)},
        **metrics,
        "reward_mean": statistics.fmean(float(r) for r in result.reward),
        "match": m_mean,
        "match_sem": m_sem,
        "seconds": seconds,
    }


def diversity(pipe, prompts, args) -> dict:
    """Per sampler: mean pairwise RMS distance between `k` plain samples of one prompt, and how often two samples'
    counts differ; mean ± s.e.m. over the prompts."""
    out = {}
    k = args.diversity_samples
    for sampler in SAMPLERS:
        scaler = InferenceScaler(
            pipe,
            CountingReward(),
            method="bon",
            nfe_budget=args.steps,
            num_steps=args.steps,
            num_particles=1,
            **SAMPLERS[sampler],
        )
        scaler.set_progress_bar_config(disable=True)
        texts = [p.prompt for p in prompts for _ in range(k)]
        images = scaler(
            texts, generator=torch.Generator().manual_seed(args.seed + 1), output_type="pt"
        ).images
        images = images.view(len(prompts), k, -1).double()
        counts = count_objects(images.view(-1, 3, 32, 32).float())
        pair_i, pair_j = zip(*itertools.combinations(range(k), 2), strict=True)
        distance = (images[:, list(pair_i)] - images[:, list(pair_j)]).pow(2).mean(-1).sqrt().mean(-1)
        differ = [
            statistics.fmean(
                counts[p * k + i] != counts[p * k + j] for i, j in zip(pair_i, pair_j, strict=True)
            )
            for p in range(len(prompts))
        ]
        d_mean, d_sem = mean_sem(distance.tolist())
        c_mean, c_sem = mean_sem(differ)
        out[sampler] = {
            "pixel_mpd": d_mean,
            "pixel_mpd_sem": d_sem,
            "count_differ": c_mean,
            "count_differ_sem": c_sem,
        }
        print(
            f"diversity {sampler:10s}: pixel MPD {d_mean:.4f} ± {d_sem:.4f}, counts differ {c_mean:.3f} ± {c_sem:.3f}"
        )
    return out


def predictiveness(pipe, args, num_prompts: int = 64, samples: int = 4) -> dict:
    """How well the counting reward of the decoded Tweedie estimate at step k predicts the final sample's: per
    sampler and step, P(final counts right | step-k counts right) and P(final right | step-k wrong), over
    `num_prompts` × `samples` plain trajectories (what per-step selection — SVDD, CoDe, RBF — relies on)."""
    from diffusers_ttsplugin import FlowSDEScheduler

    prompts = make_prompts(num_prompts, seed=args.seed + 2)
    texts = [p.prompt for p in prompts for _ in range(samples)]
    reward = CountingReward()
    out = {}
    euler = pipe.scheduler
    for sampler in ("linear-SDE", "VP-SDE"):
        pipe.scheduler = FlowSDEScheduler.from_config(euler.config, **SAMPLERS[sampler])
        pipe.scheduler.set_generator(torch.Generator().manual_seed(args.seed + 3))
        steps: list[torch.Tensor] = []

        def on_step(p, i, t, kwargs, steps=steps):
            x0 = p._unpack_latents(p.scheduler.pred_original_sample, 32, 32, p.vae_scale_factor)
            x0 = x0 / p.vae.config.scaling_factor + p.vae.config.shift_factor
            image = (p.vae.decode(x0, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
            steps.append(reward(image, texts) == 0)
            return {}

        final = pipe(
            texts,
            num_inference_steps=args.steps,
            output_type="pt",
            generator=torch.Generator().manual_seed(args.seed + 3),
            callback_on_step_end=on_step,
        ).images
        right = reward(final, texts) == 0
        rows = []
        for k, at_k in enumerate(steps[:-1]):
            given_right = float(right[at_k].double().mean()) if bool(at_k.any()) else float("nan")
            given_wrong = float(right[~at_k].double().mean()) if bool((~at_k).any()) else float("nan")
            rows.append(
                {
                    "step": k,
                    "right_at_k": float(at_k.double().mean()),
                    "p_final_given_right": given_right,
                    "p_final_given_wrong": given_wrong,
                }
            )
            print(
                f"{sampler:10s} step {k}: right at k {rows[-1]['right_at_k']:.3f}, P(final right | right) "
                f"{given_right:.3f}, P(final right | wrong) {given_wrong:.3f}",
                flush=True,
            )
        out[sampler] = {"final_accuracy": float(right.double().mean()), "n": len(texts), "steps": rows}
    pipe.scheduler = euler
    return out


def table(cells: list[dict], budgets: list[int]) -> str:
    header = "| method | sampler | " + " | ".join(f"{b} NFE: acc ↑ | RSS ↓ | match ↑ | NFE" for b in budgets)
    lines = [header, "|" + "---|" * (2 + 4 * len(budgets))]
    keys = list(dict.fromkeys((c["method"], c["sampler"]) for c in cells))
    for method, sampler in keys:
        row = [method, sampler]
        for b in budgets:
            c = next(
                (
                    x
                    for x in cells
                    if x["method"] == method
                    and x["sampler"] == sampler
                    and (x["budget"] == b or method == "base")
                ),
                None,
            )
            if c is None:
                row += ["–"] * 4
                continue
            nfe = f"{c['nfe_max']}" if c["nfe_min"] == c["nfe_max"] else f"{c['nfe_min']}–{c['nfe_max']}"
            row += [
                f"{c['accuracy']:.3f} ± {c['accuracy_sem']:.3f}",
                f"{c['rss']:.2f} ± {c['rss_sem']:.2f}",
                f"{c['match']:.3f} ± {c['match_sem']:.3f}",
                nfe,
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(cells: list[dict], budgets: list[int], path: Path, base_nfe: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    methods = [m for m, _ in ROWS if m != "base"]
    width = 0.8 / len(SAMPLERS)
    for ax, budget in zip(axes, budgets[:2], strict=False):
        for s, sampler in enumerate(SAMPLERS):
            xs, ys, es = [], [], []
            for i, method in enumerate(["base", *methods]):
                c = next(
                    (
                        x
                        for x in cells
                        if x["method"] == method
                        and x["sampler"] == sampler
                        and (x["budget"] == budget or method == "base")
                    ),
                    None,
                )
                if c:
                    xs.append(i + (s - 1) * width)
                    ys.append(c["accuracy"])
                    es.append(c["accuracy_sem"])
            ax.bar(xs, ys, width, yerr=es, label=sampler, capsize=2)
        ax.set_xticks(range(len(methods) + 1), ["base", *methods])
        ax.set_title(f"counting accuracy at {budget} NFE (base: {base_nfe} NFE)")
        ax.set_ylim(0, 1)
        ax.legend()
    fig.suptitle("Search on the trained counting model: mean ± s.e.m. over prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def combine(args) -> int:
    """Merge partial runs (`--tag`) into flow_search_tables.{json,md,png}, cells in the table's row order."""
    out = Path(args.out)
    parts = [json.loads((out / f"flow_search_tables_{tag}.json").read_text()) for tag in args.combine]
    order = {m: i for i, (m, _) in enumerate(ROWS)}
    cells = sorted(
        (c for part in parts for c in part["cells"]),
        key=lambda c: (order[c["method"]], list(SAMPLERS).index(c["sampler"]), c["budget"]),
    )
    record = {
        "commands": [p["command"] for p in parts],
        "args": parts[0]["args"],
        "machine": parts[0]["machine"],
        "cells": cells,
        "skipped": [s for p in parts for s in p.get("skipped", [])],
        "diversity": next((p["diversity"] for p in parts if "diversity" in p), None),
        "seconds_per_part": [p.get("seconds") for p in parts],
    }
    budgets = parts[0]["args"]["budgets"]
    (out / "flow_search_tables.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "flow_search_tables.md").write_text(table(cells, budgets) + "\n")
    plot(cells, budgets, out / "flow_search_tables.png", parts[0]["args"]["steps"])
    print(table(cells, budgets))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="test prompts per cell (default: 32)")
    parser.add_argument(
        "--budgets", type=int, nargs="+", default=[50, 100], help="NFE budgets (default: 50 100)"
    )
    parser.add_argument("--steps", type=int, default=10, help="grid steps (default: 10, the paper's)")
    parser.add_argument("--seed", type=int, default=0, help="prompt and search seed (default: 0)")
    parser.add_argument("--diversity-samples", type=int, default=8, help="samples per prompt for diversity")
    parser.add_argument("--max-batch-size", type=int, default=256, help="transformer rows per call")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, shared CPU)")
    parser.add_argument("--methods", nargs="+", default=[m for m, _ in ROWS], help="subset of the rows")
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    parser.add_argument("--no-diversity", action="store_true", help="skip the diversity ablation")
    parser.add_argument("--tag", default="", help="suffix of the partial JSON file (for split runs)")
    parser.add_argument("--combine", nargs="+", default=None, help="tags of partial runs to combine")
    parser.add_argument(
        "--predictiveness", action="store_true", help="only the per-step reward predictiveness diagnostic"
    )
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline()
    if args.predictiveness:
        result = predictiveness(pipe, args)
        (out / "flow_search_predictiveness.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    prompts = make_prompts(args.prompts, seed=args.seed)
    reward, matcher = CountingReward(), CountMatchReward()
    record = {
        "command": "python benchmarks/flow_search_tables.py " + " ".join(argv or []),
        "args": vars(args),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "cells": [],
    }
    json_path = out / f"flow_search_tables{'_' + args.tag if args.tag else ''}.json"
    start = time.perf_counter()
    for method, samplers in ROWS:
        if method not in args.methods:
            continue
        for sampler in samplers:
            for budget in args.budgets[:1] if method == "base" else args.budgets:
                try:
                    cell = run_cell(pipe, reward, matcher, prompts, method, sampler, budget, args)
                except ValueError as err:  # a budget too small for the method's structure
                    print(f"{method:5s} {sampler:10s} {budget:4d} NFE: skipped ({err})", flush=True)
                    record.setdefault("skipped", []).append([method, sampler, budget, str(err)])
                    continue
                record["cells"].append(cell)
                print(
                    f"{method:5s} {sampler:10s} {cell['budget']:4d} NFE (used {cell['nfe_min']}–{cell['nfe_max']}): "
                    f"acc {cell['accuracy']:.3f} ± {cell['accuracy_sem']:.3f}, RSS {cell['rss']:.2f} ± "
                    f"{cell['rss_sem']:.2f}, match {cell['match']:.3f} ({cell['seconds']:.0f} s)",
                    flush=True,
                )
                json_path.write_text(json.dumps(record, indent=2) + "\n")  # partial results survive
    if not args.no_diversity:
        record["diversity"] = diversity(pipe, prompts, args)
    record["seconds"] = time.perf_counter() - start
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    if args.tag:
        return 0
    (out / "flow_search_tables.md").write_text(table(record["cells"], args.budgets) + "\n")
    plot(record["cells"], args.budgets, out / "flow_search_tables.png", args.steps)
    print(table(record["cells"], args.budgets))
    print(f"total {record['seconds']:.0f} s -> {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
