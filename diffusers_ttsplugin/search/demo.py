"""The particle-search part of `ttsplugin demo`: every method on the analytic flow and on a flow pipeline.

The pipeline is the trained counting model of `diffusers_ttsplugin.counting` (reward: the paper's counting reward,
on `seeds` different test prompts), or the user's `--pipeline` (reward: brightness, on one prompt). Every point is
the mean ± s.e.m. over `seeds` independent searches (32 by default). They run as `seeds` prompts of one
`InferenceScaler` call: each prompt gets its own budget and its own particles (drawn from one generator), so the
searches are independent replicates, batched. Small budgets, a 2-D analytic flow and 32×32 images keep it to
seconds per method on a laptop CPU.
"""

from __future__ import annotations

import contextlib
import math
import statistics
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


def mean_sem(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def replicate(scaler, seeds: int, seed: int, device: str = "cpu", prompt: str | list[str] = "toy", **options):
    """`seeds` independent searches, batched as `seeds` prompts of one call → (rewards, NFE, result): one prompt
    repeated, or a list of `seeds` prompts (one search each)."""
    generator = torch.Generator(device).manual_seed(seed)
    prompts = [prompt] * seeds if isinstance(prompt, str) else list(prompt)
    result = scaler(prompts, generator=generator, **options)
    return [float(r) for r in result.reward], [int(n) for n in result.nfe], result


def _curves(
    label: str, make_scaler, budgets, seeds: int, seed: int, digits: int = 3, **call
) -> tuple[dict, dict]:
    """Per method: mean ± s.e.m. of the returned sample's reward at each budget (budgets a method cannot plan are
    skipped); prints one line per method."""
    series, summary = {}, {}
    for method in METHODS:
        nfe, means, sems = [], [], []
        for budget in budgets:
            try:
                scaler = make_scaler(method, budget)
            except ValueError:
                continue  # budget too small for this method's structure
            scaler.set_progress_bar_config(disable=True)
            rewards, used, result = replicate(scaler, seeds, seed, **call)
            mean, sem = mean_sem(rewards)
            nfe.append(max(used))
            means.append(mean)
            sems.append(sem)
        series[method] = {"nfe": nfe, "reward": means, "std": sems}
        summary[method] = {n: {"mean": m, "sem": s} for n, m, s in zip(nfe, means, sems, strict=True)}
        summary[method]["last"] = result
        print(
            f"{label} {method:4s}: "
            + "  ".join(
                f"{n} NFE → {m:.{digits}f} ± {s:.{digits}f}" for n, m, s in zip(nfe, means, sems, strict=True)
            )
        )
    return series, summary


def run_search_demo(
    workdir: Path, seed: int = 0, device: str = "cpu", pipeline: str | None = None, seeds: int = 32
) -> dict:
    """Run all methods on the analytic flow (budgets 20–200) and on the counting model (15 and 30 NFE, 5 steps; or
    `pipeline` at 12 and 24 NFE), each point the mean ± s.e.m. over `seeds` independent searches; write two PNGs
    (error bands = s.e.m.)."""
    from . import InferenceScaler, plot_reward_vs_nfe

    out = Path(workdir) / "search"
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"toy": {}, "pipeline": {}, "seeds": seeds}
    with _single_thread():
        flow, reward = toy_problem()
        budgets = (20, 50, 100, 200)
        start = time.perf_counter()
        series, toy = _curves(
            "analytic flow ",
            lambda method, budget: InferenceScaler(
                flow, reward, method=method, nfe_budget=budget, num_steps=10
            ),
            budgets,
            seeds,
            seed,
        )
        summary["toy"] = {m: {k: v for k, v in d.items() if k != "last"} for m, d in toy.items()}
        toy_png = plot_reward_vs_nfe(
            series,
            out / "search_toy.png",
            title=f"analytic flow: P(rare mode) of the returned sample, mean ± s.e.m. of {seeds} seeds",
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
            reward, prompt, what, num_steps, budgets = (
                BrightnessReward(),
                "a photo of a red apple",
                "brightness",
                3,
                (12, 24),
            )
        else:
            from ..counting import CountingReward, load_pipeline, make_prompts

            pipe = load_pipeline(device=device)
            # `seeds` different test prompts, one search each; the reward is −Σ(count error)², 0 = all counts right.
            reward, what, num_steps, budgets = CountingReward(), "counting reward", 5, (15, 30)
            prompt = [p.prompt for p in make_prompts(seeds, seed=seed)]
        start = time.perf_counter()
        name = type(pipe).__name__
        series, flux = _curves(
            f"{name} {what}",
            lambda method, budget: InferenceScaler(
                pipe, reward, method=method, nfe_budget=budget, num_steps=num_steps
            ),
            budgets,
            seeds,
            seed,
            digits=3,
            device=device,
            prompt=prompt,
        )
        for method, data in flux.items():
            result = data.pop("last")
            result.images[0].save(out / f"flux_{method}.png")
            result.trace.to_json(out / f"flux_{method}_trace.json")
            top = max(k for k in data)
            summary["pipeline"][method] = {"reward": data[top]["mean"], "sem": data[top]["sem"], "nfe": top}
        flux_png = plot_reward_vs_nfe(
            series, out / "search_flux.png", title=f"{name}: {what}, mean ± s.e.m. of {seeds} searches"
        )
        print(
            f"{name}: {len(METHODS)} methods × 2 budgets × {seeds} seeds in {time.perf_counter() - start:.1f} s "
            f"-> {flux_png}"
        )
    summary["plots"] = [str(toy_png), str(flux_png)]
    return summary
