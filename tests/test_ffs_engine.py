"""First Finish Search in a real vLLM engine (V1 runner, tiny model): in-engine, engine-level API, voting.

Exact tests: each FFS run is compared with the same requests run without FFS (seeded sampling makes every sample
reproducible): FFS must return those samples unchanged up to the step after the k-th natural finish, and the
marker token there for every sample still running (`ffs_helpers.expected_first_finish`).
"""

from __future__ import annotations

import gc

import pytest
from ffs_helpers import expected_first_finish

from vllm_ttsplugin import TTSLogitsProcessor
from vllm_ttsplugin.ffs import (
    FFS_MARKER_TEXT,
    FirstFinishParamsError,
    find_marker_token,
    first_finish_scope,
    first_finish_winners,
)

pytestmark = pytest.mark.vllm

PROMPTS = ["What is 2 + 2?", "A train travels 60 miles per hour for 2 hours.", "Let me think"]
N = 8


@pytest.fixture(scope="module")
def ffs_llm(tiny_model_dir):
    from vllm import LLM

    from vllm_ttsplugin.testing import small_engine_kwargs

    llm = LLM(
        str(tiny_model_dir),
        seed=0,
        logits_processors=[TTSLogitsProcessor],
        dtype="float32",  # bf16 results differ between CPUs (AVX512-BF16 or not); float32 keeps them fixed
        **small_engine_kwargs(max_model_len=512),
    )
    yield llm
    del llm
    gc.collect()


def sampling(llm, **overrides):
    """Temperature 1, fixed seed, EOS biased so that samples end at very different lengths (3 to 60 tokens)."""
    from vllm import SamplingParams

    eos = llm.get_tokenizer().eos_token_id
    kwargs = dict(n=N, max_tokens=64, temperature=1.0, seed=0, logit_bias={eos: 4.0})
    kwargs.update(overrides)
    return SamplingParams(**kwargs)


@pytest.fixture(scope="module")
def marker(ffs_llm) -> int:
    token = find_marker_token(ffs_llm.get_tokenizer())
    assert token is not None
    return token


@pytest.fixture(scope="module")
def reference(ffs_llm):
    """The same requests without FFS."""
    return ffs_llm.generate(PROMPTS, sampling(ffs_llm), use_tqdm=False)


def assert_first_finish(output, ref, k: int, marker: int) -> None:
    expected, stopped = expected_first_finish(ref, k, marker)
    assert {c.index: list(c.token_ids) for c in output.outputs} == expected
    assert {c.index for c in output.outputs if c.stop_reason == marker} == stopped
    for c in output.outputs:
        assert c.finish_reason == ("stop" if c.index in stopped else ref.outputs[c.index].finish_reason)
        assert FFS_MARKER_TEXT not in c.text


def test_without_ffs_lengths_vary(reference):
    for ref in reference:
        lengths = [len(c.token_ids) for c in ref.outputs]
        assert max(lengths) - min(lengths) >= 30, lengths
        assert sum(c.finish_reason == "stop" for c in ref.outputs) >= 6  # mostly natural finishes


def test_first_finish_stops_the_siblings_one_step_after_the_first_finisher(ffs_llm, reference, marker):
    outputs = ffs_llm.generate(PROMPTS, sampling(ffs_llm, extra_args={"tts_first_finish": 1}), use_tqdm=False)
    for output, ref in zip(outputs, reference, strict=True):  # grouped per prompt: each prompt its own race
        assert_first_finish(output, ref, 1, marker)
        shortest = min(len(c.token_ids) for c in ref.outputs if c.finish_reason == "stop")
        assert all(len(c.token_ids) <= shortest + 1 for c in output.outputs)
        winners = first_finish_winners(output, marker=ffs_llm)
        assert len(winners) == 1 and len(winners[0].token_ids) == shortest
        assert sum(c.stop_reason != marker for c in output.outputs) == 1  # exactly one unmarked


def test_first_finish_k3_yields_three_natural_finishers(ffs_llm, reference, marker):
    outputs = ffs_llm.generate(PROMPTS, sampling(ffs_llm, extra_args={"tts_first_finish": 3}), use_tqdm=False)
    for output, ref in zip(outputs, reference, strict=True):
        assert_first_finish(output, ref, 3, marker)
        natural = first_finish_winners(output, marker=marker)
        assert len(natural) == 3
        assert [len(c.token_ids) for c in natural] == sorted(
            len(c.token_ids) for c in ref.outputs if c.finish_reason == "stop"
        )[:3]


def test_requests_without_ffs_keys_are_untouched_in_a_mixed_batch(ffs_llm, reference, marker):
    params = [sampling(ffs_llm), sampling(ffs_llm, extra_args={"tts_first_finish": 1}), sampling(ffs_llm)]
    outputs = ffs_llm.generate(PROMPTS, params, use_tqdm=False)
    for i in (0, 2):
        assert [list(c.token_ids) for c in outputs[i].outputs] == [
            list(c.token_ids) for c in reference[i].outputs
        ]
    assert_first_finish(outputs[1], reference[1], 1, marker)


def test_length_cuts_do_not_count_and_groups_tie_separate_requests(ffs_llm, reference, marker):
    # Request A (prompt 0) is cut by max_tokens=4 before any of its samples can finish; request B (prompt 1) is
    # tied to it by a tts_group. If length cuts counted, B would be stopped at step 5, long before its first
    # natural finish (7 tokens).
    group = {"tts_first_finish": 1, "tts_group": "length-cut-race"}
    a = sampling(ffs_llm, n=2, max_tokens=4, extra_args=group)
    b = sampling(ffs_llm, extra_args=group)
    with first_finish_scope():
        out_a, out_b = ffs_llm.generate(PROMPTS[:2], [a, b], use_tqdm=False)
    assert [c.finish_reason for c in out_a.outputs] == ["length", "length"]
    assert_first_finish(out_b, reference[1], 1, marker)

    # Two requests of 4 samples (seeds 0 and 4) tied by a group race exactly like one request of 8 (seeds 0..7).
    tied = {"tts_first_finish": 1, "tts_group": "split-request"}
    with first_finish_scope():
        halves = ffs_llm.generate(
            [PROMPTS[2], PROMPTS[2]],
            [
                sampling(ffs_llm, n=4, seed=0, extra_args=tied),
                sampling(ffs_llm, n=4, seed=4, extra_args=tied),
            ],
            use_tqdm=False,
        )
    expected, stopped = expected_first_finish(reference[2], 1, marker)
    got = [list(c.token_ids) for half in halves for c in half.outputs]
    assert got == [expected[i] for i in range(N)]
    marked = [c.stop_reason == marker for half in halves for c in half.outputs]
    assert marked == [i in stopped for i in range(N)]


def test_stop_strings_count_as_natural_finishes(ffs_llm, marker):
    # "number" ends sample 7 of prompt 1 at its first token: the siblings must stop at step 2.
    ref = ffs_llm.generate(PROMPTS, sampling(ffs_llm, stop=["number"]), use_tqdm=False)
    assert ref[1].outputs[7].stop_reason == "number"
    outputs = ffs_llm.generate(
        PROMPTS, sampling(ffs_llm, stop=["number"], extra_args={"tts_first_finish": 1}), use_tqdm=False
    )
    for output, r in zip(outputs, ref, strict=True):
        assert_first_finish(output, r, 1, marker)


@pytest.mark.parametrize("k", [1, 3])
def test_engine_level_api_returns_the_in_engine_winners_and_accounts_tokens(ffs_llm, reference, k):
    from vllm_ttsplugin import first_finish

    results = first_finish(ffs_llm, PROMPTS, n=N, k=k, sampling_params=sampling(ffs_llm, n=1))
    assert not ffs_llm.llm_engine.has_unfinished_requests()
    in_engine = ffs_llm.generate(
        PROMPTS, sampling(ffs_llm, extra_args={"tts_first_finish": k}), use_tqdm=False
    )
    for result, output, ref in zip(results, in_engine, reference, strict=True):
        winners = first_finish_winners(output, k, marker=ffs_llm)
        assert [c.index for c in result.winners] == [c.index for c in winners]
        assert [list(c.token_ids) for c in result.winners] == [list(c.token_ids) for c in winners]
        t = sorted(len(c.token_ids) for c in ref.outputs if c.finish_reason == "stop")[k - 1]
        for c in result.completions:  # losers are aborted between steps: one token less than in-engine
            assert list(c.token_ids) == list(ref.outputs[c.index].token_ids[:t])
            assert c.finish_reason == ("abort" if len(ref.outputs[c.index].token_ids) > t else "stop")
            assert c.text == ref.outputs[c.index].text[: len(c.text)]
        assert result.num_tokens == sum(len(c.token_ids) for c in result.completions)
        assert result.num_tokens == sum(min(len(c.token_ids), t) for c in ref.outputs)
        assert result.num_winner_tokens == sum(len(c.token_ids) for c in winners)
        assert result.num_steps == t
        assert result.prompt == ref.prompt


def test_engine_level_api_checks_its_arguments(ffs_llm):
    from vllm_ttsplugin import first_finish

    for kwargs, message in [
        (dict(n=0), "`n`"),
        (dict(n=4, k=5), "exceeds"),
        (dict(k=0), "`k`"),
        (dict(n=2.5), "`n`"),
        (dict(sampling_params=sampling(ffs_llm, n=4)), "sampling_params.n"),
        (dict(sampling_params=sampling(ffs_llm, n=1, temperature=0.0)), "greedy"),
    ]:
        with pytest.raises(ValueError, match=message):
            first_finish(ffs_llm, PROMPTS, **kwargs)
    with pytest.raises(ValueError, match="prompts"):
        first_finish(ffs_llm, [], n=2)
    assert not ffs_llm.llm_engine.has_unfinished_requests()


def test_ffs_k_at_n_vote_and_the_majority_baseline(ffs_llm, reference):
    from vllm_ttsplugin import first_finish_vote, majority_vote, majority_vote_all

    def first_word(text: str) -> str | None:  # a pluggable extractor
        words = text.split()
        return words[0][:2] if words else None

    params = sampling(ffs_llm, n=1)
    votes = first_finish_vote(ffs_llm, PROMPTS, n=N, k=3, sampling_params=params, extractor=first_word)
    baseline = majority_vote_all(ffs_llm, PROMPTS, n=N, sampling_params=params, extractor=first_word)
    for vote, base, ref in zip(votes, baseline, reference, strict=True):
        search = vote.search
        natural = sorted((len(c.token_ids), c.index) for c in ref.outputs if c.finish_reason == "stop")
        assert [c.index for c in search.winners] == [i for _, i in natural[:3]]
        answers = [first_word(c.text) for c in search.winners]
        assert vote.answers == answers and vote.answer == majority_vote(answers)
        assert [c.index for c in vote.voters] == search.finish_order[:3]
        all_answers = [first_word(c.text) for c in ref.outputs]
        assert base.answers == all_answers and base.answer == majority_vote(all_answers)
        assert base.num_tokens == sum(len(c.token_ids) for c in ref.outputs)
        assert vote.num_tokens == search.num_tokens < base.num_tokens
    assert not ffs_llm.llm_engine.has_unfinished_requests()


def test_bad_arguments_are_rejected_at_admission_and_the_engine_keeps_serving(ffs_llm, reference, marker):
    from vllm.exceptions import VLLMValidationError

    cases = [
        (dict(extra_args={"tts_first_finish": 0}), "tts_first_finish"),
        (dict(extra_args={"tts_first_finish": 9}), "exceeds"),
        (dict(n=1, extra_args={"tts_first_finish": 1}), "n > 1"),
        (dict(extra_args={"tts_first_finish": 1, "tts_group": 7}), "tts_group"),
        (dict(extra_args={"tts_first_finish": "one"}), "tts_first_finish"),
        (dict(extra_args={"tts_first_finish": float("nan")}), "NaN"),
    ]
    for overrides, message in cases:
        with pytest.raises(VLLMValidationError, match=message) as error:
            ffs_llm.generate(PROMPTS, sampling(ffs_llm, **overrides), use_tqdm=False)
        assert error.value.parameter in ("tts_first_finish", "tts_group")
        assert isinstance(error.value.__cause__, FirstFinishParamsError)
        assert not ffs_llm.llm_engine.has_unfinished_requests()
    output = ffs_llm.generate(
        PROMPTS[:1], sampling(ffs_llm, extra_args={"tts_first_finish": 1}), use_tqdm=False
    )
    assert_first_finish(output[0], reference[0], 1, marker)


def test_first_finish_composes_with_budget_forcing_and_wins_over_forced_text(ffs_llm, marker):
    """One request with both controls: thinking is capped (end delimiter + answer prefix forced at exactly
    `tts_max_think`), and FFS stops the siblings one step after the first natural finish, even a sibling that is
    due to emit its forced end delimiter / answer prefix then (FFS has the highest priority)."""
    tok = ffs_llm.get_tokenizer()
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS
    ]
    budget = 2
    think = {
        "tts_max_think": budget,
        "tts_answer_prefix": "\nFinal Answer: the answer is the sum of the numbers",
        # EOS inside thinking ends the sample (a natural finish while the siblings are due forced text); by
        # default it would be an end attempt and become the end delimiter.
        "tts_eos_in_thinking": "stop",
    }
    forced = tok.encode("</think>" + think["tts_answer_prefix"], add_special_tokens=False)
    references = ffs_llm.generate(prompts, sampling(ffs_llm, extra_args=dict(think)), use_tqdm=False)
    outputs = ffs_llm.generate(
        prompts, sampling(ffs_llm, extra_args={**think, "tts_first_finish": 1}), use_tqdm=False
    )
    stopped_instead_of_forced_text = 0
    for output, ref in zip(outputs, references, strict=True):
        for (
            c
        ) in ref.outputs:  # budget forcing alone: `budget` thinking tokens, then exactly the forced tokens
            ids = list(c.token_ids)
            if len(ids) > budget:
                assert ids[budget : budget + len(forced)] == forced[: len(ids) - budget]
        assert_first_finish(output, ref, 1, marker)  # FFS on top changes nothing but the stop
        _, stopped = expected_first_finish(ref, 1, marker)
        for c in output.outputs:
            if c.index in stopped and budget < len(c.token_ids) <= budget + len(forced):
                stopped_instead_of_forced_text += (
                    1  # its marker replaced a token the budget would have forced
                )
    # Seeds fixed: in the second prompt a sample ends (EOS) after 2 tokens, so the other 7 are stopped exactly
    # where their end delimiter was due.
    assert stopped_instead_of_forced_text == 7


# ----------------------------------------------------------------------------------------------------------------
# min_tokens, length cuts and stop strings, isolation of races
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_tokens", [0, 4, 30])
def test_min_tokens_keeps_winners_exact_and_marks_samples_stopped_at_their_first_token(
    ffs_llm, marker, min_tokens
):
    """Samples that join a race already decided (admitted late: KV pressure, max_num_seqs, a group member sent
    later) are stopped at their first token, where vLLM does not look for stop strings yet (it looks only after
    min_tokens tokens): the marker is a stop token, so the engine ends them on it at any min_tokens."""
    params = dict(min_tokens=min_tokens, max_tokens=48)
    ref = ffs_llm.generate(PROMPTS[:1], sampling(ffs_llm, **params), use_tqdm=False)[0]
    group = {"tts_first_finish": 1, "tts_group": "decided-early"}
    with first_finish_scope():
        first = ffs_llm.generate(PROMPTS[:1], sampling(ffs_llm, **params, extra_args=group), use_tqdm=False)[
            0
        ]
        late = ffs_llm.generate(PROMPTS[1:2], sampling(ffs_llm, **params, extra_args=group), use_tqdm=False)[
            0
        ]
    assert_first_finish(first, ref, 1, marker)  # in lockstep: exactly the reference up to the decision
    (winner,) = first_finish_winners(first, marker=ffs_llm)
    assert (
        len(winner.token_ids) > min_tokens and winner.finish_reason == "stop" and winner.stop_reason is None
    )
    for c in late.outputs:
        assert list(c.token_ids) == [marker] and c.text == ""
        assert c.finish_reason == "stop" and c.stop_reason == marker
    assert first_finish_winners(late, marker=ffs_llm) == []


def test_a_length_cut_never_wins_even_when_its_text_holds_a_stop_string(ffs_llm):
    """The issue's case: min_tokens = max_tokens = 20 and stop=["e"]. vLLM checks stop strings only in the text
    after the first min_tokens tokens, so A's samples end by length although their text contains "e"; they must
    not stop B (whose samples, without the EOS bias, run to their own length cut)."""
    group = {"tts_first_finish": 1, "tts_group": "length-cut"}
    a = sampling(ffs_llm, n=2, min_tokens=20, max_tokens=20, stop=["e"], extra_args=group)
    b = dict(n=4, max_tokens=40, logit_bias=None)
    ref_b = ffs_llm.generate(PROMPTS[1:2], sampling(ffs_llm, **b), use_tqdm=False)[0]
    assert all(c.finish_reason == "length" for c in ref_b.outputs)
    with first_finish_scope():
        out_a, out_b = ffs_llm.generate(
            PROMPTS[:2], [a, sampling(ffs_llm, **b, extra_args=group)], use_tqdm=False
        )
    assert [c.finish_reason for c in out_a.outputs] == ["length", "length"]
    assert any("e" in c.text for c in out_a.outputs)
    assert [list(c.token_ids) for c in out_b.outputs] == [list(c.token_ids) for c in ref_b.outputs]
    assert first_finish_winners(out_a, marker=ffs_llm) == first_finish_winners(out_b, marker=ffs_llm) == []

    # The same stop string after min_tokens is a natural finish: it decides the race.
    a = sampling(ffs_llm, n=2, min_tokens=5, max_tokens=20, stop=["e"], extra_args=group)
    with first_finish_scope():
        out_a, out_b = ffs_llm.generate(
            PROMPTS[:2], [a, sampling(ffs_llm, **b, extra_args=group)], use_tqdm=False
        )
    (first, *_) = first_finish_winners(out_a, marker=ffs_llm)
    assert first.stop_reason == "e" and len(first.token_ids) > 5
    t = len(first.token_ids)
    for c in out_b.outputs:  # stopped one step after the decision
        assert list(c.token_ids) == list(ref_b.outputs[c.index].token_ids[:t]) + [
            find_marker_token(ffs_llm.get_tokenizer())
        ]


def test_a_group_name_ties_requests_of_one_admission_scope_only(ffs_llm, reference, marker):
    """Two clients use the same `tts_group` name at the same time in one engine: two races, each exactly its own
    reference; a request that reuses the name later races alone; a group outside any scope is refused."""
    from vllm.sampling_params import RequestOutputKind

    group = {"tts_first_finish": 1, "tts_group": "shared-name"}
    engine = ffs_llm.llm_engine
    for i in range(2):
        with first_finish_scope():  # one client's admission
            params = sampling(ffs_llm, extra_args=group, output_kind=RequestOutputKind.FINAL_ONLY)
            engine.add_request(f"client-{i}", PROMPTS[i], params)
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = out
    for i in range(2):
        assert_first_finish(outputs[f"client-{i}"], reference[i], 1, marker)
    with first_finish_scope():
        later = ffs_llm.generate(PROMPTS[2:], sampling(ffs_llm, extra_args=group), use_tqdm=False)[0]
    assert_first_finish(later, reference[2], 1, marker)
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="admission scope") as error:
        ffs_llm.generate(PROMPTS[2:], sampling(ffs_llm, extra_args=group), use_tqdm=False)
    assert error.value.parameter == "tts_group" and not engine.has_unfinished_requests()
