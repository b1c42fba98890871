"""Shared pieces of the First Finish Search tests: a stub tokenizer, scripted requests, and exact expectations."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

from vllm_ttsplugin.ffs import FFS_MARKER_TEXT

VOCAB = 40
EOS = 1
MARKER = 2  # the stub tokenizer's single token for FFS_MARKER_TEXT
FILLER = list(range(5, VOCAB))


class StubTokenizer:
    """Decodes token t to "t{t} ", EOS to "</s>" and MARKER to the FFS stop marker."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [MARKER] if text == FFS_MARKER_TEXT else [7, 7]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(FFS_MARKER_TEXT if t == MARKER else "</s>" if t == EOS else f"t{t} " for t in ids)


@dataclass(eq=False)
class ScriptedRequest:
    """One sample: its params and the tokens it would generate without FFS."""

    rid: str
    params: object
    prompt: list[int]
    script: list[int]
    race: str | None  # reference race name; None for a request without FFS
    k: int = 0
    out: list[int] = field(default_factory=list)
    finished: bool = False
    forced_once: bool = False


def make_requests(
    rng: random.Random, num_parents: int, max_tokens: int = 12, marker_known: bool = True
) -> list[ScriptedRequest]:
    """Parents with n samples each (FFS with random k, plain, or two parents tied by a tts_group), admitted in
    one scope, against the stub tokenizer (which has a marker token) or against none (losers unmarked)."""
    import contextlib

    from vllm_ttsplugin.ffs import first_finish_scope
    from vllm_ttsplugin.processor import admission_tokenizer

    requests: list[ScriptedRequest] = []
    group_name = f"g{rng.randrange(10**6)}"
    with contextlib.ExitStack() as admission:
        admission.enter_context(first_finish_scope())
        if marker_known:
            admission.enter_context(admission_tokenizer(StubTokenizer(), VOCAB))
        for p in range(num_parents):
            requests += _make_parent(rng, p, group_name, max_tokens)
    rng.shuffle(requests)
    return requests


def _make_parent(rng: random.Random, p: int, group_name: str, max_tokens: int) -> list[ScriptedRequest]:
    from vllm import SamplingParams

    from vllm_ttsplugin.ffs import validate_first_finish_params

    requests = []
    kind = rng.choice(["ffs", "ffs", "ffs", "plain", "group"])
    n = rng.randint(2, 5)
    extra: dict | None = None
    k = 0
    race = None
    if kind == "ffs":
        k = rng.randint(1, n)
        extra = {"tts_first_finish": k}
        race = f"race{p}"
    elif kind == "group":
        k = rng.randint(1, 3)
        extra = {"tts_first_finish": k, "tts_group": group_name}
        race = group_name
    stop = ["t9 "] if rng.random() < 0.3 else None
    parent = SamplingParams(n=n, max_tokens=max_tokens, temperature=1.0, extra_args=extra, stop=stop)
    validate_first_finish_params(parent)
    parent.update_from_generation_config({}, EOS)
    prompt = [rng.randrange(5, VOCAB) for _ in range(rng.randint(1, 6))] + [p]
    for i in range(n):
        child = copy.copy(parent)  # what vLLM's ParentRequest does
        child.n = 1
        length = rng.randint(1, max_tokens)
        natural = rng.random() < 0.8  # else it runs into max_tokens
        words = [t for t in FILLER if t != 9] + ([9] if stop else [])
        script = [rng.choice(words) for _ in range(length if natural else max_tokens)]
        if natural:
            script[-1] = EOS
        requests.append(ScriptedRequest(f"{p}-{i}", child, prompt, script, race, k))
    return requests


class Reference:
    """The FFS rule, stated directly: a member is stopped once its race has >= k natural finishes."""

    def __init__(self):
        self.finished: dict[str, int] = {}  # natural finishes in steps before the current one
        self._this_step: list[str] = []

    def must_stop(self, req: ScriptedRequest) -> bool:
        return req.race is not None and self.finished.get(req.race, 0) >= req.k

    def forced_token(self, req: ScriptedRequest, marked: bool) -> int:
        return MARKER if marked and (not req.out or req.out[-1] != MARKER) else EOS

    def record(self, req: ScriptedRequest, token: int, forced: bool) -> None:
        """Append the sampled token and decide whether the sample ended (engine + frontend semantics)."""
        req.out.append(token)
        req.forced_once |= forced
        natural = False
        if token in (EOS, MARKER):
            req.finished = True
            natural = not forced and token == EOS
        elif (
            req.params.stop
            and not forced
            and any(s in StubTokenizer().decode(req.out) for s in req.params.stop)
        ):
            req.finished = natural = True  # the frontend ends it on the stop string
        elif len(req.out) >= req.params.max_tokens:
            req.finished = True
        if natural and req.race is not None and not req.forced_once:
            self._this_step.append(req.race)

    def end_step(self) -> None:
        """Finishes of this step become visible to the next one (the processor sees them when samples leave)."""
        for race in self._this_step:
            self.finished[race] = self.finished.get(race, 0) + 1
        self._this_step.clear()


def expected_first_finish(reference_output, k: int, marker_token: int | None):
    """What an in-engine FFS run must return, sample by sample, given the same request run without FFS.

    All samples start together, so the k-th natural finish happens at step t = its length; every sample still
    running then gets the marker (or EOS) as token t + 1. Returns (token ids per sample, set of stopped indices).
    """
    natural = sorted(len(c.token_ids) for c in reference_output.outputs if c.finish_reason == "stop")
    tokens, stopped = {}, set()
    if len(natural) < k:
        return {c.index: list(c.token_ids) for c in reference_output.outputs}, stopped
    t = natural[k - 1]
    for c in reference_output.outputs:
        if len(c.token_ids) <= t:
            tokens[c.index] = list(c.token_ids)
        else:
            tokens[c.index] = list(c.token_ids[:t]) + [marker_token]
            stopped.add(c.index)
    return tokens, stopped
