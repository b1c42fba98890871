"""First Finish Search vs. generating all n samples to completion: wall time to answer and tokens generated.

Same prompts, same seeds (sample i of every method uses seed + i), one engine, all methods in the same run:

- ``all n``: ``LLM.generate(prompts, SamplingParams(n=n))``, every sample runs to its end (what majority voting
  over n needs);
- ``FFS in-engine``: the same call with ``extra_args={"tts_first_finish": k}`` through
  `TTSLogitsProcessor` with `tts_first_finish` (siblings stopped inside the engine);
- ``FFS engine-level``: `vllm_ttsplugin.first_finish` (separate requests, losers aborted between steps).

Wall time covers the whole call (all prompts answered); each cell is the median of ``--repeats`` runs after one
warm-up. The tiny model almost never emits EOS on its own, so ``--eos-bias`` raises its logit to give samples
varied natural lengths (like reasoning traces of different lengths); with ``--model`` set it to 0.

    python benchmarks/ffs_vs_all.py --n 4 8 16 --prompts 8 --max-tokens 256 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

QUESTIONS = [
    "What is 2 + 2?",
    "A train travels 60 miles per hour for 2 hours. How far does it go?",
    "Find the area of a circle with radius 3.",
    "If a = 3 and b = 4, what is c in a right triangle?",
    "What is the probability of rolling a six on a fair die?",
    "What is 12 times 12?",
    "The sum of 17 and 25 is what number?",
    "How many minutes are in 3 hours?",
    "What is the square root of 144?",
    "A shop sells apples for 2 dollars each. How much do 7 apples cost?",
    "What is 15 percent of 200?",
    "Solve for x: 2x + 6 = 20.",
    "What is the next prime after 13?",
    "How many sides does a hexagon have?",
    "What is 1000 divided by 8?",
    "A rectangle is 5 by 9. What is its area?",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=None, help="model folder (default: the tiny reasoning model, built locally)"
    )
    p.add_argument(
        "--n", type=int, nargs="+", default=[4, 8, 16], help="samples per prompt (default: 4 8 16)"
    )
    p.add_argument("--k", type=int, default=1, help="natural finishes that end a race (default: 1)")
    p.add_argument("--prompts", type=int, default=8, help=f"number of prompts, at most {len(QUESTIONS)}")
    p.add_argument("--max-tokens", type=int, default=256, help="max tokens per sample (default: 256)")
    p.add_argument(
        "--eos-bias", type=float, default=2.5, help="logit bias on EOS (default: 2.5; 0 for real models)"
    )
    p.add_argument("--seed", type=int, default=0, help="base seed; sample i uses seed + i (default: 0)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell, median reported (default: 3)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vllm import LLM, SamplingParams

    from vllm_ttsplugin import TTSLogitsProcessor, first_finish
    from vllm_ttsplugin.testing import build_tiny_reasoning_model, small_engine_kwargs

    model = args.model
    if model is None:
        model = str(Path(tempfile.mkdtemp(prefix="ffs-bench-")) / "tiny")
        build_tiny_reasoning_model(model, seed=0)
    llm = LLM(
        model,
        seed=args.seed,
        logits_processors=[TTSLogitsProcessor],
        **small_engine_kwargs(max_model_len=args.max_tokens + 128, kv_cache_mib=1024),
    )
    tokenizer = llm.get_tokenizer()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in QUESTIONS[: args.prompts]
    ]
    bias = {tokenizer.eos_token_id: args.eos_bias} if args.eos_bias else None

    def params(n: int, **extra) -> SamplingParams:
        return SamplingParams(
            n=n, temperature=1.0, seed=args.seed, max_tokens=args.max_tokens, logit_bias=bias, **extra
        )

    def run_all(n: int) -> int:
        outputs = llm.generate(prompts, params(n), use_tqdm=False)
        run_all.outputs = outputs
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    def run_in_engine(n: int) -> int:
        outputs = llm.generate(prompts, params(n, extra_args={"tts_first_finish": args.k}), use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    def run_engine_level(n: int) -> int:
        results = first_finish(llm, prompts, n=n, k=args.k, sampling_params=params(1))
        return sum(r.num_tokens for r in results)

    methods = [("all n", run_all), ("FFS in-engine", run_in_engine), ("FFS engine-level", run_engine_level)]
    print(f"# {' '.join(sys.argv)}")
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{len(prompts)} prompts, k={args.k}, max_tokens={args.max_tokens}, EOS bias {args.eos_bias}, "
        f"median of {args.repeats}"
    )
    print("| n | method | wall time (s) | tokens | time vs all n | tokens vs all n |")
    print("|---|---|---|---|---|---|")
    for n in args.n:
        for _, run in methods:  # warm-up (shapes of this n)
            run(n)
        cells = {}
        for name, run in methods:
            times, tokens = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                count = run(n)
                times.append(time.perf_counter() - start)
                assert tokens in (None, count), "seeded runs must generate the same tokens"
                tokens = count
            cells[name] = (statistics.median(times), tokens)
        base_time, base_tokens = cells["all n"]
        samples = [c for o in run_all.outputs for c in o.outputs]
        natural = sum(c.finish_reason == "stop" for c in samples)
        shortest = [
            min((len(c.token_ids) for c in o.outputs if c.finish_reason == "stop"), default=args.max_tokens)
            for o in run_all.outputs
        ]
        print(
            f"| {n} | _without FFS: {natural}/{len(samples)} samples end naturally, mean length "
            f"{base_tokens / len(samples):.0f}, first finish per prompt at {statistics.mean(shortest):.0f} tokens "
            f"(mean), last at {max(shortest)}_ | | | | |"
        )
        for name, (seconds, tokens) in cells.items():
            print(
                f"| {n} | {name} | {seconds:.2f} | {tokens} | {seconds / base_time:.2f} | {tokens / base_tokens:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
