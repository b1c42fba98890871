"""The particle-search part of `ttsplugin demo`: every method on the analytic flow and on a (tiny) FLUX pipeline.

Fast by design (seconds on a laptop CPU): small budgets, a 2-D analytic flow, a 32×32 tiny FLUX.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from .planning import METHODS


@contextlib.contextmanager
def _single_thread():
    # Tiny models are latency-bound: one thread avoids OpenMP spinning on a shared CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def toy_problem(dim: int = 2, rare_weight: float = 0.02):
    """The analytic flow of the demo and the benchmark: `default_mixture(dim)` with its outer mode made rare.

    Returns `(flow, reward)`: an `AnalyticFlow` and a [`~diffusers_ttsplugin.rewards.MixtureModeReward`] on the rare
    mode (optimum 1: a sample the mixture assigns to that mode with certainty).
    """
    from ..rewards import MixtureModeReward
    from ..toy import AnalyticFlow, GaussianMixture, default_mixture

    base = default_mixture(dim)
    weights = base.weights.clone()
    rare = base.num_components - 1
    weights[:rare] = weights[:rare] / weights[:rare].sum() * (1.0 - rare_weight)
    weights[rare] = rare_weight
    mixture = GaussianMixture(weights, base.means, base.covariances)
    return AnalyticFlow(mixture), MixtureModeReward(mixture, rare)


def run_search_demo(
    workdir: Path, seed: int = 0, device: str = "cpu", pipeline: str | None = None, seeds: int = 3
) -> dict:
    """Run all methods on the analytic flow (budgets 20–200) and on tiny FLUX (12 and 24 NFE); write two PNGs."""
    from . import InferenceScaler, plot_reward_vs_nfe

    out = Path(workdir) / "search"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"toy": {}, "pipeline": {}}
    with _single_thread():
        flow, reward = toy_problem()
        budgets = (20, 50, 100, 200)
        start = time.perf_counter()
        series = {}
        for method in METHODS:
            points = ([], [])
            for budget in budgets:
                try:
                    scaler = InferenceScaler(flow, reward, method=method, nfe_budget=budget, num_steps=10)
                except ValueError:
                    continue  # budget too small for this method's structure
                scaler.set_progress_bar_config(disable=True)
                values = [
                    float(scaler("toy", generator=torch.Generator().manual_seed(seed + s)).reward[0])
                    for s in range(seeds)
                ]
                points[0].append(budget)
                points[1].append(sum(values) / len(values))
            series[method] = points
            summary["toy"][method] = dict(zip(*points, strict=True))
            print(
                f"analytic flow  {method:4s}: "
                + "  ".join(f"{b} NFE → {r:.3f}" for b, r in zip(*points, strict=True))
            )
        toy_png = plot_reward_vs_nfe(
            series,
            out / "search_toy.png",
            title="analytic flow: P(rare mode) of the returned sample",
            reference=1.0,
        )
        print(
            f"analytic flow: {len(METHODS)} methods × {len(budgets)} budgets × {seeds} seeds in "
            f"{time.perf_counter() - start:.1f} s -> {toy_png}"
        )

        from ..rewards import BrightnessReward

        if pipeline:
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(pipeline).to(device)
            options: dict = {}
        else:
            from ..testing import build_tiny_flux_pipeline

            pipe = build_tiny_flux_pipeline(seed=seed).to(device)
            options = {"height": 32, "width": 32, "max_sequence_length": 32}
        series, start = {}, time.perf_counter()
        for method in METHODS:
            points = ([], [])
            for budget in (12, 24):
                scaler = InferenceScaler(
                    pipe, BrightnessReward(), method=method, nfe_budget=budget, num_steps=3
                )
                scaler.set_progress_bar_config(disable=True)
                result = scaler(
                    "a photo of a red apple", generator=torch.Generator(device).manual_seed(seed), **options
                )
                points[0].append(int(result.nfe[0]))
                points[1].append(float(result.reward[0]))
            result.images[0].save(out / f"flux_{method}.png")
            result.trace.to_json(out / f"flux_{method}_trace.json")
            series[method] = points
            summary["pipeline"][method] = {"reward": points[1][-1], "nfe": points[0][-1]}
            print(
                f"{type(pipe).__name__} {method:4s}: brightness "
                + "  ".join(f"{r:.4f} with {n} NFE" for n, r in zip(*points, strict=True))
            )
        flux_png = plot_reward_vs_nfe(
            series, out / "search_flux.png", title=f"{type(pipe).__name__}: brightness of the returned image"
        )
        print(
            f"{type(pipe).__name__}: {len(METHODS)} methods × 2 budgets in {time.perf_counter() - start:.1f} s -> {flux_png}"
        )
    summary["plots"] = [str(toy_png), str(flux_png)]
    return summary
