"""s1's re-prompt loop: budget forcing *outside* the engine, the baseline `TTSLogitsProcessor` replaces.

s1 (Muennighoff et al. 2025) ships budget forcing as a loop around `LLM.generate`: generate with the end-of-think
token as a stop token, strip it, append "Wait" to the prompt, generate again (every round re-submits the whole
prefix; prefix caching makes that cheaper, not free), and finally generate the answer. This module implements that
loop in two forms, for the tests and `benchmarks/thinking_vs_reprompt.py`:

- `mode="tokens"`: the loop on token ids with exactly our semantics (`tts_min_think`, `tts_max_think`,
  `tts_max_waits`, wait text, answer prefix): a round stops at the end delimiter's first token or at EOS (a stop
  token of the request); below the minimum the stop token is dropped and the wait text appended, and the next
  round runs with `min_tokens=1`; thinking tokens are the model's own (wait tokens do not count). Greedy outputs
  must equal the in-engine processor's token for token, and sampled outputs must have the same distribution.
- `mode="text"`: the loop as s1's README ships it: the prompt is a string, each round appends the generated text
  and the wait text and re-tokenises, continuation rounds use `min_tokens=1`.

s1's README loop also subtracts each round's discarded stop token from the remaining budget (it counts
`len(token_ids)`, stop token included); here, as in the processor, only tokens that stay in the output count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vllm_ttsplugin.config import ThinkingConfig
from vllm_ttsplugin.thinking import NO_LIMIT
from vllm_ttsplugin.vocab import SamplingView, resolve_thinking, vocab_for


@dataclass
class RepromptResult:
    """One prompt's completion produced by the loop."""

    token_ids: list[int] = field(default_factory=list)  # completion tokens (mode="tokens")
    text: str = ""  # completion text (mode="text")
    waits: int = 0
    rounds: int = 0  # generate() calls that included this prompt
    thinking_tokens: int = 0
    budget_stop: bool = False


def _round_params(base: Any, round_index: int, **overrides: Any):
    """A fresh SamplingParams for one round (built anew so derived fields such as stop ids are recomputed)."""
    from vllm import SamplingParams

    kwargs = dict(
        temperature=base.temperature,
        top_p=base.top_p,
        top_k=base.top_k,
        min_p=base.min_p,
        presence_penalty=base.presence_penalty,
        frequency_penalty=base.frequency_penalty,
        repetition_penalty=base.repetition_penalty,
        seed=None if base.seed is None else base.seed * 1_000_003 + round_index,
        logit_bias=dict(base.logit_bias) if base.logit_bias else None,
        skip_special_tokens=base.skip_special_tokens,
        ignore_eos=base.ignore_eos,
        stop_token_ids=list(base.stop_token_ids or ()),
    )
    kwargs.update(overrides)
    return SamplingParams(**kwargs)


def reprompt_budget_forcing(
    llm: Any,
    prompts: list[list[int]] | list[str],
    config: ThinkingConfig,
    params: Any | list[Any],
    *,
    mode: Literal["tokens", "text"] = "tokens",
) -> list[RepromptResult]:
    """Budget forcing by re-prompting, batched over prompts (each round is one `llm.generate` call).

    Args:
        llm: A `vllm.LLM` (enable prefix caching to run it as s1 does).
        prompts: Token-id lists (`mode="tokens"`) or strings (`mode="text"`) that end inside an open think block.
        config: The thinking config to enforce (budgets, wait text, answer prefix, delimiters).
        params: The request's `SamplingParams` (`max_tokens` caps the whole completion), or one per prompt
            (e.g. distinct seeds). A seeded request uses seed `seed * 1_000_003 + round` in each round.
        mode: `"tokens"` (exact semantics) or `"text"` (as s1 ships it).

    Returns:
        One `RepromptResult` per prompt.
    """
    from vllm import TokensPrompt

    tokenizer = llm.get_tokenizer()
    per_prompt = list(params) if isinstance(params, list | tuple) else [params] * len(prompts)
    spec = resolve_thinking(config, vocab_for(tokenizer), SamplingView.from_params(per_prompt[0]))
    if not spec.end_is_attempt:
        raise ValueError(
            "the re-prompt loop stops rounds at the end delimiter's first token, which must be one"
        )
    end0 = spec.end_ids[0]
    max_think = spec.max_think if spec.max_think is not None else NO_LIMIT
    max_waits = spec.max_waits if spec.max_waits is not None else NO_LIMIT
    results = [RepromptResult() for _ in prompts]
    texts = [str(p) for p in prompts] if mode == "text" else None
    thinking = list(range(len(prompts)))
    after_wait: set[int] = set()  # continue with min_tokens=1
    answer: list[int] = []
    round_index = 0

    def _append(i: int, tail: list[int], text: str | None = None) -> None:
        if mode == "tokens":
            results[i].token_ids += tail
        else:
            suffix = text if text is not None else tokenizer.decode(tail, skip_special_tokens=False)
            texts[i] += suffix
            results[i].text += suffix

    def used(i: int) -> int:
        return len(results[i].token_ids) if mode == "tokens" else results[i].thinking_tokens

    while thinking:
        requests, rparams, active = [], [], []
        for i in thinking:
            r = results[i]
            budget = min(max_think - r.thinking_tokens, per_prompt[i].max_tokens - used(i))
            if budget <= 0:
                continue  # max_tokens ran out while thinking
            extra = {"skip_special_tokens": False} if mode == "text" else {}
            requests.append(
                texts[i] if mode == "text" else TokensPrompt(prompt_token_ids=list(prompts[i]) + r.token_ids)
            )
            rparams.append(
                _round_params(
                    per_prompt[i],
                    round_index,
                    max_tokens=budget,
                    stop_token_ids=[end0, *(per_prompt[i].stop_token_ids or ())],
                    min_tokens=1 if i in after_wait else 0,
                    **extra,
                )
            )
            active.append(i)
        if not active:
            break
        outputs = llm.generate(requests, rparams, use_tqdm=False)
        round_index += 1
        still, after_wait = [], set()
        for i, out in zip(active, outputs, strict=True):
            r = results[i]
            r.rounds += 1
            completion = out.outputs[0]
            body = list(completion.token_ids)
            # A stop: the end token or EOS / a stop token of the request (vLLM keeps it in token_ids).
            ended = completion.finish_reason == "stop"
            if ended and body:
                body = body[:-1]
            r.thinking_tokens += len(body)
            if mode == "tokens":
                r.token_ids += body
            else:
                texts[i] += completion.text
                r.text += completion.text
            if ended and r.thinking_tokens < spec.min_think and r.waits < max_waits:
                r.waits += 1
                _append(i, list(spec.wait_ids), config.tts_wait)
                after_wait.add(i)
                still.append(i)
                continue
            if ended:
                tail = list(spec.end_ids)
            elif r.thinking_tokens >= max_think:
                r.budget_stop = True
                tail = list(spec.end_ids) + list(spec.answer_prefix_ids)
            else:
                continue  # max_tokens ran out while thinking
            _append(i, tail)
            answer.append(i)
        thinking = still

    # The answer: one more round without the stop token.
    requests, rparams, order = [], [], []
    for i in answer:
        r = results[i]
        remaining = per_prompt[i].max_tokens - (len(r.token_ids) if mode == "tokens" else r.thinking_tokens)
        if remaining <= 0:
            continue
        order.append(i)
        if mode == "tokens":
            requests.append(TokensPrompt(prompt_token_ids=list(prompts[i]) + r.token_ids))
            rparams.append(_round_params(per_prompt[i], round_index, max_tokens=remaining))
        else:
            requests.append(texts[i])
            rparams.append(
                _round_params(per_prompt[i], round_index, max_tokens=remaining, skip_special_tokens=False)
            )
    if requests:
        for i, out in zip(order, llm.generate(requests, rparams, use_tqdm=False), strict=True):
            results[i].rounds += 1
            if mode == "tokens":
                results[i].token_ids += list(out.outputs[0].token_ids)
            else:
                results[i].text += out.outputs[0].text
    for r, p in zip(
        results, per_prompt, strict=True
    ):  # a forced tail may run past max_tokens: cut like the engine
        del r.token_ids[p.max_tokens :]
    return results
