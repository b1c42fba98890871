"""The LLM papers' accuracy-vs-compute measurements on the reasoner (`ttsplugin eval`).

Arms (all on the same test problems, one engine):
- no control: greedy and temperature 0.6;
- s1 max budget: `tts_max_think` at 1/8 .. 5/4 of the median natural thinking length (greedy);
- s1 forced waits: `tts_max_waits` = 0..6 with a minimum budget no trace reaches (ignore the end w times);
- m1 minimum budgets: `tts_min_think` at 1.5, 2, 3 x the median;
- TS: `tts_end_bias` and `tts_end_temperature` sweeps (greedy), plotted on the budget-forcing axes;
- First Finish Search at n = 4, 8, 16 (T = 0.6) vs one sample, majority@n and FFS-3@n: accuracy, tokens, time;
- FFS's premise: accuracy by a sample's length rank among the n samples of its problem.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from vllm_ttsplugin.reasoner.harness import (
    MAX_TOKENS,
    answer_of,
    load_llm,
    prompts_for,
    run_arm,
    sampling_params,
)
from vllm_ttsplugin.reasoner.stats import accuracy, mean_sem
from vllm_ttsplugin.reasoner.task import make_problems

FFS_TEMPERATURE = 0.6


def _by_steps(problems, correct) -> dict:
    groups: dict[int, list[bool]] = {}
    for problem, flag in zip(problems, correct, strict=True):
        groups.setdefault(problem.steps, []).append(flag)
    return {str(k): accuracy(v) for k, v in sorted(groups.items())}


def _search_arms(llm, problems, seed: int, sizes: tuple[int, ...], log) -> dict:
    from vllm_ttsplugin import first_finish, first_finish_vote, majority_vote_all

    prompts = prompts_for(llm, problems)
    params = sampling_params(temperature=FFS_TEMPERATURE, seed=seed)
    rows, premise = [], None
    for n in sizes:
        start = time.perf_counter()
        everything = majority_vote_all(llm, prompts, n=n, sampling_params=params, extractor=answer_of)
        majority_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ffs = first_finish(llm, prompts, n=n, k=1, sampling_params=params)
        ffs_seconds = time.perf_counter() - start
        start = time.perf_counter()
        ffs_vote = first_finish_vote(llm, prompts, n=n, k=3, sampling_params=params, extractor=answer_of)
        vote_seconds = time.perf_counter() - start
        truth = [str(p.answer) for p in problems]
        single = [answer_of(v.voters[0].text) == t for v, t in zip(everything, truth, strict=True)]
        per_sample = [
            answer_of(c.text) == t for v, t in zip(everything, truth, strict=True) for c in v.voters
        ]
        rows += [
            _row("one sample (sample 0)", n, single, [len(v.voters[0].token_ids) for v in everything], None),
            _row("mean over the n samples", n, per_sample, [v.num_tokens / n for v in everything], None),
            _row(f"majority@{n}", n, [v.answer == t for v, t in zip(everything, truth, strict=True)],
                 [v.num_tokens for v in everything], majority_seconds),
            _row(f"FFS@{n}", n, [r.winner is not None and answer_of(r.winner.text) == t
                                 for r, t in zip(ffs, truth, strict=True)],
                 [r.num_tokens for r in ffs], ffs_seconds),
            _row(f"FFS-3@{n}", n, [v.answer == t for v, t in zip(ffs_vote, truth, strict=True)],
                 [v.num_tokens for v in ffs_vote], vote_seconds),
        ]  # fmt: skip
        log(f"search n={n}: " + "; ".join(f"{r['method']} {r['accuracy']:.3f}" for r in rows[-5:]))
        if n == max(sizes):
            premise = _length_premise(everything, truth)
    return {"temperature": FFS_TEMPERATURE, "rows": rows, "length_vs_correctness": premise}


def _row(method: str, n: int, flags: list[bool], tokens: list[float], seconds: float | None) -> dict:
    mean, sem = mean_sem([float(t) for t in tokens])
    return {
        "method": method,
        "n": n,
        **accuracy(flags),
        "mean_generated_tokens": mean,
        "sem_generated_tokens": sem,
        "seconds": None if seconds is None else round(seconds, 2),
    }


def _length_premise(votes, truth) -> dict:
    """Accuracy by a sample's length rank among its problem's samples (0 = shortest; ties by index)."""
    n = len(votes[0].voters)
    by_rank: list[list[bool]] = [[] for _ in range(n)]
    correct_lengths, wrong_lengths = [], []
    for vote, answer in zip(votes, truth, strict=True):
        ranked = sorted(vote.voters, key=lambda c: (len(c.token_ids), c.index))
        for rank, completion in enumerate(ranked):
            ok = answer_of(completion.text) == answer
            by_rank[rank].append(ok)
            (correct_lengths if ok else wrong_lengths).append(float(len(completion.token_ids)))
    return {
        "n": n,
        "accuracy_by_length_rank": [accuracy(flags) for flags in by_rank],
        "mean_tokens_correct": mean_sem(correct_lengths),
        "mean_tokens_wrong": mean_sem(wrong_lengths),
    }


def evaluate(
    model: str | Path | None = None,
    *,
    num_problems: int = 500,
    seed: int = 0,
    search_sizes: tuple[int, ...] = (4, 8, 16),
    quick: bool = False,
    log=print,
) -> dict:
    """Run every arm on `num_problems` test problems; return the results (see `write_results`)."""
    started = time.perf_counter()
    problems = make_problems(num_problems, seed=seed, split="test")
    llm = load_llm(model, seed=seed)
    arms: dict[str, list[dict]] = {}

    def arm(group: str, name: str, extra: dict | None = None, **kw):
        result = run_arm(llm, problems, name, extra, seed=seed, **kw)
        arms.setdefault(group, []).append(result.summary())
        s = result.summary()
        log(f"{group:>16} {name:<28} acc {s['accuracy']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
            f"thinking {s['mean_thinking_tokens']:.1f}")  # fmt: skip
        return result

    greedy = arm("no_control", "greedy")
    arm("no_control", "T=0.6", temperature=0.6)
    natural = [t for t, e in zip(greedy.thinking, greedy.ends, strict=True) if e == "natural"]
    median = statistics.median(natural) if natural else float(MAX_TOKENS)
    quarter = max(1, round(median / 4))
    fractions = (0.25, 0.5, 1.0) if quick else (0.125, 0.25, 0.5, 0.75, 1.0, 1.25)
    for budget in sorted({max(1, round(median * f)) for f in fractions} | {quarter}):
        arm("max_budget", f"tts_max_think={budget}", {"tts_max_think": budget})
    for waits in range(0, 3 if quick else 7):
        arm("forced_waits", f"waits={waits}", {"tts_min_think": MAX_TOKENS - 50, "tts_max_waits": waits})
    for factor in (1.5,) if quick else (1.5, 2.0, 3.0):
        arm(
            "min_budget", f"tts_min_think={round(median * factor)}", {"tts_min_think": round(median * factor)}
        )
    for bias in (-4.0, 4.0) if quick else (-4.0, -2.0, -1.0, 1.0, 2.0, 4.0):
        arm("ts_end_bias", f"tts_end_bias={bias:g}", {"tts_end_bias": bias})
    for temp in (0.5,) if quick else (0.5, 0.75, 1.5, 2.0):
        arm("ts_end_temperature", f"tts_end_temperature={temp:g}", {"tts_end_temperature": temp})
    search = _search_arms(llm, problems, seed, (4,) if quick else search_sizes, log)
    return {
        "model": str(model) if model else "shipped (vllm_ttsplugin.reasoner.model_dir())",
        "num_problems": num_problems,
        "seed": seed,
        "split": "test",
        "engine": "vllm.LLM, float32, enable_chunked_prefill=False, TTSLogitsProcessor",
        "median_natural_thinking_tokens": median,
        "quarter_budget": quarter,
        "accuracy_by_steps_greedy": _by_steps(problems, greedy.correct),
        "arms": arms,
        "search": search,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _pct(row: dict) -> str:
    lo, hi = row["ci95"]
    return f"{100 * row['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown_tables(results: dict) -> str:
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
                f"{_fmt(r['sem_thinking_tokens'], '.1f')} | {_fmt(r['mean_generated_tokens'], '.1f')} | "
                f"{_fmt(r['mean_waits'], '.2f')} | {_fmt(r['seconds'], '.1f')} |"
            )
    search = results["search"]
    lines += [
        "",
        f"Search on {search.get('num_problems', results['num_problems'])} problems at temperature "
        f"{search['temperature']} (sample i seeded seed + i; the same samples for majority@n and FFS):",
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


def write_results(results: dict, out_dir: str | Path) -> list[Path]:
    """Write `results.json`, the markdown tables (`reasoning_curves.md`) and the PNG plots; return the paths."""
    from vllm_ttsplugin.reasoner.plots import plot_all

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    table = out / "reasoning_curves.md"
    table.write_text(markdown_tables(results))
    return [path, table, *plot_all(results, out)]
