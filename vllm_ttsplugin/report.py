"""Read a finished completion back into a thinking report: thinking tokens, answer tokens, waits, how it ended.

The report replays the completion's tokens through the scalar reference state machine (`ThinkingTrace`) with the
request's config, so it counts exactly what the processor counted, with one ambiguity: a wait text the *model*
writes verbatim at a position where an injection was possible (before `tts_min_think`) is counted as injected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vllm_ttsplugin.config import ThinkingConfig
from vllm_ttsplugin.thinking import PHASE_ANSWER, PHASE_BEFORE, ThinkingTrace
from vllm_ttsplugin.vocab import SamplingView, TokenizerVocab, resolve_thinking, vocab_for

End = Literal["natural", "budget", "open", "not_started"]


@dataclass(frozen=True)
class ThinkingReport:
    """What thinking control did to one completion.

    Attributes:
        thinking_tokens: Generated tokens strictly between the start and end delimiters (injected waits included).
        answer_tokens: Tokens after the end delimiter (the forced answer prefix included).
        waits: Wait texts injected.
        end: `"natural"` (the model ended thinking), `"budget"` (`tts_max_think` forced the end), `"open"` (the
            completion stopped while thinking, e.g. `max_tokens`), `"not_started"` (no think block opened).
        think_start: Index in `token_ids` of the first thinking token (`None` if thinking never started).
        think_end: Index in `token_ids` of the end delimiter's first token (`None` if it never ended).
        wait_positions: Index in `token_ids` of each injected wait text's first token.
    """

    thinking_tokens: int
    answer_tokens: int
    waits: int
    end: End
    think_start: int | None
    think_end: int | None
    wait_positions: tuple[int, ...]

    @property
    def forced_end(self) -> bool:
        return self.end == "budget"


def _config_of(config: Any) -> ThinkingConfig:
    if isinstance(config, ThinkingConfig):
        return config
    if isinstance(config, Mapping):
        parsed = ThinkingConfig.from_extra_args(config, known_keys=tuple(config))
    else:  # SamplingParams
        extra = getattr(config, "extra_args", None) or {}
        parsed = ThinkingConfig.from_extra_args(extra, known_keys=tuple(extra))
    return parsed or ThinkingConfig()


def report_tokens(
    token_ids: Sequence[int],
    prompt_token_ids: Sequence[int] | None,
    config: ThinkingConfig | Mapping[str, Any] | Any,
    vocab: TokenizerVocab,
) -> ThinkingReport:
    """The report of one completion given its tokens (see `thinking_report`)."""
    spec = resolve_thinking(_config_of(config), vocab, SamplingView())
    trace = ThinkingTrace.start(spec, prompt_token_ids)
    for token in token_ids:
        trace.observe(int(token))
    if trace.phase == PHASE_BEFORE:
        end: End = "not_started"
    elif trace.phase == PHASE_ANSWER:
        end = "budget" if trace.budget_stop else "natural"
    else:
        end = "open"
    answer = 0
    if trace.end_index is not None:
        answer = max(len(token_ids) - trace.end_index - len(spec.end_ids), 0)
    return ThinkingReport(
        thinking_tokens=trace.think,
        answer_tokens=answer,
        waits=trace.waits,
        end=end,
        think_start=trace.think_begin,
        think_end=trace.end_index,
        wait_positions=tuple(trace.wait_positions),
    )


def thinking_report(output: Any, config: Any, tokenizer: Any) -> list[ThinkingReport]:
    """Per-completion thinking reports of a finished `vllm.RequestOutput`.

    Args:
        output: A `RequestOutput` (its `prompt_token_ids` and each completion's `token_ids` are read).
        config: The request's `ThinkingConfig`, its `SamplingParams`, or its `extra_args` dict.
        tokenizer: The model's tokenizer, or the `vllm.LLM` (its `get_tokenizer()` is used).

    Returns:
        One `ThinkingReport` per completion, in `output.outputs` order.
    """
    if hasattr(tokenizer, "get_tokenizer"):
        tokenizer = tokenizer.get_tokenizer()
    vocab = vocab_for(tokenizer)
    return [report_tokens(list(c.token_ids), output.prompt_token_ids, config, vocab) for c in output.outputs]
