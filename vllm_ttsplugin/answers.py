"""Answer extraction and majority voting (FFS-k@N votes over the first k finishers; the baseline over all N).

An extractor maps a completion's text to its answer, or None when it has none. Built-ins: `extract_boxed` (the
last ``\\boxed{...}``, nested braces allowed), `extract_final_answer` (what follows the last ``Final Answer:``) and
`extract_answer` (boxed first, then Final Answer). Any callable ``str -> str | None`` can be passed instead.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable

Extractor = Callable[[str], "str | None"]

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "extract_answer",
    "extract_boxed",
    "extract_final_answer",
    "get_extractor",
    "majority_vote",
    "normalize_answer",
]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FINAL_ANSWER = re.compile(r"final\s+answer\s*:", re.IGNORECASE)
_FINAL_ANSWER_IS = re.compile(r"^the\s+final\s+answer\s+is\s*", re.IGNORECASE)


def normalize_answer(answer: str) -> str:
    """Canonical form for voting: inner whitespace collapsed, enclosing ``$...$`` and a trailing period dropped."""
    text = " ".join(answer.split()).rstrip(".").strip()
    while len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text[1:-1].strip().rstrip(".").strip()
    return text


def _braced(text: str, open_index: int) -> str | None:
    """Content of the brace group opening at `text[open_index] == "{"`; None when it never closes."""
    depth = 0
    i = open_index
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2  # escaped brace, e.g. \{ in a set
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included.

    >>> extract_boxed(r"so x = \\boxed{\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    for match in reversed(list(_BOXED.finditer(text))):
        content = _braced(text, match.end() - 1)
        if content is not None:
            content = normalize_answer(content)
            return content or None
    return None


def extract_final_answer(text: str) -> str | None:
    """What follows the last ``Final Answer:`` up to the end of its line (a ``\\boxed{}`` in it is unwrapped).

    >>> extract_final_answer("Wait, 41? No.\\nFinal Answer: The final answer is $42$.\\nDone.")
    '42'
    """
    matches = list(_FINAL_ANSWER.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].strip()
    line = rest.splitlines()[0] if rest else ""
    boxed = extract_boxed(line)
    if boxed is not None:
        return boxed
    line = normalize_answer(_FINAL_ANSWER_IS.sub("", line.strip()))
    return line or None


def extract_answer(text: str) -> str | None:
    """`extract_boxed`, else `extract_final_answer`."""
    boxed = extract_boxed(text)
    return boxed if boxed is not None else extract_final_answer(text)


EXTRACTORS: dict[str, Extractor] = {
    "auto": extract_answer,
    "boxed": extract_boxed,
    "final_answer": extract_final_answer,
}


def get_extractor(extractor: str | Extractor) -> Extractor:
    """A built-in extractor by name (``"auto"``, ``"boxed"``, ``"final_answer"``) or the callable itself."""
    if callable(extractor):
        return extractor
    if isinstance(extractor, str) and extractor in EXTRACTORS:
        return EXTRACTORS[extractor]
    raise ValueError(f"`extractor` must be one of {sorted(EXTRACTORS)} or a callable, got {extractor!r}")


def majority_vote(answers: Iterable[str | None]) -> str | None:
    """The most frequent answer (None answers are ignored); ties go to the answer seen first.

    Order matters for ties: FFS passes answers in finishing order, so a tie goes to the earliest finisher.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in counts if counts[a] == best)  # Counter keeps first-seen order
