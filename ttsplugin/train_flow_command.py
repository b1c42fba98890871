"""`ttsplugin train-flow`: train the counting flow model (the one shipped in `diffusers_ttsplugin.counting`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_train_flow_parser(subparsers) -> None:
    from ttsplugin.demo import positive_int

    p = subparsers.add_parser(
        "train-flow",
        help="train the small counting flow model (FLUX architecture, 32x32 coloured shapes) from a seed",
        description=(
            "Render the counting task's images, train a VAE, then flow matching of a tiny FLUX transformer "
            "with its text encoders, then the prompt-image matching score; write the pipeline "
            "(save_pretrained), the matching weights and training.json to --out. The defaults reproduce the "
            "shipped model (about 25 minutes on 2 shared CPU cores)."
        ),
    )
    p.add_argument("--out", required=True, help="output folder (created; existing files are overwritten)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of everything (default: 0)")
    p.add_argument(
        "--flow-steps", type=positive_int, default=None, help="flow-matching steps (default: 1600)"
    )
    p.add_argument("--vae-steps", type=positive_int, default=None, help="VAE steps (default: 400)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: 1, best on a shared CPU)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from diffusers_ttsplugin.counting.train import TrainConfig, train

    cfg = TrainConfig(seed=args.seed)
    for name in ("flow_steps", "vae_steps", "threads"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = train(out, cfg)
    print(f"trained in {record['seconds_total']:.0f} s -> {out}")
    return 0
