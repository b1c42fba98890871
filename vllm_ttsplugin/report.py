"""Read a finished completion back into a thinking report: thinking tokens, answer tokens, waits, how it ended.

The report replays the completion's tokens through the scalar reference state machine (`ThinkingTrace`) with the
request's config, so it counts exactly what the processor counted, with two ambiguities the tokens cannot
resolve: a wait text the *model* writes verbatim at a position where an injection was possible (before
`tts_min_think`) is counted as injected, and with a text end delimiter (first token ordinary text) an end forced
after an EOS attempt reads as the model's own end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vllm_ttsplugin.config import ThinkingConfig
from vllm_ttsplugin.thinking import PHASE_ANSWER, PHASE_BEFORE, PHASE_THINKING, SEQ_NONE
from vllm_ttsplugin.thinking_reference import ThinkingTrace
from vllm_ttsplugin.vocab import (
    SamplingView,
    TokenizerVocab,
    reasoning_delimiters,
    resolve_thinking,
    vocab_for,
)

End = Literal["natural", "budget", "open", "not_started"]


@dataclass(frozen=True)
class ThinkingReport:
    """What thinking control did to one completion.

    Attributes:
        thinking_tokens: The model's own tokens strictly between the start and end delimiters (what the budgets
            count; injected wait tokens are not thinking tokens).
        answer_tokens: Tokens after the end delimiter (the forced answer prefix included).
        waits: Wait texts injected.
        end: `"natural"` (the model ended thinking, by the end delimiter or an EOS attempt), `"budget"`
            (`tts_max_think` forced the end), `"open"` (the completion stopped while thinking, e.g.
            `max_tokens`), `"not_started"` (no think block opened).
        think_start: Index in `token_ids` of the first thinking token (`None` if thinking never started).
        think_end: Index in `token_ids` of the end delimiter's first token (`None` if it never ended).
        wait_positions: Index in `token_ids` of each injected wait text's first token.
        forced_positions: Index in `token_ids` of every token the processor forced (wait texts, a forced end
            delimiter and its tail, the answer prefix). Their logprobs are the model's raw ones for a token it did
            not choose: leave these positions out of logprob sums and `cumulative_logprob`
            (`model_logprob_sum`).
    """

    thinking_tokens: int
    answer_tokens: int
    waits: int
    end: End
    think_start: int | None
    think_end: int | None
    wait_positions: tuple[int, ...]
    forced_positions: tuple[int, ...] = ()

    @property
    def forced_end(self) -> bool:
        return self.end == "budget"

    def model_logprob_sum(self, completion: Any) -> float:
        """The sum of a completion's sampled-token logprobs over the tokens the model chose (forced ones left
        out): `cumulative_logprob` without the forced positions. Needs `SamplingParams(logprobs=0)` or more."""
        logprobs = getattr(completion, "logprobs", None)
        token_ids = list(getattr(completion, "token_ids", ()))
        if logprobs is None:
            raise ValueError("the completion has no logprobs; request them with SamplingParams(logprobs=0)")
        forced = set(self.forced_positions)
        return float(
            sum(
                entry[token].logprob
                for i, (token, entry) in enumerate(zip(token_ids, logprobs, strict=False))
                if i not in forced
            )
        )


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
    stop_token_ids: tuple[int, ...] = (),
) -> ThinkingReport:
    """The report of one completion given its tokens (see `thinking_report`)."""
    spec = resolve_thinking(_config_of(config), vocab, SamplingView(), stop_token_ids)
    trace = ThinkingTrace.start(spec, prompt_token_ids)
    ids = [int(t) for t in token_ids]
    stops = set(vocab.eos_ids) | set(stop_token_ids)
    if ids and ids[-1] in stops:
        body, last = ids[:-1], ids[-1]
    else:
        body, last = ids, None
    for token in body:
        trace.observe(token)
    if last is not None and not (trace.phase == PHASE_THINKING and trace.seq == SEQ_NONE):
        trace.observe(last)  # a stop token ending the completion inside thinking is not a thinking token
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
        forced_positions=tuple(trace.forced_positions),
    )


def thinking_report(output: Any, config: Any, tokenizer: Any) -> list[ThinkingReport]:
    """Per-completion thinking reports of a finished `vllm.RequestOutput`.

    Args:
        output: A `RequestOutput` (its `prompt_token_ids` and each completion's `token_ids` are read).
        config: The request's `ThinkingConfig`, its `SamplingParams`, or its `extra_args` dict.
        tokenizer: The model's tokenizer, or the `vllm.LLM` (its `get_tokenizer()` is used, and its engine's
            reasoning configuration supplies the default delimiters, as in the engine).

    Returns:
        One `ThinkingReport` per completion, in `output.outputs` order.
    """
    reasoning = None
    if hasattr(tokenizer, "get_tokenizer"):
        engine = getattr(tokenizer, "llm_engine", None)
        reasoning = reasoning_delimiters(getattr(engine, "vllm_config", None))
        tokenizer = tokenizer.get_tokenizer()
    vocab = vocab_for(tokenizer, None, reasoning)
    return [report_tokens(list(c.token_ids), output.prompt_token_ids, config, vocab) for c in output.outputs]
