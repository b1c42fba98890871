"""The model card of the shipped counting model: what produced it and how well it samples.

`python -m diffusers_ttsplugin.counting.card RUN_DIR` evaluates a `ttsplugin train-flow` output folder and writes
`card.json`, `MODEL_CARD.md` and `samples.png` into it (then the folder is copied to `counting/weights/`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

GUARD = {"prompts": 64, "seed": 0, "steps": 10}  # the slice the guard test re-runs (plain Euler sampling)


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _samples_png(pipe, path: Path) -> None:
    from PIL import Image

    from .prompts import make_prompts

    prompts = make_prompts(8, seed=1)
    images = pipe(
        [p.prompt for p in prompts for _ in range(4)],
        num_inference_steps=10,
        output_type="pt",
        generator=torch.Generator().manual_seed(1),
    ).images
    grid = images.view(8, 4, 3, 32, 32).permute(1, 3, 0, 4, 2).reshape(4 * 32, 8 * 32, 3)
    Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).resize(
        (8 * 96, 4 * 96), Image.NEAREST
    ).save(path)
    (path.with_suffix(".txt")).write_text(
        "columns, left to right:\n" + "\n".join(p.prompt for p in prompts) + "\n"
    )


def write_card(run_dir: str | Path, command: str) -> dict:
    from diffusers_ttsplugin import FlowSDEScheduler

    from .files import load_pipeline
    from .rewards import CountMatchReward
    from .train import evaluate

    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    training = json.loads((run_dir / "training.json").read_text())
    pipe = load_pipeline(run_dir / "pipeline")
    guard = {
        **GUARD,
        **evaluate(pipe, num_prompts=GUARD["prompts"], num_steps=GUARD["steps"], seed=GUARD["seed"]),
    }
    base = {}
    euler = pipe.scheduler
    for name, scheduler in (
        ("ode_euler", euler),
        ("sde_vp", FlowSDEScheduler.from_config(euler.config)),
        ("sde_linear", FlowSDEScheduler.from_config(euler.config, interpolant="linear")),
    ):
        pipe.scheduler = scheduler
        if hasattr(scheduler, "set_generator"):
            scheduler.set_generator(torch.Generator().manual_seed(2))
        base[name] = evaluate(pipe, num_prompts=256, num_steps=10, seed=2)
    pipe.scheduler = euler
    _samples_png(pipe, run_dir / "samples.png")
    CountMatchReward(weights=run_dir / "matching.safetensors")  # loads
    card = {
        "command": command,
        "seed": training["config"]["seed"],
        "training": training,
        "size_mb": {
            "pipeline": _folder_mb(run_dir / "pipeline"),
            "matching": _folder_mb(run_dir) - _folder_mb(run_dir / "pipeline"),
        },
        "guard": guard,
        "base_sampling_256_prompts_10_steps": base,
    }
    (run_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (run_dir / "MODEL_CARD.md").write_text(_markdown(card))
    return card


def _fmt(m: dict) -> str:
    return f"accuracy {m['accuracy']:.3f} ± {m['accuracy_sem']:.3f}, RSS {m['rss']:.2f} ± {m['rss_sem']:.2f} (n = {m['n']})"


def _markdown(card: dict) -> str:
    t = card["training"]
    cfg = t["config"]
    base = card["base_sampling_256_prompts_10_steps"]
    return f"""# Counting flow model (ttsplugin)

A tiny FLUX-architecture text-to-image flow model (`CountingFluxPipeline`, a `diffusers.FluxPipeline` whose only
changes are the default size, 32×32, and the T5 prompt length, 12 tokens) trained here with flow matching on
procedurally rendered images of the counting task: "three red circles and one blue square" (red circles, green
triangles, blue squares; 1–2 kinds per prompt, 1–3 objects each, on black). Beside it, `matching.safetensors`: the
small prompt–image matching score (`CountMatchReward`, a stand-in for VQAScore).

## Reproduce

    {card["command"]}

Seed {card["seed"]} fixes everything (data, initial weights, batches, noise). Training configuration:
`{json.dumps(cfg)}`.

Wall time: {t["seconds_pipeline"] / 60:.1f} min for the pipeline (VAE {cfg["vae_steps"]} steps, flow matching
{cfg["flow_steps"]} steps × batch {cfg["flow_batch"]}), {t["seconds_total"] / 60:.1f} min with the matching score,
on 2 CPU cores **shared with 3–4 other jobs** (this process got ~25–45 % of one core; one torch thread).
Final flow-matching loss {t["final_loss"]:.4f}.

## Size

Pipeline {card["size_mb"]["pipeline"]:.1f} MB (transformer: 2 double + 2 single FLUX blocks, width 64; VAE 8→16→32
channels, 8 latent channels, 4× downsampling; CLIP and T5 text encoders of width 32, 2 layers, trained jointly),
matching score {card["size_mb"]["matching"]:.2f} MB.

## Sample quality

Counting metrics of plain sampling, 10 steps, 256 test prompts (`make_prompts(256, seed=2)`), mean ± s.e.m.:

- FlowMatchEuler (ODE): {_fmt(base["ode_euler"])}
- FlowSDEScheduler VP-SDE: {_fmt(base["sde_vp"])}
- FlowSDEScheduler linear SDE: {_fmt(base["sde_linear"])}

VAE reconstructions of 512 training images: counting accuracy {t["vae_reconstruction"]["accuracy"]:.3f}.
Matching score: held-out exact count accuracy {t["matching"]["heldout_exact_clean"]:.3f} on clean renders,
{t["matching"]["heldout_exact_degraded"]:.3f} on degraded ones (blur, noise, colour scaling).

Guard slice (re-run by `tests/test_counting.py`): `make_prompts({card["guard"]["prompts"]}, seed={card["guard"]["seed"]})`,
{card["guard"]["steps"]} Euler steps, generator seed {card["guard"]["seed"]}: {_fmt(card["guard"])}.

`samples.png`: 4 samples (rows) of 8 test prompts (columns, listed in `samples.txt`), 10 Euler steps.
"""


if __name__ == "__main__":
    print(
        json.dumps(
            write_card(
                sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ttsplugin train-flow --out DIR --seed 0"
            )["guard"]
        )
    )
