"""Tokenizer-dependent resolution of a `ThinkingConfig` into token ids (framework-free: any HF-style tokenizer).

`resolve_thinking(config, vocab, sampling)` turns the strings of a request (delimiters, wait text, answer prefix)
into token ids, detects default delimiters, and does every check that needs the tokenizer. It is used at admission
(`validate_params`), by the engine-side adapters and by the report reader, so all of them agree on the ids.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from vllm_ttsplugin.config import (
    MAX_DELIMITER_TOKENS,
    MAX_FORCED_TOKENS,
    ThinkingConfig,
    ThinkingConfigError,
)

# Single-token think delimiter pairs used by released reasoning models, most common first. The first pair whose
# end delimiter is one token of the tokenizer is the default. (Qwen3 / QwQ / DeepSeek-R1 and most distills use
# <think>; the others are Seed-OSS, Kimi and Cohere Command A Reasoning.)
KNOWN_DELIMITERS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<seed:think>", "</seed:think>"),
    ("◁think▷", "◁/think▷"),
    ("<|START_THINKING|>", "<|END_THINKING|>"),
)


@dataclass(frozen=True)
class SamplingView:
    """The parts of a request's own sampling that decide whether the end token "would have been sampled"."""

    temperature: float = 1.0  # < 1e-5 means greedy (vLLM's convention)
    top_k: int = 0  # <= 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    @classmethod
    def from_params(cls, params: Any) -> SamplingView:
        """From a `vllm.SamplingParams` (or anything with the same attribute names)."""
        return cls(
            temperature=float(getattr(params, "temperature", 1.0)),
            top_k=int(getattr(params, "top_k", 0) or 0),
            top_p=float(getattr(params, "top_p", 1.0) if getattr(params, "top_p", None) is not None else 1.0),
            min_p=float(getattr(params, "min_p", 0.0) or 0.0),
            seed=getattr(params, "seed", None),
        )


GREEDY_EPS = 1e-5  # vllm.v1.sample.sampler._SAMPLING_EPS


@dataclass(frozen=True)
class ThinkingSpec:
    """One request's thinking control, resolved to token ids: what the batched state machine consumes."""

    min_think: int  # 0: no minimum
    max_think: int | None
    max_waits: int | None
    wait_ids: tuple[int, ...]
    answer_prefix_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    start_ids: tuple[int, ...]  # empty: the completion starts inside thinking
    end_temperature: float | None
    end_bias: float | None
    sampling: SamplingView = SamplingView()
    # Whether producing end_ids[0] alone is an attempt to end thinking: the delimiter is one token, or starts
    # with a special/added token (s1's <|im_start|>answer). False for a delimiter whose first token is ordinary
    # text (`</` of `</think>` split by BPE): the end is then recognised only once the whole delimiter is written.
    end_is_attempt: bool = True
    # Tokens that would end the request (EOS, stop_token_ids) and inside thinking are end attempts (s1's loop
    # stops a thinking round at them); empty when `tts_eos_in_thinking="stop"`.
    stop_ids: tuple[int, ...] = ()

    @property
    def end_token(self) -> int:
        return self.end_ids[0]

    @property
    def attempt_ids(self) -> tuple[int, ...]:
        """Every token that, produced while thinking, is an attempt to end it."""
        return ((self.end_ids[0],) if self.end_is_attempt else ()) + self.stop_ids


class TokenizerVocab:
    """Cached tokenizer facts: encodings of short texts, default delimiters, EOS ids, model vocabulary size.

    Args:
        tokenizer: A Hugging Face style tokenizer (`encode`, `decode`, `eos_token_id`, `unk_token_id`).
        vocab_size: Number of logits the model produces. Token ids at or above it cannot be forced. Defaults to
            `len(tokenizer)`.
    """

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int | None = None,
        reasoning_delimiters: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size) if vocab_size is not None else len(tokenizer)
        # (start ids, end ids) of the engine's reasoning configuration (`--reasoning-parser` /
        # `--reasoning-config`): the default delimiters when present, before `KNOWN_DELIMITERS`.
        self.reasoning_delimiters = reasoning_delimiters
        self._encodings: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self._default: tuple[str, str] | None | bool = False  # False: not computed yet
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_ids: frozenset[int] = frozenset([eos] if isinstance(eos, int) else [])
        unk = getattr(tokenizer, "unk_token_id", None)
        self.unk_id: int | None = unk if isinstance(unk, int) else None
        self._added: frozenset[int] | None = None

    def is_added_token(self, token: int) -> bool:
        """Whether `token` is a special or added token (never produced by splitting ordinary text)."""
        if self._added is None:
            ids: set[int] = set()
            with contextlib.suppress(Exception):  # not a Hugging Face tokenizer
                ids.update(int(i) for i in self.tokenizer.get_added_vocab().values())
            ids.update(int(i) for i in getattr(self.tokenizer, "all_special_ids", None) or ())
            self._added = frozenset(ids)
        return token in self._added

    def encode(self, text: str) -> tuple[int, ...]:
        with self._lock:
            ids = self._encodings.get(text)
            if ids is not None:
                self._encodings.move_to_end(text)
                return ids
        ids = tuple(int(i) for i in self.tokenizer.encode(text, add_special_tokens=False))
        with self._lock:
            self._encodings[text] = ids
            while len(self._encodings) > 1024:
                self._encodings.popitem(last=False)
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def default_delimiter_ids(self) -> tuple[tuple[int, ...], tuple[int, ...], str] | None:
        """`(start ids, end ids, where from)` of the default delimiters, or `None`.

        The engine's reasoning configuration first (`--reasoning-parser` / `--reasoning-config`: its start string
        and the parser's natural end string), then the first pair of `KNOWN_DELIMITERS` whose end delimiter is a
        single token of this tokenizer.
        """
        if self.reasoning_delimiters is not None:
            start, end = self.reasoning_delimiters
            return tuple(start), tuple(end), "the engine's reasoning configuration"
        found = self.default_delimiters
        if found is None:
            return None
        return self.encode(found[0]), self.encode(found[1]), "the tokenizer"

    @property
    def default_delimiters(self) -> tuple[str, str] | None:
        """`(start, end)` of the first known pair whose end delimiter is a single token, else `None`."""
        if self._default is False:
            found = None
            for start, end in KNOWN_DELIMITERS:
                ids = self.encode(end)
                if len(ids) == 1 and ids[0] != self.unk_id and self.decode(ids) == end:
                    found = (start, end)
                    break
            self._default = found
        return self._default  # type: ignore[return-value]

    def delimiter_ids(self, key: str, text: str) -> tuple[int, ...]:
        """Token ids of a delimiter, checking that it is in the vocabulary and tokenizes losslessly."""
        ids = self.encode(text)
        if not ids:
            raise ThinkingConfigError(f"`{key}` {text!r} tokenizes to nothing", parameter=key, value=text)
        if self.unk_id is not None and self.unk_id in ids:
            raise ThinkingConfigError(
                f"`{key}` {text!r} is not in the model's vocabulary (it tokenizes to the unknown token)",
                parameter=key,
                value=text,
            )
        if any(i >= self.vocab_size or i < 0 for i in ids):
            raise ThinkingConfigError(
                f"`{key}` {text!r} tokenizes to ids {list(ids)} outside the model's vocabulary of "
                f"{self.vocab_size} logits",
                parameter=key,
                value=text,
            )
        if self.decode(ids).strip() != text.strip():
            raise ThinkingConfigError(
                f"`{key}` {text!r} cannot be tokenized losslessly (it decodes back as {self.decode(ids)!r})",
                parameter=key,
                value=text,
            )
        if len(ids) > MAX_DELIMITER_TOKENS:
            raise ThinkingConfigError(
                f"`{key}` is {len(ids)} tokens long; at most {MAX_DELIMITER_TOKENS}",
                parameter=key,
                value=text,
            )
        return ids

    def checked_ids(self, key: str, ids: tuple[int, ...], source: str) -> tuple[int, ...]:
        """Default delimiter ids (from `source`), checked against the model's vocabulary."""
        if not ids or any(i >= self.vocab_size or i < 0 for i in ids) or len(ids) > MAX_DELIMITER_TOKENS:
            raise ThinkingConfigError(
                f"the default `{key}` from {source} ({self.decode(ids)!r}, ids {list(ids)}) is not usable with "
                f"the model's vocabulary of {self.vocab_size} logits; pass `{key}`",
                parameter=key,
                value=None,
            )
        return tuple(int(i) for i in ids)

    def text_ids(self, key: str, text: str, *, allow_empty: bool) -> tuple[int, ...]:
        ids = self.encode(text) if text else ()
        if not ids and not allow_empty:
            raise ThinkingConfigError(f"`{key}` {text!r} tokenizes to no tokens", parameter=key, value=text)
        if any(i >= self.vocab_size or i < 0 for i in ids):
            raise ThinkingConfigError(
                f"`{key}` {text!r} tokenizes to ids outside the model's vocabulary of {self.vocab_size} logits",
                parameter=key,
                value=text,
            )
        return ids


def _delimiters(config: ThinkingConfig, vocab: TokenizerVocab) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`(start ids, end ids)`: the request's own delimiters, else the engine's / tokenizer's defaults."""
    default = None if config.tts_think_end is not None else vocab.default_delimiter_ids()
    if config.tts_think_end is not None:
        end_ids = vocab.delimiter_ids("tts_think_end", config.tts_think_end)
    elif default is not None:
        end_ids = vocab.checked_ids("tts_think_end", default[1], default[2])
    else:
        raise ThinkingConfigError(
            "could not detect the model's end-of-thinking delimiter (no reasoning configuration in the engine, "
            "and none of " + ", ".join(end for _, end in KNOWN_DELIMITERS) + " is a single token); pass "
            "`tts_think_end` (and `tts_think_start`), or start vLLM with `--reasoning-parser`",
            parameter="tts_think_end",
            value=None,
        )
    if config.tts_think_start is not None:
        start_ids = vocab.delimiter_ids("tts_think_start", config.tts_think_start)
    elif default is not None:
        start_ids = vocab.checked_ids("tts_think_start", default[0], default[2])
    else:
        # A custom end delimiter without a start: thinking is open from the first generated token.
        start_ids = ()
    if start_ids == end_ids:
        raise ThinkingConfigError(
            "`tts_think_start` and `tts_think_end` tokenize identically", parameter="tts_think_start"
        )
    return start_ids, end_ids


def _check_text_delimiter(config: ThinkingConfig, vocab: TokenizerVocab, end_ids: tuple[int, ...]) -> bool:
    """Whether `end_ids[0]` alone is an end attempt; refuse what a text delimiter cannot do exactly."""
    if len(end_ids) == 1 or vocab.is_added_token(end_ids[0]):
        return True
    # The first token is ordinary text (BPE split `</think>` into `</` `think` `>`): text that merely starts
    # like the delimiter must come out untouched, so the end is only certain once the whole delimiter is
    # written. By then its first tokens are in the output, so an end attempt cannot be replaced by the wait
    # text (s1's loop would strip the delimiter), nor can its probability be scaled.
    wants = [
        key
        for key, on in (("tts_min_think", bool(config.tts_min_think)), ("TS", config.has_end_scaling))
        if on
    ]
    if wants:
        first = vocab.decode(end_ids[:1])
        raise ThinkingConfigError(
            f"`tts_think_end` {vocab.decode(end_ids)!r} starts with the ordinary-text token {first!r}, so an "
            "attempt to end thinking is only recognisable after the whole delimiter is written; "
            f"{' and '.join(wants)} cannot be enforced exactly with it. Use a delimiter that is a single token or "
            "starts with a special/added token (e.g. add it to the tokenizer), or set only `tts_max_think`",
            parameter="tts_think_end",
            value=config.tts_think_end,
        )
    return False


def resolve_thinking(
    config: ThinkingConfig,
    vocab: TokenizerVocab,
    sampling: SamplingView | None = None,
    stop_token_ids: frozenset[int] | set[int] | tuple[int, ...] = (),
) -> ThinkingSpec:
    """Resolve a validated config against a tokenizer; raise `ThinkingConfigError` naming the key on failure.

    Args:
        config: The request's thinking config (already type-checked).
        vocab: The model's tokenizer facts.
        sampling: The request's own sampling settings (temperature, top-k/p, min-p, seed).
        stop_token_ids: Ids that end the request (EOS unless `ignore_eos`, `stop_token_ids`). Inside thinking
            they are end attempts (unless `tts_eos_in_thinking="stop"`); forced texts must not contain them.
    """
    start_ids, end_ids = _delimiters(config, vocab)
    end_is_attempt = _check_text_delimiter(config, vocab, end_ids)
    wait_ids = vocab.text_ids("tts_wait", config.tts_wait, allow_empty=False)
    prefix_ids = vocab.text_ids("tts_answer_prefix", config.tts_answer_prefix, allow_empty=True)
    if len(wait_ids) > MAX_FORCED_TOKENS:
        raise ThinkingConfigError(
            f"`tts_wait` is {len(wait_ids)} tokens long; at most {MAX_FORCED_TOKENS}",
            parameter="tts_wait",
            value=config.tts_wait,
        )
    if len(end_ids) + len(prefix_ids) > MAX_FORCED_TOKENS:
        raise ThinkingConfigError(
            f"`tts_answer_prefix` is {len(prefix_ids)} tokens long; at most {MAX_FORCED_TOKENS - len(end_ids)}",
            parameter="tts_answer_prefix",
            value=config.tts_answer_prefix,
        )
    if end_is_attempt and end_ids[0] in wait_ids:
        raise ThinkingConfigError(
            f"`tts_wait` {config.tts_wait!r} contains the end delimiter's first token; it would end thinking",
            parameter="tts_wait",
            value=config.tts_wait,
        )
    stops = set(stop_token_ids) | set(vocab.eos_ids)
    for key, ids, text in (
        ("tts_think_end", end_ids, vocab.decode(end_ids)),
        ("tts_wait", wait_ids, config.tts_wait),
        ("tts_answer_prefix", prefix_ids, config.tts_answer_prefix),
    ):
        if stops.intersection(ids):
            raise ThinkingConfigError(
                f"`{key}` {text!r} contains an end-of-sequence/stop token; forcing it would end the request",
                parameter=key,
                value=text,
            )
    attempts = tuple(sorted(int(t) for t in stop_token_ids)) if config.eos_is_end_attempt else ()
    return ThinkingSpec(
        min_think=config.tts_min_think or 0,
        max_think=config.tts_max_think,
        max_waits=config.tts_max_waits,
        wait_ids=wait_ids,
        answer_prefix_ids=prefix_ids,
        end_ids=end_ids,
        start_ids=start_ids,
        end_temperature=config.tts_end_temperature,
        end_bias=config.tts_end_bias,
        sampling=sampling or SamplingView(),
        end_is_attempt=end_is_attempt,
        stop_ids=attempts,
    )


# One TokenizerVocab per (tokenizer object, vocabulary size, reasoning delimiters): frontend validation, engine
# adapters and reports share it.
_VOCABS: OrderedDict[tuple, TokenizerVocab] = OrderedDict()
_VOCABS_LOCK = threading.Lock()


def vocab_for(
    tokenizer: Any,
    vocab_size: int | None = None,
    reasoning_delimiters: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> TokenizerVocab:
    """The cached `TokenizerVocab` of a tokenizer object (keyed by identity, bounded)."""
    key = (id(tokenizer), None if vocab_size is None else int(vocab_size), reasoning_delimiters)
    with _VOCABS_LOCK:
        vocab = _VOCABS.get(key)
        if vocab is not None and vocab.tokenizer is tokenizer:
            _VOCABS.move_to_end(key)
            return vocab
        vocab = TokenizerVocab(tokenizer, vocab_size, reasoning_delimiters)
        _VOCABS[key] = vocab
        while len(_VOCABS) > 16:
            _VOCABS.popitem(last=False)
        return vocab


def reasoning_delimiters(vllm_config: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(start ids, natural end ids) of a vLLM config's reasoning configuration, when one is enabled.

    `--reasoning-parser NAME` and/or `--reasoning-config` give vLLM a start string and an end string; the end
    string vLLM *forces* for its own `thinking_token_budget` may carry a transition phrase, so the parser's
    natural end marker (what the model writes) is the end delimiter here.
    """
    config = getattr(vllm_config, "reasoning_config", None)
    if config is None or not getattr(config, "enabled", False):
        return None
    start = getattr(config, "reasoning_start_token_ids", None)
    end = getattr(config, "natural_reasoning_end_token_ids", None) or getattr(
        config, "reasoning_end_token_ids", None
    )
    if not start or not end:
        return None
    return tuple(int(i) for i in start), tuple(int(i) for i in end)
