"""The counting task's vocabulary and prompts: "three red circles and one blue square".

Three kinds of object, each a colour with its own shape (the colour identifies the kind; the counter checks
colour, not shape). A prompt names one or two kinds with a count of 1–3 each; the image holds exactly those
objects on a black background.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

#: (colour, shape, RGB in [0, 1]) of every kind; the colours are far apart in RGB so the counter is exact.
KINDS: tuple[tuple[str, str, tuple[float, float, float]], ...] = (
    ("red", "circle", (0.92, 0.12, 0.10)),
    ("green", "triangle", (0.10, 0.85, 0.15)),
    ("blue", "square", (0.15, 0.25, 0.95)),
)
KIND_NAMES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour, shape, _ in KINDS)
NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
MAX_COUNT = 3  # counts per kind in prompts and training images: 1..MAX_COUNT
MAX_KINDS = 2  # kinds named per prompt: 1..MAX_KINDS
SPLITS = ("train", "test")

_PART = re.compile(r"^(?P<num>\w+)\s+(?P<colour>[a-z]+)\s+(?P<shape>[a-z]+)$")
_SHAPES = {shape for _, shape, _ in KINDS}


def _singular(word: str) -> str:
    for cut in (0, 1, 2):  # "circle", "circles", "boxes"
        if word[: len(word) - cut] in _SHAPES:
            return word[: len(word) - cut]
    return word


@dataclass(frozen=True)
class CountPrompt:
    """A prompt of the counting task.

    Attributes:
        prompt (`str`): The text, e.g. "three red circles and one blue square".
        counts (`dict[str, int]`): What the image should hold, e.g. `{"red circle": 3, "blue square": 1}`.
    """

    prompt: str
    counts: dict[str, int] = field(default_factory=dict)


def format_prompt(counts: dict[str, int]) -> str:
    """The prompt text for `counts` (kinds in the dict's order), e.g. "two red circles and one blue square"."""
    if not counts:
        raise ValueError("`counts` must name at least one kind")
    parts = []
    for kind, n in counts.items():
        if kind not in KIND_NAMES:
            raise ValueError(f"unknown kind {kind!r} in `counts`; known kinds: {list(KIND_NAMES)}")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < len(NUMBER_WORDS):
            raise ValueError(
                f"count of {kind!r} must be an integer in [0, {len(NUMBER_WORDS) - 1}], got {n!r}"
            )
        parts.append(f"{NUMBER_WORDS[n]} {kind}{'' if n == 1 else 's'}")
    return " and ".join(parts)


def parse_prompt(prompt: str) -> dict[str, int]:
    """Target counts named by a prompt of the task ("three red circles and one blue square").

    Counts are number words (zero–nine) or digits; "a"/"an" mean one; plurals and case are ignored. Raises
    `ValueError` naming the prompt when a part is not "<count> <colour> <shape>" of a known kind, or a kind
    appears twice.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"a counting prompt must be a string, got {type(prompt).__name__}")
    text = " ".join(prompt.lower().replace(",", " and ").split()).rstrip(".")
    counts: dict[str, int] = {}
    for part in (p.strip() for p in re.split(r"\band\b", text)):
        if not part:
            continue
        match = _PART.match(part)
        kind = f"{match['colour']} {_singular(match['shape'])}" if match else None
        if match is None or kind not in KIND_NAMES:
            raise ValueError(
                f"cannot read a count from {part!r} in prompt {prompt!r}: expected '<count> <colour> <shape>' with "
                f"a kind in {list(KIND_NAMES)} (e.g. 'three red circles and one blue square')"
            )
        num = match["num"]
        if num.isdigit():
            n = int(num)
        elif num in ("a", "an"):
            n = 1
        elif num in NUMBER_WORDS:
            n = NUMBER_WORDS.index(num)
        else:
            raise ValueError(f"unknown count {num!r} in prompt {prompt!r}; use a digit or a number word")
        if kind in counts:
            raise ValueError(f"kind {kind!r} is named twice in prompt {prompt!r}")
        counts[kind] = n
    if not counts:
        raise ValueError(f"prompt {prompt!r} names no objects")
    return counts


def sample_counts(rng: np.random.Generator) -> dict[str, int]:
    """One random configuration of the task: 1..MAX_KINDS distinct kinds (random order), 1..MAX_COUNT each."""
    num_kinds = int(rng.integers(1, MAX_KINDS + 1))
    kinds = rng.choice(len(KIND_NAMES), size=num_kinds, replace=False)
    return {KIND_NAMES[int(k)]: int(rng.integers(1, MAX_COUNT + 1)) for k in kinds}


def make_prompts(n: int, *, seed: int, split: str = "test") -> list[CountPrompt]:
    """`n` prompts of the counting task, the same for the same `(seed, split)`.

    The task has few configurations (1–2 kinds, 1–3 objects each), so every configuration occurs in training; the
    splits are independent random streams (train: seed stream 0, test: 1), not disjoint sets of prompts.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"`n` must be an integer >= 0, got {n!r}")
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    out = []
    for _ in range(n):
        counts = sample_counts(rng)
        out.append(CountPrompt(format_prompt(counts), counts))
    return out
