"""`ttsplugin train-reasoner` and `ttsplugin eval`: reproduce the embedded reasoner and measure it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ttsplugin.demo import positive_int


def add_train_parser(subparsers) -> None:
    from vllm_ttsplugin.reasoner.train import TrainConfig

    defaults = TrainConfig()
    p = subparsers.add_parser(
        "train-reasoner",
        help="train the embedded reasoning model from a seed (CPU, one thread, ~8-15 min)",
        description=(
            "Train the reasoner (a Qwen2 causal LM, BPE tokenizer, chat template opening <think>) on the train "
            "split of the arithmetic-chain task and write a Hugging Face folder (weights, tokenizer, "
            "training.json, SHA256SUMS) that vllm.LLM, the OpenAI server and transformers load. The defaults "
            "reproduce the shipped model (vllm_ttsplugin/reasoner/model)."
        ),
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"seed (default: {defaults.seed})")
    p.add_argument(
        "--steps",
        type=positive_int,
        default=defaults.steps,
        help=f"optimizer steps (default: {defaults.steps})",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=defaults.threads,
        help=f"torch CPU threads (default: {defaults.threads})",
    )
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=None,
        help="also save OUT/checkpoint-STEP folders every this many steps (for development)",
    )
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from vllm_ttsplugin.reasoner.files import write_checksums
    from vllm_ttsplugin.reasoner.train import TrainConfig, train

    config = TrainConfig(seed=args.seed, steps=args.steps, threads=args.threads)
    record = train(
        args.out, config, log=lambda line: print(line, flush=True), checkpoint_every=args.checkpoint_every
    )
    write_checksums(args.out)
    print(json.dumps(record, indent=2))
    return 0


def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure accuracy vs thinking length and search cost on the reasoner's test split (vLLM)",
        description=(
            "Run the held-out test split through vllm.LLM with TTSLogitsProcessor: no control (greedy, T=0.6), "
            "s1 max-budget sweep, forced waits 0..6, m1 min budgets, TS end-bias and end-temperature sweeps, "
            "First Finish Search vs majority vote. Writes results.json and PNG plots to --out; every accuracy has "
            "a 95%% Wilson interval."
        ),
    )
    p.add_argument("--model", default=None, help="model folder (default: the shipped reasoner)")
    p.add_argument("--out", default="build/eval", help="output folder (default: build/eval)")
    p.add_argument("--problems", type=positive_int, default=500, help="test problems (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="problem set and sampling seed (default: 0)")
    p.add_argument("--quick", action="store_true", help="a few arms only (a smoke run)")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from vllm_ttsplugin.reasoner.curves import evaluate, write_results

    if args.model and not Path(args.model).is_dir():
        print(f"error: --model: {args.model} is not a folder", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = evaluate(
        args.model, num_problems=args.problems, seed=args.seed, quick=args.quick,
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    for path in write_results(results, args.out):
        print(f"wrote {path}")
    print(f"eval took {time.perf_counter() - start:.0f} s")
    return 0
