"""The `ttsplugin` command line: `ttsplugin demo`, and one subcommand per feature.

Heavy imports (vLLM, diffusers) happen inside the subcommands, so `ttsplugin --help` is instant.
"""

from __future__ import annotations

import argparse
import sys

from ttsplugin import __version__
from ttsplugin.demo import positive_int


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the features end to end on the embedded tiny models (or on models you pass)",
        description=(
            "Load the embedded reasoner (a tiny model trained here, shipped in the package) into a real vllm.LLM "
            "and solve test problems with and without each control (budget forcing, waits, TS, First Finish "
            "Search), then build the tiny FLUX pipeline locally (nothing is downloaded) and run it, printing what "
            "each step did. Pass --model / --pipeline to use your own checkpoints instead."
        ),
    )
    p.add_argument(
        "--model",
        default=None,
        help="Hugging Face folder or hub id of a reasoning model for vLLM (default: the embedded reasoner)",
    )
    p.add_argument(
        "--pipeline",
        default=None,
        help="folder of a diffusers flow pipeline (FLUX/SD3) to use instead of the tiny FLUX pipeline",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="where the tiny models and demo outputs go (default: $TTSPLUGIN_CACHE or ~/.cache/ttsplugin)",
    )
    p.add_argument("--skip-llm", action="store_true", help="skip the vLLM part")
    p.add_argument("--skip-diffusion", action="store_true", help="skip the diffusers part")
    p.add_argument(
        "--skip-search",
        action="store_true",
        help="skip the particle-search part (analytic flow + FLUX plots)",
    )
    p.add_argument(
        "--search-seeds",
        type=positive_int,
        default=32,
        help="independent searches per point of the search curves, shown as mean ± s.e.m. (default: 32)",
    )
    p.add_argument(
        "--problems",
        type=positive_int,
        default=16,
        help="test problems the embedded reasoner solves per setting (default: 16)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for models and sampling (default: 0)")
    p.add_argument(
        "--max-model-len",
        type=positive_int,
        default=2048,
        help="vLLM context length for the demo engine (default: 2048)",
    )
    p.add_argument(
        "--kv-cache-mib",
        type=positive_int,
        default=None,
        help="vLLM KV cache size in MiB (default: 256 for the tiny model, vLLM's own sizing for --model)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="device for the diffusers pipeline, e.g. cpu or cuda (default: cpu)",
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ttsplugin.demo import run_demo

    return run_demo(args)


def _add_search(subparsers) -> None:
    from ttsplugin.search_command import add_search_parser

    add_search_parser(subparsers)


def _add_generate(subparsers) -> None:
    from ttsplugin.generate_command import add_generate_parser

    add_generate_parser(subparsers)


def _add_reasoner(subparsers) -> None:
    from ttsplugin.reasoner_commands import add_eval_parser, add_train_parser

    add_train_parser(subparsers)
    add_eval_parser(subparsers)


def _add_train_flow(subparsers) -> None:
    from ttsplugin.train_flow_command import add_train_flow_parser

    add_train_flow_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttsplugin",
        description="Test-time scaling for vLLM and diffusers: budget forcing, end-of-think temperature "
        "scaling, First Finish Search, flow SDE sampling and particle search (RBF, SMC, BoN, ...).",
    )
    parser.add_argument("--version", action="version", version=f"ttsplugin {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(subparsers)
    _add_generate(subparsers)
    _add_search(subparsers)
    _add_reasoner(subparsers)
    _add_train_flow(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
