"""DeepConf in a real vLLM engine (V1 runner, tiny model): the processor's confidences, in-engine stops, the API.

The processor never asks vLLM for logprobs; these tests do (``logprobs=20``), to check that the confidences it
computes from the logits it sees equal those computed from vLLM's own returned logprobs, and that every sample is
stopped exactly where the rule (`vllm_ttsplugin.confidence.stop_position`) puts it given those confidences.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from vllm_ttsplugin import TTSLogitsProcessor
from vllm_ttsplugin.confidence import (
    group_confidences,
    lowest_group_confidence,
    percentile_threshold,
    stop_position,
)
from vllm_ttsplugin.deepconf import deep_conf, trace_confidences
from vllm_ttsplugin.ffs import FFS_MARKER_TEXT, find_marker_token

pytestmark = pytest.mark.vllm

PROMPTS = ["What is 2 + 2?", "A train travels 60 miles per hour for 2 hours."]
N = 8
WINDOW = 4
NEVER = -1e9  # a threshold no window falls below: members (marker masked), no stops


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    from vllm import LLM

    from vllm_ttsplugin.testing import small_engine_kwargs

    llm = LLM(
        str(tiny_model_dir),
        seed=0,
        logits_processors=[TTSLogitsProcessor],
        dtype="float32",
        enable_chunked_prefill=False,
        **small_engine_kwargs(max_model_len=512),
    )
    yield llm
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def marker(llm) -> int:
    token = find_marker_token(llm.get_tokenizer())
    assert token is not None
    return token


@pytest.fixture(scope="module")
def stop_token(llm) -> int:
    """A token the tiny model writes often, made a stop token so that samples end naturally at varied lengths
    (a logit bias on EOS would edit the logits the processor sees, and vLLM's raw logprobs would not show it)."""
    from collections import Counter

    from vllm import SamplingParams

    probe = llm.generate(PROMPTS, SamplingParams(n=N, max_tokens=48, seed=1), use_tqdm=False)
    counts = Counter(t for out in probe for c in out.outputs for t in c.token_ids[2:])
    return counts.most_common(1)[0][0]


STOP: list[int] = []


@pytest.fixture(scope="module", autouse=True)
def _stop(stop_token):
    STOP[:] = [stop_token]


def sampling(llm, extra=None, **overrides):
    from vllm import SamplingParams

    kwargs = dict(n=N, max_tokens=48, temperature=1.0, seed=0, stop_token_ids=list(STOP), extra_args=extra)
    kwargs.update(overrides)
    return SamplingParams(**kwargs)


def confidence_keys(threshold: float) -> dict:
    return {"tts_confidence_threshold": threshold, "tts_confidence_window": WINDOW}


@pytest.fixture(scope="module")
def reference(llm):
    """Members that never stop, with vLLM's top-20 logprobs: their tokens and token confidences."""
    outputs = llm.generate(PROMPTS, sampling(llm, confidence_keys(NEVER), logprobs=20), use_tqdm=False)
    return [
        {c.index: (list(c.token_ids), trace_confidences(c.logprobs, 20)) for c in out.outputs}
        for out in outputs
    ]


def test_the_processor_computes_the_confidence_vllms_logprobs_give(llm, monkeypatch):
    """Every confidence the processor computes, position by position, against vLLM's logprobs (one sample at a
    time, in-process engine), at temperature 1 and top-k 20."""
    import vllm_ttsplugin.components as components

    seen: list[float] = []
    original = components.token_confidence

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.extend(out.tolist())
        return out

    monkeypatch.setattr(components, "token_confidence", recording)
    out = llm.generate(PROMPTS[0], sampling(llm, confidence_keys(NEVER), n=1, logprobs=20), use_tqdm=False)[0]
    expected = trace_confidences(out.outputs[0].logprobs, 20)
    assert len(seen) == len(expected) == len(out.outputs[0].token_ids) > 5
    np.testing.assert_allclose(seen, expected, rtol=1e-5, atol=1e-5)


def _separating_thresholds(reference, count: int) -> list[float]:
    """Thresholds at least 1e-3 away from every window mean of every reference sample."""
    means = np.sort(
        np.concatenate([group_confidences(c, WINDOW) for prompt in reference for _, c in prompt.values()])
    )
    gaps = [(means[i] + means[i + 1]) / 2 for i in range(len(means) - 1) if means[i + 1] - means[i] > 2e-3]
    picks = np.linspace(len(gaps) * 0.2, len(gaps) * 0.8, count).astype(int)
    return [float(gaps[i]) for i in picks]


def test_samples_are_stopped_exactly_at_the_step_the_rule_says(llm, reference, marker):
    thresholds = _separating_thresholds(reference, 3)
    stops = 0
    for threshold in thresholds:
        outputs = llm.generate(PROMPTS, sampling(llm, confidence_keys(threshold)), use_tqdm=False)
        for out, ref in zip(outputs, reference, strict=True):
            for c in out.outputs:
                tokens, confidences = ref[c.index]
                at = stop_position(confidences, WINDOW, threshold)
                if at is None:
                    assert list(c.token_ids) == tokens
                    assert c.stop_reason != marker
                else:
                    stops += 1
                    assert list(c.token_ids) == tokens[:at] + [marker], (threshold, c.index, at)
                    assert c.finish_reason == "stop" and c.stop_reason == marker
                    assert FFS_MARKER_TEXT not in c.text
    assert stops >= 3  # the premise: the thresholds do stop samples


def test_requests_without_the_keys_are_untouched_in_a_mixed_batch(llm, reference):
    plain_alone = llm.generate(PROMPTS, sampling(llm), use_tqdm=False)
    threshold = _separating_thresholds(reference, 1)[0]
    mixed = llm.generate(
        PROMPTS * 2,
        [sampling(llm)] * 2 + [sampling(llm, confidence_keys(threshold))] * 2,
        use_tqdm=False,
    )
    for alone, together in zip(plain_alone, mixed[:2], strict=True):
        assert [list(c.token_ids) for c in alone.outputs] == [list(c.token_ids) for c in together.outputs]


def test_garbage_keys_are_rejected_and_the_engine_keeps_serving(llm, reference):
    from vllm.exceptions import VLLMValidationError

    for extra, key in (
        ({"tts_confidence_threshold": "low"}, "tts_confidence_threshold"),
        ({"tts_confidence_threshold": 1.0, "tts_confidence_window": -3}, "tts_confidence_window"),
        ({"tts_confidence_top_k": 5}, "tts_confidence_top_k"),
    ):
        with pytest.raises(VLLMValidationError) as info:
            llm.generate(PROMPTS[0], sampling(llm, extra), use_tqdm=False)
        assert info.value.parameter == key
    again = llm.generate(PROMPTS, sampling(llm, confidence_keys(NEVER)), use_tqdm=False)
    assert [list(c.token_ids) for c in again[0].outputs] == [reference[0][i][0] for i in range(N)]


def first_word(text: str) -> str | None:
    words = text.split()
    return words[0] if words else None


def test_deep_conf_offline_votes_the_top_traces_by_confidence_and_stops_nothing(llm, reference):
    base = sampling(llm, n=1)
    results = deep_conf(
        llm,
        PROMPTS,
        N,
        mode="offline",
        sampling_params=base,
        window=WINDOW,
        keep_percent=50,
        extractor=first_word,
    )
    for result, ref in zip(results, reference, strict=True):
        assert [t.tokens for t in result.traces] == [ref[i][0] for i in range(N)]  # seed + i, like n samples
        assert not any(t.stopped or t.aborted for t in result.traces)
        assert result.tokens == sum(len(ref[i][0]) for i in range(N))
        for t in result.traces:
            assert t.confidence == pytest.approx(lowest_group_confidence(ref[t.index][1], WINDOW))
        scored = [t for t in result.traces if t.votes]
        cut = np.percentile([t.confidence for t in scored], 50)
        assert result.voters == [t.index for t in scored if t.confidence >= cut]
        totals: dict[str, float] = {}
        for i in result.voters:
            answer = result.traces[i].answer
            if answer is not None:
                totals[answer] = totals.get(answer, 0.0) + result.traces[i].confidence
        assert result.votes == pytest.approx(totals)
        assert result.answer == (max(totals, key=totals.get) if totals else None)


def test_deep_conf_online_warms_up_sets_the_threshold_and_stops_the_rest_in_engine(llm, reference, marker):
    base = sampling(llm, n=1)
    warmup = 3
    results = deep_conf(
        llm,
        PROMPTS,
        N,
        sampling_params=base,
        warmup=warmup,
        window=WINDOW,
        keep_percent=50,
        extractor=first_word,
    )
    stopped = 0
    for result, ref in zip(results, reference, strict=True):
        lowest = [lowest_group_confidence(ref[i][1], WINDOW) for i in range(warmup)]
        assert result.threshold == pytest.approx(percentile_threshold(lowest, 50))
        for t in result.traces:
            tokens, confidences = ref[t.index]
            at = None if t.warmup else stop_position(confidences, WINDOW, result.threshold)
            assert t.warmup == (t.index < warmup)
            assert t.stopped == (at is not None)
            assert t.tokens == (tokens if at is None else tokens[:at] + [marker])
            stopped += t.stopped
        assert result.voters == [t.index for t in result.traces if t.votes]
        assert result.tokens == sum(len(t.tokens) for t in result.traces)
    assert stopped >= 1  # the premise


def test_deep_conf_consensus_aborts_the_rest_once_the_weighted_share_reaches_tau(llm, reference):
    base = sampling(llm, n=1)
    # Every trace's "answer" is the same constant: the first natural finish decides the vote (share 1 >= 0.9).
    results = deep_conf(
        llm,
        PROMPTS,
        N,
        sampling_params=base,
        warmup=2,
        window=WINDOW,
        consensus=0.9,
        extractor=lambda text: "same",
    )
    for result, ref in zip(results, reference, strict=True):
        assert result.converged and result.answer == "same"
        if any(t.votes for t in result.traces[:2]):  # converged after the warm-up: nothing else started
            assert [t.tokens for t in result.traces[2:]] == [[]] * (N - 2)
        else:  # converged at the first natural finish of the rest: the others still running were aborted
            assert any(t.aborted for t in result.traces) and sum(t.votes for t in result.traces) >= 1
            for t in result.traces:
                assert t.aborted or t.finish_reason in ("stop", "length")
                if t.aborted:
                    assert t.tokens == ref[t.index][0][: len(t.tokens)] and t.finish_reason == "abort"
        assert result.tokens < sum(len(ref[i][0]) for i in range(N))


def test_deep_conf_checks_its_arguments(llm):
    base = sampling(llm, n=1)
    for kwargs, match in (
        (dict(mode="sideways"), "mode"),
        (dict(warmup=0), "warmup"),
        (dict(keep_percent=0), "keep_percent"),
        (dict(consensus=1.5), "consensus"),
        (dict(window=0), "window"),
        (dict(confidence="median"), "confidence"),
    ):
        with pytest.raises(ValueError, match=match):
            deep_conf(llm, PROMPTS, N, sampling_params=base, **kwargs)
    with pytest.raises(TypeError, match="unknown"):
        deep_conf(llm, PROMPTS, N, sampling_params=base, windw=3)
    with pytest.raises(ValueError, match="temperature"):
        deep_conf(llm, PROMPTS, N, sampling_params=sampling(llm, n=1, temperature=0.6))
