"""Tokenizer-dependent resolution of a `ThinkingConfig` into token ids (framework-free: any HF-style tokenizer).

`resolve_thinking(config, vocab, sampling)` turns the strings of a request (delimiters, wait text, answer prefix)
into token ids, detects default delimiters, and does every check that needs the tokenizer. It is used at admission
(`validate_params`), by the engine-side adapters and by the report reader, so all of them agree on the ids.
"""

from __future__ import annotations

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

    @property
    def end_token(self) -> int:
        return self.end_ids[0]


class TokenizerVocab:
    """Cached tokenizer facts: encodings of short texts, default delimiters, EOS ids, model vocabulary size.

    Args:
        tokenizer: A Hugging Face style tokenizer (`encode`, `decode`, `eos_token_id`, `unk_token_id`).
        vocab_size: Number of logits the model produces. Token ids at or above it cannot be forced. Defaults to
            `len(tokenizer)`.
    """

    def __init__(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size) if vocab_size is not None else len(tokenizer)
        self._encodings: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self._default: tuple[str, str] | None | bool = False  # False: not computed yet
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_ids: frozenset[int] = frozenset([eos] if isinstance(eos, int) else [])
        unk = getattr(tokenizer, "unk_token_id", None)
        self.unk_id: int | None = unk if isinstance(unk, int) else None

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


def resolve_thinking(
    config: ThinkingConfig,
    vocab: TokenizerVocab,
    sampling: SamplingView | None = None,
    stop_token_ids: frozenset[int] | set[int] = frozenset(),
) -> ThinkingSpec:
    """Resolve a validated config against a tokenizer; raise `ThinkingConfigError` naming the key on failure.

    Args:
        config: The request's thinking config (already type-checked).
        vocab: The model's tokenizer facts.
        sampling: The request's own sampling settings (temperature, top-k/p, min-p, seed).
        stop_token_ids: Ids that end the request (EOS, `stop_token_ids`); forced tokens must not contain them.
    """
    default = vocab.default_delimiters
    end_text = config.tts_think_end if config.tts_think_end is not None else (default[1] if default else None)
    if end_text is None:
        raise ThinkingConfigError(
            "could not detect the model's end-of-thinking delimiter from its tokenizer (none of "
            + ", ".join(end for _, end in KNOWN_DELIMITERS)
            + " is a single token); pass `tts_think_end` (and `tts_think_start`)",
            parameter="tts_think_end",
            value=None,
        )
    end_ids = vocab.delimiter_ids("tts_think_end", end_text)
    if config.tts_think_start is not None:
        start_ids = vocab.delimiter_ids("tts_think_start", config.tts_think_start)
    elif config.tts_think_end is None and default is not None:
        start_ids = vocab.delimiter_ids("tts_think_start", default[0])
    else:
        # A custom end delimiter without a start: thinking is open from the first generated token.
        start_ids = ()
    if start_ids == end_ids:
        raise ThinkingConfigError(
            "`tts_think_start` and `tts_think_end` tokenize identically", parameter="tts_think_start"
        )

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
    if end_ids[0] in wait_ids:
        raise ThinkingConfigError(
            f"`tts_wait` {config.tts_wait!r} contains the end delimiter's first token; it would end thinking",
            parameter="tts_wait",
            value=config.tts_wait,
        )
    stops = set(stop_token_ids) | set(vocab.eos_ids)
    for key, ids, text in (
        ("tts_think_end", end_ids, end_text),
        ("tts_wait", wait_ids, config.tts_wait),
        ("tts_answer_prefix", prefix_ids, config.tts_answer_prefix),
    ):
        if stops.intersection(ids):
            raise ThinkingConfigError(
                f"`{key}` {text!r} contains an end-of-sequence/stop token; forcing it would end the request",
                parameter=key,
                value=text,
            )
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
    )


# One TokenizerVocab per tokenizer object (frontend validation, engine adapters and reports share it).
_VOCABS: OrderedDict[int, TokenizerVocab] = OrderedDict()
_VOCABS_LOCK = threading.Lock()


def vocab_for(tokenizer: Any, vocab_size: int | None = None) -> TokenizerVocab:
    """The cached `TokenizerVocab` of a tokenizer object (keyed by identity, bounded)."""
    key = id(tokenizer)
    with _VOCABS_LOCK:
        vocab = _VOCABS.get(key)
        if (
            vocab is not None
            and vocab.tokenizer is tokenizer
            and (vocab_size is None or vocab.vocab_size == int(vocab_size))
        ):
            _VOCABS.move_to_end(key)
            return vocab
        vocab = TokenizerVocab(tokenizer, vocab_size)
        _VOCABS[key] = vocab
        while len(_VOCABS) > 16:
            _VOCABS.popitem(last=False)
        return vocab
