"""`ttsplugin search`: particle search over a diffusers flow pipeline from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

METHOD_CHOICES = ("bon", "sop", "smc", "code", "svdd", "rbf")


def add_search_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="particle search (RBF, SMC, SVDD, CoDe, SoP, BoN) over a flow pipeline with a reward and an NFE budget",
        description=(
            "Search for the highest-reward image of a diffusers flow pipeline (FLUX, SD3) within an exact budget "
            "of velocity evaluations (NFE), with Rollover Budget Forcing, SMC, SVDD, CoDe, search over paths or "
            "best-of-N. Writes the best image per prompt, the search trace (JSON) and a reward-vs-NFE plot (PNG) to "
            "--output. Without --pipeline it searches the trained counting model shipped with ttsplugin (a FLUX "
            "pipeline, 32x32 images of coloured shapes) with the counting reward."
        ),
    )
    p.add_argument(
        "--pipeline",
        default=None,
        help="folder of a diffusers FLUX/SD3 pipeline (default: the trained counting model)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="prompt to search for; repeat for several (each gets its own budget) (default: 'three red circles and "
        "one blue square' for the counting model, else 'a photo of a red apple')",
    )
    p.add_argument("--method", choices=METHOD_CHOICES, default="rbf", help="search method (default: rbf)")
    p.add_argument(
        "--nfe", type=int, default=500, help="NFE budget per prompt (velocity evaluations; default: 500)"
    )
    p.add_argument("--steps", type=int, default=10, help="denoising steps of the grid (default: 10)")
    p.add_argument(
        "--reward",
        default=None,
        help="reward as NAME or NAME:ARG, from the reward registry (entry-point group ttsplugin.rewards; "
        f"installed now: {_reward_names()}), e.g. jpeg:80, brightness:0.3, color:R,G,B, clip:FOLDER, "
        "pickscore:FOLDER, aesthetic:FOLDER, hpsv2:CHECKPOINT; or module:attribute for a factory of your own "
        "(default: counting for the counting model, else jpeg, DDPO's compressibility)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument(
        "--height", type=int, default=None, help="image height (default: the pipeline's; counting model: 32)"
    )
    p.add_argument(
        "--width", type=int, default=None, help="image width (default: the pipeline's; counting model: 32)"
    )
    p.add_argument(
        "--guidance-scale", type=float, default=None, help="the pipeline's guidance_scale (default: its own)"
    )
    p.add_argument("--negative-prompt", default=None, help="negative prompt (SD3 CFG, FLUX true CFG)")
    p.add_argument(
        "--true-cfg-scale", type=float, default=None, help="FLUX true CFG scale (needs --negative-prompt)"
    )
    p.add_argument(
        "--max-sequence-length", type=int, default=None, help="T5 prompt length (default: the pipeline's)"
    )
    p.add_argument(
        "--sampler", choices=("sde", "ode"), default=None, help="default: ode for bon/sop, sde otherwise"
    )
    p.add_argument(
        "--interpolant",
        choices=("linear", "vp"),
        default=None,
        help="default: linear for bon/sop, vp otherwise",
    )
    p.add_argument(
        "--time-grid",
        choices=("auto", "pipeline", "uniform", "paper", "paper_code"),
        default="auto",
        help="grid of the sampler: auto = the pipeline's own sigmas for the linear interpolant, equal steps in VP "
        "time for VP; pipeline; uniform (equal steps in the sampling interpolant's time); paper / paper_code (the "
        "released code's VP grid) (default: auto)",
    )
    p.add_argument(
        "--final-step",
        choices=("tweedie", "integrate"),
        default="tweedie",
        help="return Tweedie's estimate at the last non-zero time, or integrate to t=0 (default: tweedie)",
    )
    p.add_argument(
        "--diffusion-norm", type=float, default=3.0, help="SDE diffusion norm (g = norm * t^2; default: 3)"
    )
    p.add_argument(
        "--particles", type=int, default=None, help="bon/smc: particles N (default: budget / steps)"
    )
    p.add_argument("--chains", type=int, default=None, help="svdd/code/sop/rbf: chains (default: 2)")
    p.add_argument("--proposals", type=int, default=None, help="svdd/code/sop: candidates per chain and step")
    p.add_argument(
        "--init-particles", type=int, default=None, help="svdd/code/rbf: best-of-K initial noise per chain"
    )
    p.add_argument(
        "--temperature", type=float, default=None, help="smc: lambda of exp(dr / lambda) (default: 0.1)"
    )
    p.add_argument(
        "--ess-threshold", type=float, default=None, help="smc: resample when ESS < threshold*N (0.5)"
    )
    p.add_argument(
        "--resampling",
        choices=("multinomial", "systematic", "stratified", "residual"),
        default=None,
        help="smc: resampling scheme (default: multinomial)",
    )
    p.add_argument(
        "--potential",
        choices=("difference", "max", "sum"),
        default=None,
        help="smc: potential exp((r_t - r_t-1)/lambda) (difference, the paper's), or FK steering's max / sum "
        "(default: difference)",
    )
    p.add_argument(
        "--initial-weights",
        choices=("uniform", "reward"),
        default=None,
        help="smc: start at weight 1 (uniform, the paper's) or exp(r_0/lambda) (reward: the released code's and FK "
        "steering's) (default: uniform)",
    )
    p.add_argument(
        "--tempering",
        choices=("none", "linear", "exponential"),
        default=None,
        help="smc: lambda schedule lambda/beta_k, beta rising to 1 (linear, or DAS's exponential) (default: none)",
    )
    p.add_argument(
        "--tempering-gamma",
        type=float,
        default=None,
        help="smc: tempering rate gamma > 0 (default: beta reaches 1 at the last step)",
    )
    p.add_argument("--block-size", type=int, default=None, help="code: steps per block (default: 2)")
    p.add_argument(
        "--forward-steps", type=int, default=None, help="sop: forward-noising distance in grid steps"
    )
    p.add_argument(
        "--no-rollover", action="store_true", help="rbf: keep unused quota for the last step instead"
    )
    p.add_argument(
        "--max-batch-size", type=int, default=None, help="most transformer rows per call (default: all)"
    )
    p.add_argument("--device", default="cpu", help="device of the pipeline, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="load the pipeline in this dtype (default: as saved)",
    )
    p.add_argument("--output", default="search_output", help="folder for images, trace.json, plot.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_search_command)


def _reward_names() -> str:
    from diffusers_ttsplugin.reward_registry import available_rewards

    return ", ".join(available_rewards()) or "none (is ttsplugin installed?)"


def _knobs(args: argparse.Namespace) -> dict:
    knobs = {
        "num_particles": args.particles,
        "num_chains": args.chains,
        "num_proposals": args.proposals,
        "init_particles": args.init_particles,
        "temperature": args.temperature,
        "ess_threshold": args.ess_threshold,
        "resampling": args.resampling,
        "potential": args.potential,
        "initial_weights": args.initial_weights,
        "tempering": args.tempering,
        "tempering_gamma": args.tempering_gamma,
        "block_size": args.block_size,
        "forward_steps": args.forward_steps,
        "rollover": False if args.no_rollover else None,
    }
    return {k: v for k, v in knobs.items() if v is not None}


def run_search_command(args: argparse.Namespace) -> int:
    import torch

    from diffusers_ttsplugin import InferenceScaler
    from diffusers_ttsplugin.rewards import reward_from_spec
    from diffusers_ttsplugin.search import plot_reward_vs_nfe

    default_prompt = "a photo of a red apple" if args.pipeline else "three red circles and one blue square"
    prompts = args.prompt or [default_prompt]
    spec = args.reward or ("jpeg" if args.pipeline else "counting")
    try:
        reward = reward_from_spec(spec, device=args.device)
    except (ValueError, TypeError, ImportError, OSError) as err:
        print(f"error: --reward {spec}: {err}")
        return 2
    options = {}
    if args.pipeline:
        from diffusers import DiffusionPipeline

        kwargs = {"torch_dtype": getattr(torch, args.dtype)} if args.dtype else {}
        pipe = DiffusionPipeline.from_pretrained(args.pipeline, **kwargs).to(args.device)
        print(f"loaded {type(pipe).__name__} from {args.pipeline}")
    else:
        from diffusers_ttsplugin.counting import load_pipeline

        pipe = load_pipeline(device=args.device)
        print("loaded the trained counting model (diffusers_ttsplugin.counting, a FluxPipeline)")
    for key, value in {
        "height": args.height,
        "width": args.width,
        "guidance_scale": args.guidance_scale,
        "negative_prompt": args.negative_prompt,
        "true_cfg_scale": args.true_cfg_scale,
        "max_sequence_length": args.max_sequence_length,
    }.items():
        if value is not None:
            options[key] = value
    try:
        scaler = InferenceScaler(
            pipe,
            reward,
            method=args.method,
            nfe_budget=args.nfe,
            num_steps=args.steps,
            sampler=args.sampler,
            interpolant=args.interpolant,
            time_grid=args.time_grid,
            final_step=args.final_step,
            diffusion_norm=args.diffusion_norm,
            max_batch_size=args.max_batch_size,
            **_knobs(args),
        )
    except (ValueError, TypeError) as err:
        print(f"error: {err}")
        return 2
    scaler.set_progress_bar_config(disable=args.quiet)
    start = time.perf_counter()
    generator = torch.Generator(args.device if args.device != "cpu" else "cpu").manual_seed(args.seed)
    result = scaler(prompts, generator=generator, **options)
    elapsed = time.perf_counter() - start
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for i, (prompt, image) in enumerate(zip(prompts, result.images, strict=True)):
        path = out / f"{i:02d}_{args.method}.png"
        image.save(path)
        print(
            f"- {prompt!r}: reward {float(result.reward[i]):.5g}, NFE {int(result.nfe[i])}/{args.nfe} -> {path}"
        )
    result.trace.to_json(out / "trace.json")
    with contextlib.suppress(ValueError):
        plot_reward_vs_nfe(
            {f"{args.method}: {p[:30]}": (*result.trace.curve(i),) for i, p in enumerate(prompts)},
            out / "plot.png",
            title=f"{args.method}, best proposal reward vs NFE",
        )
    summary = {"method": args.method, "settings": scaler.settings, "seconds": round(elapsed, 3)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.method}: {sum(result.nfe.tolist())} NFE in {elapsed:.2f} s; trace and plot in {out}")
    return 0
