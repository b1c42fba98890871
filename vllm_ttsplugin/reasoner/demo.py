"""The LLM half of `ttsplugin demo` on the shipped reasoner: accuracy with and without each control."""

from __future__ import annotations

import statistics
import time

from vllm_ttsplugin.reasoner.stats import accuracy


def _line(label: str, flags: list[bool], thinking: float | None, tokens: float, seconds: float) -> str:
    summary = accuracy(flags)
    lo, hi = summary["ci95"]
    think = "-" if thinking is None else f"{thinking:.1f}"
    return (
        f"{label:<34}{summary['correct']:>3}/{summary['n']:<3} {100 * summary['accuracy']:5.1f} % "
        f"[{100 * lo:4.1f}, {100 * hi:5.1f}]{think:>9}{tokens:>9.1f}{seconds:>7.1f}"
    )


def run_reasoner_demo(num_problems: int = 16, seed: int = 0, log=print) -> dict:
    """Load the shipped reasoner into vLLM, solve `num_problems` test problems with and without each control."""
    from vllm_ttsplugin import first_finish, majority_vote_all
    from vllm_ttsplugin.reasoner.files import model_dir
    from vllm_ttsplugin.reasoner.harness import (
        MAX_TOKENS,
        answer_of,
        load_llm,
        prompts_for,
        run_arm,
        sampling_params,
    )
    from vllm_ttsplugin.reasoner.task import make_problems

    start = time.perf_counter()
    folder = model_dir()
    llm = load_llm(folder, seed=seed)
    log(f"loaded the reasoner {folder} into vllm.LLM (float32, TTSLogitsProcessor) in "
        f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    problems = make_problems(num_problems, seed=seed, split="test")
    greedy = run_arm(llm, problems, "greedy")
    example = llm.generate(
        prompts_for(llm, problems[:1]), sampling_params(), use_tqdm=False
    )[0].outputs[0].text  # fmt: skip
    log(f"example: {problems[0].question} = {problems[0].answer}; the model writes:\n  {example!r}")
    median = statistics.median(greedy.thinking)
    quarter = max(1, round(median / 4))
    log(f"\n{num_problems} test problems (never seen in training); median natural thinking {median:g} tokens")
    log(f"{'setting':<34}{'correct':>7} {'accuracy [95% CI]':>20}{'thinking':>9}{'tokens':>9}{'s':>7}")
    rows = {}

    def show(label: str, result) -> None:
        rows[label] = result.accuracy
        log(_line(label, result.correct, result.mean_thinking, result.mean_tokens, result.seconds))

    show("no control, greedy", greedy)
    show("no control, T=0.6", run_arm(llm, problems, "T=0.6", temperature=0.6, seed=seed))
    show(f"max budget tts_max_think={quarter}", run_arm(llm, problems, "max", {"tts_max_think": quarter}))
    show(
        "2 forced waits (s1)",
        run_arm(llm, problems, "w", {"tts_min_think": MAX_TOKENS - 50, "tts_max_waits": 2}),
    )
    show("TS tts_end_bias=+4 (shorter)", run_arm(llm, problems, "ts+", {"tts_end_bias": 4.0}))
    show("TS tts_end_bias=-1 (longer)", run_arm(llm, problems, "ts-", {"tts_end_bias": -1.0}))
    prompts = prompts_for(llm, problems)
    params = sampling_params(temperature=0.6, seed=seed)
    for n in (8,):
        t0 = time.perf_counter()
        races = first_finish(llm, prompts, n=n, k=1, sampling_params=params)
        ffs_seconds = time.perf_counter() - t0
        flags = [
            r.winner is not None and answer_of(r.winner.text) == str(p.answer)
            for r, p in zip(races, problems, strict=True)
        ]
        tokens = sum(r.num_tokens for r in races) / len(races)
        rows[f"FFS@{n}"] = accuracy(flags)
        log(_line(f"First Finish Search n={n} (T=0.6)", flags, None, tokens, ffs_seconds))
        t0 = time.perf_counter()
        votes = majority_vote_all(llm, prompts, n=n, sampling_params=params, extractor=answer_of)
        vote_seconds = time.perf_counter() - t0
        flags = [v.answer == str(p.answer) for v, p in zip(votes, problems, strict=True)]
        tokens = sum(v.num_tokens for v in votes) / len(votes)
        rows[f"majority@{n}"] = accuracy(flags)
        log(_line(f"majority vote of {n} (T=0.6)", flags, None, tokens, vote_seconds))
    log(
        "(thinking = mean thinking tokens per completion; tokens = generated tokens per problem, all samples)"
    )
    log("full curves on 500 problems: `ttsplugin eval` (README, BENCHMARKS.md)")
    return rows
