"""PNG plots of `ttsplugin eval` results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def _errorbars(rows: list[dict]):
    acc = [r["accuracy"] for r in rows]
    lower = [r["accuracy"] - r["ci95"][0] for r in rows]
    upper = [r["ci95"][1] - r["accuracy"] for r in rows]
    return acc, [lower, upper]


def _finish(plt, fig, ax, path: Path, *, legend: bool = False) -> Path:
    """Grid, layout, save at the reports' resolution, close; returns the PNG's path."""
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = results["arms"]
    n = results["num_problems"]
    paths = []

    # 1. Accuracy vs mean thinking length: budget forcing (max, min, waits) and TS on the same axes.
    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {
        "max_budget": ("s1 max budget (tts_max_think)", "o-"),
        "forced_waits": ("s1 forced waits 0..6", "s--"),
        "min_budget": ("m1 min budget (tts_min_think)", "^--"),
        "ts_end_bias": ("TS tts_end_bias", "D:"),
        "ts_end_temperature": ("TS tts_end_temperature", "v:"),
    }
    for group, (label, style) in styles.items():
        rows = sorted(arms.get(group, []), key=lambda r: r["mean_thinking_tokens"])
        if rows:
            acc, err = _errorbars(rows)
            ax.errorbar([r["mean_thinking_tokens"] for r in rows], acc, yerr=err, fmt=style, label=label,
                        capsize=3, alpha=0.85)  # fmt: skip
    for row in arms.get("no_control", []):
        ax.errorbar([row["mean_thinking_tokens"]], [row["accuracy"]],
                    yerr=[[row["accuracy"] - row["ci95"][0]], [row["ci95"][1] - row["accuracy"]]],
                    fmt="k*", markersize=12, capsize=3, label=f"no control ({row['name']})")  # fmt: skip
    ax.set_xlabel("mean thinking tokens per problem")
    ax.set_ylabel(f"accuracy (n = {n}, 95 % Wilson CI)")
    ax.set_title("Thinking control on the reasoner: accuracy vs thinking length (greedy)")
    paths.append(_finish(plt, fig, ax, out / "thinking_control.png", legend=True))

    # 2. Forced waits: accuracy and thinking vs the number of waits.
    rows = arms.get("forced_waits", [])
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        acc, err = _errorbars(rows)
        ax.errorbar([r["settings"]["tts_max_waits"] for r in rows], acc, yerr=err, fmt="o-", capsize=3)
        ax.set_xlabel("forced waits (tts_max_waits, min budget out of reach)")
        ax.set_ylabel(f"accuracy (n = {n}, 95 % CI)")
        ax.set_title("s1: ignoring the end of thinking N times")
        paths.append(_finish(plt, fig, ax, out / "forced_waits.png"))

    # 3. Search: accuracy vs generated tokens for one sample, majority@n, FFS@n, FFS-3@n.
    search = results.get("search")
    if search and search["rows"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for prefix, style in (("majority@", "o-"), ("FFS@", "s-"), ("FFS-3@", "^-")):
            chosen = [r for r in search["rows"] if r["method"].startswith(prefix)]
            if chosen:
                acc, err = _errorbars(chosen)
                ax.errorbar([r["mean_generated_tokens"] for r in chosen], acc, yerr=err, fmt=style,
                            capsize=3, label=prefix + "n")  # fmt: skip
                for r in chosen:
                    ax.annotate(f"n={r['n']}", (r["mean_generated_tokens"], r["accuracy"]), fontsize=7)
        single = [r for r in search["rows"] if r["method"] == "mean over the n samples"]
        if single:
            r = single[-1]
            acc, err = _errorbars([r])
            ax.errorbar([r["mean_generated_tokens"]], acc, yerr=err, fmt="k*", markersize=12, capsize=3,
                        label="one sample")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens per problem (all samples)")
        ax.set_ylabel(f"accuracy (n = {search.get('num_problems', n)} problems, 95 % CI)")
        ax.set_title(f"First Finish Search vs majority vote (T = {search['temperature']})")
        paths.append(_finish(plt, fig, ax, out / "first_finish.png", legend=True))

        premise = search.get("length_vs_correctness")
        if premise:
            fig, ax = plt.subplots(figsize=(6, 4))
            rows = premise["accuracy_by_length_rank"]
            acc, err = _errorbars(rows)
            ax.errorbar(range(len(rows)), acc, yerr=err, fmt="o-", capsize=3)
            ax.set_xlabel(f"length rank among the {premise['n']} samples of a problem (0 = shortest)")
            ax.set_ylabel("accuracy (95 % CI)")
            ax.set_title("FFS's premise on the reasoner: are shorter traces more often right?")
            paths.append(_finish(plt, fig, ax, out / "length_vs_correctness.png"))

    # 4. Greedy accuracy by difficulty.
    by_steps = results.get("accuracy_by_steps_greedy")
    if by_steps:
        fig, ax = plt.subplots(figsize=(6, 4))
        keys = sorted(by_steps, key=int)
        acc, err = _errorbars([by_steps[k] for k in keys])
        ax.errorbar([int(k) for k in keys], acc, yerr=err, fmt="o-", capsize=3)
        ax.set_xlabel("operations in the problem")
        ax.set_ylabel("greedy accuracy (95 % CI)")
        ax.set_title("Difficulty: accuracy by number of operations")
        paths.append(_finish(plt, fig, ax, out / "accuracy_by_steps.png"))
    return paths
