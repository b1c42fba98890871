"""The LLM papers' accuracy-vs-compute curves on the embedded reasoner (s1, m1, TS, First Finish Search).

Runs `ttsplugin eval` (vllm_ttsplugin.reasoner.curves) and writes results.json, the PNG plots and the markdown
tables (reasoning_curves.md) to --out; the committed copy is benchmarks/results/reasoning/.

    python benchmarks/reasoning_curves.py --problems 500 --out benchmarks/results/reasoning
"""

from __future__ import annotations

import argparse
import os
import sys
import time


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
    for path in write_results(results, args.out):
        print(f"wrote {path}")
    print(f"took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
