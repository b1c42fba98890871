"""DeepConf vs majority voting vs First Finish Search vs one sample, on the embedded reasoner (issue 11's model).

For each n (default 16 and 32), on the same problems, one engine, the same seeds (trace i of a problem is seeded
``seed + i`` in every arm, so every arm draws from the same traces and DeepConf's are cut-short copies of the
majority vote's):

- ``single``: one sample per problem;
- ``majority@n``: n samples to the end, plain majority vote (`majority_vote_all`);
- ``ffs@n``: First Finish Search, the first natural finisher's answer (`first_finish_vote`, k=1);
- ``deepconf-offline-eta{keep}@n``: n samples to the end, the top ``keep`` % by lowest-window confidence vote,
  weighted (one generation, one vote per eta);
- ``deepconf-online-eta{keep}@n``: warm-up traces set the threshold (the ``100 - keep`` percentile of their
  lowest-window confidences), the rest are stopped in-engine below it, consensus stop at tau
  (`deep_conf(mode="online")`).

Reports per arm: accuracy with a 95 % Wilson interval over problems, generated tokens per problem (mean +- 95 %
interval, 1.96 s.e.m.), and the arm's wall time (one run, all problems batched; the machine may be shared).

    python benchmarks/deepconf.py --problems 64 --n 16 32 --json build/bench/deepconf.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

Z95 = 1.959963984540054


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the shipped reasoner)")
    p.add_argument("--problems", type=int, default=64, help="test problems (default: 64)")
    p.add_argument("--n", type=int, nargs="+", default=[16, 32], help="traces per problem (default: 16 32)")
    p.add_argument("--seed", type=int, default=0, help="problem set and sampling seed (default: 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1)")
    p.add_argument("--max-tokens", type=int, default=400, help="max tokens per trace (default: 400)")
    p.add_argument(
        "--window", type=int, default=16, help="confidence window (default: 16: short traces here)"
    )
    p.add_argument(
        "--keep",
        type=float,
        nargs="+",
        default=[10.0, 90.0],
        help="DeepConf's eta, percent kept: DeepConf-low 10, DeepConf-high 90 (default: 10 90)",
    )
    p.add_argument("--warmup", type=int, default=None, help="online warm-up traces (default: n // 4)")
    p.add_argument(
        "--consensus", type=float, default=0.95, help="online consensus tau (default: 0.95; 0: off)"
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def wilson(successes: int, n: int) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    center = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return center - half, center + half


def row(name: str, n: int, correct: list[bool], tokens: list[int], seconds: float) -> dict:
    k = sum(correct)
    low, high = wilson(k, len(correct))
    mean = sum(tokens) / len(tokens)
    sem = (
        math.sqrt(sum((t - mean) ** 2 for t in tokens) / (len(tokens) - 1) / len(tokens))
        if len(tokens) > 1
        else 0
    )
    return {
        "arm": name,
        "n": n,
        "problems": len(correct),
        "accuracy": k / len(correct),
        "accuracy_ci95": [low, high],
        "tokens_per_problem": mean,
        "tokens_ci95": Z95 * sem,
        "seconds": round(seconds, 2),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from vllm import LLM, SamplingParams

    from vllm_ttsplugin import TTSLogitsProcessor, deep_conf, first_finish_vote, majority_vote_all
    from vllm_ttsplugin.deepconf import confidence_vote
    from vllm_ttsplugin.reasoner import extract_answer, make_problems, model_dir

    def answer_of(text: str) -> str | None:
        value = extract_answer(text)
        return None if value is None else str(value)

    kwargs = dict(
        seed=args.seed,
        dtype="float32",
        enable_chunked_prefill=False,
        enforce_eager=True,
        kv_cache_memory_bytes=1024 * 2**20,
        max_model_len=1024,
        max_num_batched_tokens=8192,
        max_num_seqs=256,
        logits_processors=[TTSLogitsProcessor],
    )
    if args.temperature != 1.0:
        kwargs["logprobs_mode"] = (
            "processed_logprobs"  # deep_conf reads confidences at the request's temperature
        )
    llm = LLM(str(args.model or model_dir()), **kwargs)
    problems = make_problems(args.problems, seed=args.seed, split="test")
    tokenizer = llm.get_tokenizer()
    prompts = [
        tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
        for p in problems
    ]
    truth = [str(p.answer) for p in problems]
    base = SamplingParams(
        temperature=args.temperature, seed=args.seed, max_tokens=args.max_tokens, skip_special_tokens=False
    )
    llm.generate(prompts[:4], base, use_tqdm=False)  # warm-up
    rows = []

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    outs, seconds = timed(lambda: llm.generate(prompts, base, use_tqdm=False))
    rows.append(
        row(
            "single",
            1,
            [answer_of(o.outputs[0].text) == t for o, t in zip(outs, truth, strict=True)],
            [len(o.outputs[0].token_ids) for o in outs],
            seconds,
        )
    )

    def graded(name: str, n: int, results, seconds: float) -> dict:
        answers = [r.answer for r in results]
        tokens = [r.num_tokens if hasattr(r, "num_tokens") else r.tokens for r in results]
        return row(name, n, [a == t for a, t in zip(answers, truth, strict=True)], tokens, seconds)

    for n in args.n:
        options = dict(window=args.window, extractor=answer_of)
        arms = {
            f"majority@{n}": partial(majority_vote_all, llm, prompts, n, base, extractor=answer_of),
            f"ffs@{n}": partial(first_finish_vote, llm, prompts, n, 1, base, extractor=answer_of),
        }
        for name, run in arms.items():
            results, seconds = timed(run)
            rows.append(graded(name, n, results, seconds))
            print(json.dumps(rows[-1]), flush=True)
        # Offline: one generation; each eta is a different vote over the same traces (same time).
        results, seconds = timed(
            partial(deep_conf, llm, prompts, n, mode="offline", sampling_params=base, **options)
        )
        for keep in args.keep:
            votes = [
                SimpleNamespace(answer=confidence_vote(r.traces, keep)[0], tokens=r.tokens) for r in results
            ]
            rows.append(graded(f"deepconf-offline-eta{keep:g}@{n}", n, votes, seconds))
            print(json.dumps(rows[-1]), flush=True)
        for keep in args.keep:
            online = dict(options, keep_percent=keep, consensus=args.consensus or None)
            if args.warmup is not None:
                online["warmup"] = args.warmup
            results, seconds = timed(partial(deep_conf, llm, prompts, n, sampling_params=base, **online))
            rows.append(graded(f"deepconf-online-eta{keep:g}@{n}", n, results, seconds))
            rows[-1]["stopped_traces"] = sum(t.stopped for r in results for t in r.traces)
            rows[-1]["aborted_traces"] = sum(t.aborted for r in results for t in r.traces)
            rows[-1]["converged_problems"] = sum(r.converged for r in results)
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'arm':<22}{'accuracy (95% CI)':>26}{'tokens/problem':>20}{'seconds':>10}")
    for r in rows:
        low, high = r["accuracy_ci95"]
        print(
            f"{r['arm']:<22}{r['accuracy']:>9.3f} [{low:.3f}, {high:.3f}]{r['tokens_per_problem']:>12.1f} +- "
            f"{r['tokens_ci95']:<6.1f}{r['seconds']:>10.1f}"
        )
    result = {
        "command": " ".join(["python", "benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]]),
        "args": vars(args),
        "rows": rows,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
