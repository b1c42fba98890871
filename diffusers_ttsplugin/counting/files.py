"""Where the shipped counting model lives, and loading it with clear errors when files are missing or damaged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
MATCHING_FILE = WEIGHTS_DIR / "matching.safetensors"
MODEL_CARD = WEIGHTS_DIR / "MODEL_CARD.md"
CARD_FILE = WEIGHTS_DIR / "card.json"  # the card's figures, read by the guard test

#: Files `save_pretrained` writes for the counting pipeline (what `load_pipeline` checks before loading).
PIPELINE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/tokenizer.json",
)


class ModelFilesError(RuntimeError):
    """The counting model's files are missing or cannot be read (names the folder and how to rebuild it)."""


def _rebuild_hint(path: Path) -> str:
    return (
        f"reinstall ttsplugin, or rebuild the model with `ttsplugin train-flow --out {path}` "
        "and pass that folder as `path=`"
    )


def check_pipeline_files(path: str | Path) -> Path:
    """Raise `ModelFilesError` naming what is missing or unreadable in a counting-pipeline folder."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFilesError(f"counting model folder {path} does not exist; {_rebuild_hint(path)}")
    missing = [name for name in PIPELINE_FILES if not (path / name).is_file()]
    if missing:
        raise ModelFilesError(f"counting model folder {path} lacks {missing}; {_rebuild_hint(path)}")
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFilesError(
            f"{path / 'model_index.json'} is not valid JSON ({err}); {_rebuild_hint(path)}"
        ) from err
    if not isinstance(index, dict) or index.get("_class_name") != "CountingFluxPipeline":
        raise ModelFilesError(
            f"{path} does not hold a CountingFluxPipeline (model_index.json names "
            f"{index.get('_class_name') if isinstance(index, dict) else index!r}); {_rebuild_hint(path)}"
        )
    return path


def load_pipeline(path: str | Path | None = None, **kwargs: Any):
    """The trained counting pipeline (a diffusers `DiffusionPipeline`: [`CountingFluxPipeline`]).

    Args:
        path: A `save_pretrained` folder of the model (default: the weights shipped in the package).
        **kwargs: Passed to `from_pretrained` (e.g. `torch_dtype`); `device=` moves the pipeline after loading.

    Raises `ModelFilesError` when a file is missing or damaged, naming the file and how to rebuild it. The
    pipeline comes in eval mode with its progress bar off; its scheduler is FLUX's `FlowMatchEulerDiscreteScheduler`
    (swap it: `pipe.scheduler = FlowSDEScheduler.from_config(pipe.scheduler.config)`).
    """
    from .model import CountingFluxPipeline

    device = kwargs.pop("device", None)
    folder = check_pipeline_files(PIPELINE_DIR if path is None else path)
    try:
        pipe = CountingFluxPipeline.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelFilesError(
            f"cannot load the counting model from {folder}: {err}; {_rebuild_hint(folder)}"
        ) from err
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
