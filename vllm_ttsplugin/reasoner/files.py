"""Where the shipped reasoner lives, and a loader that checks its files before anyone uses them."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHECKSUMS = "SHA256SUMS"
# The files vLLM, the OpenAI server and transformers read (the card and training record are documentation).
REQUIRED_FILES = (
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


class ReasonerFilesError(FileNotFoundError):
    """The reasoner's folder is missing a file or a file does not match its recorded checksum."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: str | Path) -> Path:
    """Record the sha256 of every model file in `folder/SHA256SUMS` (after training)."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
    lines = [f"{_sha256(folder / name)}  {name}" for name in names]
    target = folder / CHECKSUMS
    target.write_text("\n".join(lines) + "\n")
    return target


def verify_model_dir(folder: str | Path) -> Path:
    """Check that `folder` holds a complete, uncorrupted reasoner; return it. Raises `ReasonerFilesError`."""
    folder = Path(folder)
    hint = "rebuild it with `ttsplugin train-reasoner --out DIR` or restore the files from the repository"
    if not folder.is_dir():
        raise ReasonerFilesError(f"reasoner model folder {folder} does not exist; {hint}")
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise ReasonerFilesError(f"reasoner model folder {folder} has no {CHECKSUMS}; {hint}")
    recorded = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            recorded[name.strip()] = digest
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise ReasonerFilesError(f"reasoner model file {folder / name} is missing; {hint}")
        if name not in recorded:
            raise ReasonerFilesError(f"{sums} has no checksum for {name}; {hint}")
    for name, digest in recorded.items():
        path = folder / name
        if not path.is_file():
            raise ReasonerFilesError(f"reasoner model file {path} is missing; {hint}")
        if _sha256(path) != digest:
            raise ReasonerFilesError(
                f"reasoner model file {path} is corrupt (sha256 differs from {CHECKSUMS}); {hint}"
            )
    return folder


def shipped_model_dir() -> Path:
    """The folder inside the package that holds the shipped weights (not checked)."""
    return Path(__file__).resolve().parent / "model"


def model_dir(verify: bool = True) -> Path:
    """The shipped reasoner's folder, ready for `vllm.LLM(...)` / `from_pretrained(...)`.

    With `verify` (default), every file is checked against `SHA256SUMS` first (a few milliseconds) and a missing
    or corrupt file raises `ReasonerFilesError` naming it.
    """
    folder = shipped_model_dir()
    return verify_model_dir(folder) if verify else folder
