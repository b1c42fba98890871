"""The reasoner's task: chains of additions and subtractions, generated procedurally, with exact answers.

A problem is a start value and 2-8 operations (`57+8-3+9-6`); every intermediate value stays in 0..99. The model
thinks by writing one line per operation (`57+8=65`), then answers `Answer: 71`. Difficulty is the number of
operations: each is one more chance to slip. Training traces contain slips (a wrong result) that the trace
catches with a line starting with "Wait" and recomputes, and occasional "Wait" re-checks of a correct line that
confirm it: what distilled reasoning traces look like, and what makes thinking longer able to help.

Splits are by content, not by seed: a problem belongs to "train", "validation" or "test" by a hash of its text, so
no seed can ever put a test problem into training data, and any seed gives a valid set of any split.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")
MIN_STEPS, MAX_STEPS = 2, 8
MAX_VALUE = 99
SLIP_RATE = 0.12  # per line: the trace writes a wrong result, then "Wait, ..." and the right one
CHECK_RATE = 0.05  # per correct line: the trace re-checks it with "Wait, ..." (same result)
ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)")


@dataclass(frozen=True)
class Problem:
    """One problem: `question` (e.g. `"57+8-3"`), its exact `answer`, `steps` operations (the difficulty)."""

    question: str
    answer: int
    steps: int
    start: int
    operations: tuple[tuple[str, int], ...]

    @property
    def messages(self) -> list[dict[str, str]]:
        """The chat messages to send (one user turn) through the model's chat template."""
        return [{"role": "user", "content": self.question}]

    def values(self) -> list[int]:
        """The running values after each operation (the last one is the answer)."""
        out, value = [], self.start
        for op, operand in self.operations:
            value = value + operand if op == "+" else value - operand
            out.append(value)
        return out


def split_of(question: str) -> str:
    """The split a question belongs to: 80 % train, 10 % validation, 10 % test, by a hash of its text."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _random_problem(rng: random.Random, steps: int) -> Problem:
    value = start = rng.randint(10, MAX_VALUE)
    operations = []
    for _ in range(steps):
        operand = rng.randint(1, 9)
        op = rng.choice("+-")
        if op == "+" and value + operand > MAX_VALUE:
            op = "-"
        elif op == "-" and value - operand < 0:
            op = "+"
        value = value + operand if op == "+" else value - operand
        operations.append((op, operand))
    question = str(start) + "".join(f"{op}{operand}" for op, operand in operations)
    return Problem(question, value, steps, start, tuple(operations))


def make_problems(
    n: int, *, seed: int, split: str = "test", min_steps: int = MIN_STEPS, max_steps: int = MAX_STEPS
) -> list[Problem]:
    """`n` distinct problems of `split` ("train", "validation" or "test"), the same for the same arguments.

    The number of operations is uniform in `min_steps..max_steps`. Any integer seed works; sets drawn with
    different seeds may overlap (problems are distinct within one set).
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"`n` must be an integer >= 0, got {n!r}")
    if not (1 <= min_steps <= max_steps):
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    rng = random.Random(f"reasoner-{split}-{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    while len(problems) < n:
        problem = _random_problem(rng, rng.randint(min_steps, max_steps))
        if problem.question in seen or split_of(problem.question) != split:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems


def _slip(rng: random.Random, value: int) -> int:
    wrong = value + rng.choice((-10, -2, -1, 1, 2, 10))
    return wrong if 0 <= wrong <= MAX_VALUE and wrong != value else value + (1 if value < MAX_VALUE else -1)


def trace(problem: Problem, rng: random.Random | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The reasoning trace for `problem`: thinking lines, then `</think>` and the answer line follow in training.

    With `rng`, lines slip (then a "Wait" line corrects them) or are re-checked, at `SLIP_RATE` / `CHECK_RATE`;
    without, the trace is clean. Returns the thinking text and the character spans of slipped results (training
    masks the loss there: the model learns to catch slips, not to make them).
    """
    text, wrong_spans = "", []
    value = problem.start
    for (op, operand), result in zip(problem.operations, problem.values(), strict=True):
        line = f"{value}{op}{operand}="
        if rng is not None and rng.random() < SLIP_RATE:
            wrong = str(_slip(rng, result))
            wrong_spans.append((len(text) + len(line), len(text) + len(line) + len(wrong)))
            text += f"{line}{wrong}\nWait, {line}{result}\n"
        elif rng is not None and rng.random() < CHECK_RATE:
            text += f"{line}{result}\nWait, {line}{result}\n"
        else:
            text += f"{line}{result}\n"
        value = result
    return text, wrong_spans


def answer_text(problem: Problem) -> str:
    return f"Answer: {problem.answer}"


def extract_answer(text: str) -> int | None:
    """The integer after the last `Answer:` in `text`, or None."""
    matches = ANSWER_RE.findall(text)
    return int(matches[-1]) if matches else None


def grade(text: str, problem: Problem) -> bool:
    """Whether a completion's generated text (thinking and answer) ends in the right `Answer: N`.

    Only what follows the end of thinking counts when `</think>` is in the text (decoded with special tokens);
    otherwise the last `Answer:` in the text.
    """
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return extract_answer(text) == problem.answer
