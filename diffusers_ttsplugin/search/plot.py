"""Reward-vs-NFE curves as PNG (matplotlib's Agg canvas: no display, no global backend change)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .trace import SearchTrace

Series = SearchTrace | Sequence[Any] | Mapping[str, Sequence[float]]


def _points(series: Series, prompt: int) -> tuple[list[float], list[float], list[float] | None]:
    if isinstance(series, SearchTrace):
        nfe, reward = series.curve(prompt)
        return nfe, reward, None
    if isinstance(series, Mapping):
        return list(series["nfe"]), list(series["reward"]), (list(series["std"]) if "std" in series else None)
    parts = list(series)
    if len(parts) not in (2, 3):
        raise ValueError(
            "a series is a SearchTrace, (nfe, reward), (nfe, reward, std) or {'nfe', 'reward'[, 'std']}"
        )
    return list(parts[0]), list(parts[1]), (list(parts[2]) if len(parts) == 3 else None)


def plot_reward_vs_nfe(
    series: Mapping[str, Series],
    path: str | Path,
    title: str | None = None,
    xlabel: str = "NFE",
    ylabel: str = "reward",
    log_x: bool = False,
    prompt: int = 0,
    reference: float | None = None,
    reference_label: str = "optimum",
) -> Path:
    """Write one line per labelled series of reward against NFE to a PNG.

    Args:
        series: label → a [`SearchTrace`] (its anytime curve: best proposal reward vs NFE used), `(nfe, reward)`,
            `(nfe, reward, std)` (a shaded band), or a dict with keys "nfe", "reward" and optionally "std".
        path: Output file (`.png`); parent folders are created.
        title, xlabel, ylabel: Labels.
        log_x (`bool`, defaults to False): Logarithmic NFE axis.
        prompt (`int`, defaults to 0): Which prompt's curve to draw from traces.
        reference (`float`, *optional*): A horizontal line (e.g. the known optimum).
        reference_label (`str`): Legend entry of the reference line.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not series:
        raise ValueError("nothing to plot: `series` is empty")
    figure = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, values in series.items():
        nfe, reward, std = _points(values, prompt)
        if len(nfe) != len(reward):
            raise ValueError(f"series {label!r}: {len(nfe)} NFE values but {len(reward)} rewards")
        steps = isinstance(values, SearchTrace)
        if steps:
            axes.step(nfe, reward, where="post", label=label)
        else:
            axes.plot(nfe, reward, marker="o", markersize=3, label=label)
        if std is not None:
            low = [r - s for r, s in zip(reward, std, strict=True)]
            high = [r + s for r, s in zip(reward, std, strict=True)]
            axes.fill_between(nfe, low, high, alpha=0.15)
    if reference is not None:
        axes.axhline(reference, color="black", linestyle=":", linewidth=1, label=reference_label)
    if log_x:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
