"""The LLM papers' accuracy-vs-compute curves on the embedded reasoner (s1, m1, TS, First Finish Search).

Runs `ttsplugin eval` (vllm_ttsplugin.reasoner.curves) and writes results.json, the PNG plots and a markdown
table (reasoning_curves.md) to --out; the committed copy is benchmarks/results/reasoning/.

    python benchmarks/reasoning_curves.py --problems 500 --out benchmarks/results/reasoning
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _pct(row: dict) -> str:
    lo, hi = row["ci95"]
    return f"{100 * row['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown(results: dict) -> str:
    """The tables of BENCHMARKS.md for these results."""
    lines = [
        f"Test split, {results['num_problems']} problems (seed {results['seed']}), {results['engine']}; "
        f"median natural thinking length (greedy) {results['median_natural_thinking_tokens']:g} tokens. "
        "Accuracy in % with 95 % Wilson intervals.",
        "",
        "| arm | setting | accuracy % [95 % CI] | mean thinking tokens | mean generated tokens | waits | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, rows in results["arms"].items():
        for r in rows:
            lines.append(
                f"| {group} | {r['name']} | {_pct(r)} | {r['mean_thinking_tokens']:.1f} ± "
                f"{r['sem_thinking_tokens']:.1f} | {r['mean_generated_tokens']:.1f} | {r['mean_waits']:.2f} | "
                f"{r['seconds']:.1f} |"
            )
    search = results["search"]
    lines += [
        "",
        f"Search at temperature {search['temperature']} (sample i seeded seed + i; the same samples for "
        "majority@n and FFS):",
        "",
        "| method | n | accuracy % [95 % CI] | generated tokens per problem | wall s |",
        "|---|---|---|---|---|",
    ]
    for r in search["rows"]:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(
            f"| {r['method']} | {r['n']} | {_pct(r)} | {r['mean_generated_tokens']:.1f} | {seconds} |"
        )
    premise = search.get("length_vs_correctness")
    if premise:
        ranks = premise["accuracy_by_length_rank"]
        lines += [
            "",
            f"Length vs correctness ({premise['n']} samples per problem, rank 0 = shortest): "
            + ", ".join(f"rank {i}: {100 * r['accuracy']:.1f} %" for i, r in enumerate(ranks))
            + f". Mean tokens of correct samples {premise['mean_tokens_correct'][0]:.1f} ± "
            f"{premise['mean_tokens_correct'][1]:.1f}, of wrong ones {premise['mean_tokens_wrong'][0]:.1f} ± "
            f"{premise['mean_tokens_wrong'][1]:.1f}.",
        ]
    lines += ["", "Greedy accuracy by operations: " + ", ".join(
        f"{k}: {_pct(v)}" for k, v in results["accuracy_by_steps_greedy"].items()
    )]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped reasoner)")
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few arms only")
    parser.add_argument("--out", default="build/reasoning_curves")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from vllm_ttsplugin.reasoner.curves import evaluate, write_results

    start = time.perf_counter()
    results = evaluate(
        args.model, num_problems=args.problems, seed=args.seed, quick=args.quick,
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    paths = write_results(results, args.out)
    table = Path(args.out) / "reasoning_curves.md"
    table.write_text(markdown(results))
    for path in [*paths, table]:
        print(f"wrote {path}")
    print(f"took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
