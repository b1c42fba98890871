"""Per-request thinking-control settings: one config object, one validation place, the same names everywhere.

The keys a request carries in `SamplingParams.extra_args` (offline) or `vllm_xargs` (OpenAI server) are the
field names of `ThinkingConfig`, so `ThinkingConfig(**extra_args)` and `config.to_extra_args()` round-trip:

| key                   | type (default)        | meaning                                                            |
|-----------------------|-----------------------|--------------------------------------------------------------------|
| `tts_min_think`       | int >= 0 (off)        | minimum thinking tokens; an earlier end attempt becomes the wait text|
| `tts_max_think`       | int >= 1 (off)        | maximum thinking tokens; then the end delimiter, then answer prefix |
| `tts_wait`            | str ("Wait")          | text injected verbatim on a suppressed end attempt                  |
| `tts_max_waits`       | int >= 0 (unlimited)  | s1's "ignore N times": after N injections the model may end        |
| `tts_answer_prefix`   | str ("")              | forced verbatim after a *budget* stop only                         |
| `tts_think_end`       | str (detected)        | end-of-thinking delimiter, may be several tokens                   |
| `tts_think_start`     | str (detected)        | start-of-thinking delimiter, may be several tokens                 |
| `tts_end_temperature` | float > 0 (off)       | TS, the paper's form: end-token logit z -> z / T while thinking     |
| `tts_end_bias`        | float (off)           | TS, shift-invariant form: z -> z + bias (odds times e^bias)         |
| `tts_eos_in_thinking` | str ("end_attempt")   | EOS inside thinking: an end attempt (s1) or "stop" (ends the output)|

This module is framework-free (no torch, no vLLM): `ThinkingConfig.from_extra_args` does every check that needs
no tokenizer; `vllm_ttsplugin.vocab.resolve_thinking` does the ones that need the model's tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Keys of other ttsplugin components (First Finish Search, a separate issue). They are tts_* keys but not ours;
# the processor that owns them validates them. Until such a component is composed into the processor, a request
# that uses them is rejected with a message saying so (instead of being silently ignored).
RESERVED_KEYS: Mapping[str, str] = {
    "tts_first_finish": "First Finish Search",
    "tts_group": "First Finish Search",
}

KEY_PREFIX = "tts_"
DEFAULT_WAIT = "Wait"

# Upper bounds that keep per-slot buffers small (they are preallocated for every batch slot).
MAX_FORCED_TOKENS = 256  # tokens of the wait text, or of end delimiter + answer prefix
MAX_DELIMITER_TOKENS = 32


class TTSParamsError(ValueError):
    """A per-request ttsplugin setting is invalid. `parameter` names the offending key, `value` is what was given.

    The one error class of every control (thinking control, First Finish Search). `TTSLogitsProcessor.
    validate_params` re-raises it as vLLM's `VLLMValidationError` with the same `parameter` (HTTP 400 naming the
    key on the server); the re-raised error is also an instance of the original class.
    """

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value


class ThinkingConfigError(TTSParamsError):
    """A thinking-control setting is invalid (see `TTSParamsError`)."""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_int(key: str, value: Any, minimum: int) -> int:
    # bool is an int subclass; `True` as a budget is a client bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ThinkingConfigError(
            f"`{key}` must be an integer >= {minimum}, got {_describe(value)}", parameter=key, value=value
        )
    if value < minimum:
        raise ThinkingConfigError(f"`{key}` must be >= {minimum}, got {value}", parameter=key, value=value)
    return value


def _check_float(key: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ThinkingConfigError(
            f"`{key}` must be a number, got {_describe(value)}", parameter=key, value=value
        )
    value = float(value)
    if not math.isfinite(value):
        raise ThinkingConfigError(f"`{key}` must be finite, got {value}", parameter=key, value=value)
    if positive and value <= 0.0:
        raise ThinkingConfigError(f"`{key}` must be > 0, got {value}", parameter=key, value=value)
    return value


def _check_str(key: str, value: Any, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise ThinkingConfigError(
            f"`{key}` must be a string, got {_describe(value)}", parameter=key, value=value
        )
    if not allow_empty and value == "":
        raise ThinkingConfigError(f"`{key}` must not be empty", parameter=key, value=value)
    return value


EOS_END_ATTEMPT = "end_attempt"
EOS_STOP = "stop"
EOS_MODES = (EOS_END_ATTEMPT, EOS_STOP)


def _key(kind: type, help: str, *, default: Any = None, text: bool = False, choices: tuple = ()) -> Any:
    """A config field whose metadata describes it for the command line (`ttsplugin generate` derives its flags
    from these: type, help, choices, and whether `\\n`/`\\t` escapes are decoded)."""
    return field(default=default, metadata={"type": kind, "help": help, "text": text, "choices": choices})


@dataclass(frozen=True)
class ThinkingConfig:
    """Thinking control for one request: s1 budget forcing and temperature-scaled end-of-think.

    Field names are the request keys (`extra_args` / `vllm_xargs`), so the same name works in Python, over HTTP
    and on the command line. Every field is optional; a config with neither a budget nor TS leaves the request
    untouched.

    Args:
        tts_min_think (`int`, *optional*): Minimum number of thinking tokens (the model's own tokens inside the
            think block; injected wait tokens do not count). Before it is reached, an attempt to end thinking (the
            end delimiter's first token, or EOS / a stop token, would be produced) is replaced by `tts_wait`, and
            the token after a wait text is never an attempt (s1's `min_tokens=1`).
        tts_max_think (`int`, *optional*): Maximum number of thinking tokens (counted the same way). The completion
            then has exactly this many thinking tokens, followed by the end delimiter's tokens and the answer
            prefix's tokens.
        tts_wait (`str`, defaults to `"Wait"`): Text injected verbatim on a suppressed end attempt (the tokens of
            `tokenizer.encode(text, add_special_tokens=False)`); once started it is always completed.
        tts_max_waits (`int`, *optional*): At most this many injections ("ignore N times" in s1); after that the
            model may end thinking before `tts_min_think`. Unlimited by default.
        tts_answer_prefix (`str`, defaults to `""`): Forced after the end delimiter when `tts_max_think` stopped
            thinking (not after a natural end), e.g. `"\\nFinal Answer:"`.
        tts_think_end (`str`, *optional*): End-of-thinking delimiter. By default the engine's reasoning
            configuration's, else detected from the tokenizer (`</think>` when it is a token). May tokenize to
            several tokens (s1's `<|im_start|>answer`); if its first token is ordinary text, only `tts_max_think`
            can be enforced with it.
        tts_think_start (`str`, *optional*): Start-of-thinking delimiter, detected like `tts_think_end`.
        tts_end_temperature (`float`, *optional*): Temperature scaling of the end token (the paper's form): its
            logit z becomes z / T while thinking. Note z / T depends on the sign of z (logits are shift-invariant).
        tts_end_bias (`float`, *optional*): Shift-invariant form: z becomes z + bias, i.e. the end token's odds
            are multiplied by e^bias. Mutually exclusive with `tts_end_temperature`.
        tts_eos_in_thinking (`str`, defaults to `"end_attempt"`): What an EOS (or another token that would end the
            request) sampled inside an open think block means. `"end_attempt"` (s1's loop, which stops a
            thinking round at the end delimiter or EOS): below the minimum it becomes the wait text, otherwise the
            end delimiter (thinking ends naturally and the answer follows). `"stop"`: it ends the completion, as
            without the processor.
    """

    tts_min_think: int | None = _key(
        int, "minimum thinking tokens; an earlier attempt to end thinking becomes the wait text"
    )
    tts_max_think: int | None = _key(
        int, "at exactly this many thinking tokens the end delimiter (then the answer prefix) is forced"
    )
    tts_wait: str = _key(str, "text injected on a suppressed end attempt", default=DEFAULT_WAIT, text=True)
    tts_max_waits: int | None = _key(int, "after this many injections the model may end thinking (unlimited)")
    tts_answer_prefix: str = _key(
        str,
        "text forced after a budget stop (not after a natural end), e.g. '\\nFinal Answer:'",
        default="",
        text=True,
    )
    tts_think_end: str | None = _key(str, "end-of-thinking delimiter (detected by default)", text=True)
    tts_think_start: str | None = _key(str, "start-of-thinking delimiter (detected by default)", text=True)
    tts_end_temperature: float | None = _key(
        float, "TS, the paper's form: the end token's logit z becomes z / T while thinking"
    )
    tts_end_bias: float | None = _key(float, "TS, shift-invariant form: z becomes z + bias while thinking")
    tts_eos_in_thinking: str = _key(
        str,
        "what EOS (or a stop token) sampled inside thinking means: 'end_attempt' (s1: an attempt to end thinking, "
        "so the wait text below the minimum, else the end delimiter) or 'stop' (it ends the completion)",
        default=EOS_END_ATTEMPT,
        choices=EOS_MODES,
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ------------------------------------------------------------------------------------------
    def validate(self) -> ThinkingConfig:
        """Check every field and the relations between them; raise `ThinkingConfigError` naming the key."""
        if self.tts_min_think is not None:
            _check_int("tts_min_think", self.tts_min_think, 0)
        if self.tts_max_think is not None:
            _check_int("tts_max_think", self.tts_max_think, 1)
        if self.tts_max_waits is not None:
            _check_int("tts_max_waits", self.tts_max_waits, 0)
        _check_str("tts_wait", self.tts_wait, allow_empty=False)
        _check_str("tts_answer_prefix", self.tts_answer_prefix, allow_empty=True)
        if self.tts_think_end is not None:
            _check_str("tts_think_end", self.tts_think_end, allow_empty=False)
        if self.tts_think_start is not None:
            _check_str("tts_think_start", self.tts_think_start, allow_empty=False)
        if self.tts_end_temperature is not None:
            object.__setattr__(
                self,
                "tts_end_temperature",
                _check_float("tts_end_temperature", self.tts_end_temperature, positive=True),
            )
        if self.tts_end_bias is not None:
            object.__setattr__(
                self, "tts_end_bias", _check_float("tts_end_bias", self.tts_end_bias, positive=False)
            )
        _check_str("tts_eos_in_thinking", self.tts_eos_in_thinking, allow_empty=False)
        if self.tts_eos_in_thinking not in EOS_MODES:
            raise ThinkingConfigError(
                f"`tts_eos_in_thinking` must be one of {', '.join(map(repr, EOS_MODES))}, "
                f"got {self.tts_eos_in_thinking!r}",
                parameter="tts_eos_in_thinking",
                value=self.tts_eos_in_thinking,
            )
        if self.tts_end_temperature is not None and self.tts_end_bias is not None:
            raise ThinkingConfigError(
                "set only one of `tts_end_temperature` (z / T) and `tts_end_bias` (z + bias)",
                parameter="tts_end_bias",
                value=self.tts_end_bias,
            )
        if (
            self.tts_min_think is not None
            and self.tts_max_think is not None
            and self.tts_min_think > self.tts_max_think
        ):
            raise ThinkingConfigError(
                f"`tts_min_think` ({self.tts_min_think}) must be <= `tts_max_think` ({self.tts_max_think})",
                parameter="tts_min_think",
                value=self.tts_min_think,
            )
        if (
            self.tts_think_end is not None
            and self.tts_think_start is not None
            and self.tts_think_end == self.tts_think_start
        ):
            raise ThinkingConfigError(
                "`tts_think_end` must differ from `tts_think_start`",
                parameter="tts_think_end",
                value=self.tts_think_end,
            )
        return self

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        """Whether the request is controlled at all: a budget or TS is set (the other keys only tune those)."""
        return bool(self.tts_min_think) or self.tts_max_think is not None or self.has_end_scaling

    @property
    def eos_is_end_attempt(self) -> bool:
        return self.tts_eos_in_thinking == EOS_END_ATTEMPT

    @property
    def has_end_scaling(self) -> bool:
        return self.tts_end_temperature is not None or self.tts_end_bias is not None

    # -- conversion ------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_extra_args(cls, extra_args: Mapping[str, Any] | None, *, known_keys=()) -> ThinkingConfig | None:
        """Parse the thinking keys of a request's `extra_args`; `None` when it carries none.

        Args:
            extra_args: `SamplingParams.extra_args` (or the `vllm_xargs` of an OpenAI request).
            known_keys: Other `tts_*` keys that a composed component owns (they are skipped here).

        Raises:
            ThinkingConfigError: for an unknown `tts_*` key, a wrong type or an invalid value, naming the key.
        """
        if not extra_args:
            return None
        if not isinstance(extra_args, Mapping):
            raise ThinkingConfigError(
                f"`extra_args` must be a mapping, got {_describe(extra_args)}", parameter="extra_args"
            )
        ours = set(cls.keys())
        values: dict[str, Any] = {}
        for key, value in extra_args.items():
            if not isinstance(key, str) or not key.startswith(KEY_PREFIX):
                continue  # other plugins' keys are none of our business
            if key in ours:
                values[key] = value
            elif key in known_keys:
                continue
            elif key in RESERVED_KEYS:
                raise ThinkingConfigError(
                    f"`{key}` belongs to {RESERVED_KEYS[key]}, which this TTSLogitsProcessor does not include",
                    parameter=key,
                    value=value,
                )
            else:
                known = ", ".join(sorted(ours | set(known_keys)))
                raise ThinkingConfigError(
                    f"unknown key `{key}` (ttsplugin keys: {known})", parameter=key, value=value
                )
        if not values:
            return None
        # Explicit nulls from JSON clients mean "not set" for the optional keys.
        for key in ("tts_wait", "tts_answer_prefix", "tts_eos_in_thinking"):
            if key in values and values[key] is None:
                raise ThinkingConfigError(f"`{key}` must be a string, got None", parameter=key, value=None)
        values = {k: v for k, v in values.items() if v is not None}
        return cls(**values)

    def to_extra_args(self) -> dict[str, Any]:
        """The `extra_args` / `vllm_xargs` dict for this config (only the fields that differ from the default)."""
        default = _DEFAULTS
        return {k: v for k, v in asdict(self).items() if v != default[k]}

    def sampling_params(self, **kwargs):
        """A `vllm.SamplingParams(**kwargs)` carrying this config (merged into `extra_args` if also given)."""
        from vllm import SamplingParams

        extra = dict(kwargs.pop("extra_args", None) or {})
        extra.update(self.to_extra_args())
        return SamplingParams(extra_args=extra, **kwargs)


_DEFAULTS = {f.name: f.default for f in fields(ThinkingConfig)}
