"""DeepConf's confidence stop in TTSLogitsProcessor, on both runners' simulated batches (no engine).

The reference is stated directly: token confidences computed in float64 from the scripted model's logits, and the
stop rule of `vllm_ttsplugin.confidence.stop_position`. Each sample must produce exactly the reference tokens up to
the stop position, then the marker; samples without the keys must get untouched logits rows.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from ffs_helpers import EOS, MARKER, StubTokenizer
from thinking_helpers import (
    Req,
    V1Driver,
    V2Driver,
    model_logits,
    patch_v2_buffers_for_cpu,
    sample,
    use_vocab,
)

from vllm_ttsplugin.confidence import (
    group_confidences,
    lowest_group_confidence,
    parse_confidence_args,
    percentile_threshold,
    stop_position,
    tail_confidence,
    token_confidence,
    weighted_vote,
)
from vllm_ttsplugin.config import TTSParamsError
from vllm_ttsplugin.vocab import TokenizerVocab

VOCAB = 64


def reference_confidence(logits: torch.Tensor, temperature: float, k: int) -> float:
    z = logits.double() / (temperature if temperature >= 1e-5 else 1.0)
    return float(torch.logsumexp(z, 0) - z.topk(k).values.mean())


def reference_run(
    req: Req, window: int | None, k: int, threshold: float | None
) -> tuple[list[int], list[float]]:
    """The sample's tokens without a stop (marker masked for members) and its token confidences."""
    tokens, confidences = [], []
    for position in range(req.max_tokens):
        row = model_logits(req, position, VOCAB)
        confidences.append(reference_confidence(row, float(req.params.temperature), k))
        if window is not None:
            row = row.clone()
            row[MARKER] = -math.inf
        tokens.append(sample(req, position, row))
    return tokens, confidences


def make_request(rng: random.Random, key: str) -> tuple[Req, list[int], int | None]:
    """A request (with confidence keys or plain) and its expected output; the threshold is placed between two
    window means so that the stop lands on one exact position (or below all: never stops)."""
    from vllm import SamplingParams

    from vllm_ttsplugin import TTSLogitsProcessor
    from vllm_ttsplugin.processor import admission_tokenizer

    temperature = rng.choice([0.0, 0.7, 1.0, 1.3])
    max_tokens = rng.randint(4, 18)
    plain = rng.random() < 0.25
    window, k = rng.randint(1, 6), rng.choice([1, 3, 20])
    probe = Req(key, SamplingParams(temperature=temperature), [5, 6, 7], max_tokens=max_tokens)
    tokens, confidences = reference_run(probe, None if plain else window, k, None)
    extra = None
    expected, stop_at = tokens, None
    if not plain:
        means = group_confidences(confidences, window)[: max(0, max_tokens - window)]
        ordered = np.sort(means)
        gaps = [i for i in range(len(ordered) - 1) if ordered[i + 1] - ordered[i] > 1e-4]
        if gaps and rng.random() < 0.8:
            i = rng.choice(gaps)
            threshold = float((ordered[i] + ordered[i + 1]) / 2)
        else:
            threshold = float(np.min(confidences)) - 1.0  # never stops
        stop_at = stop_position(confidences, window, threshold)
        extra = {"tts_confidence_threshold": threshold, "tts_confidence_window": window}
        if k != 20 or rng.random() < 0.5:
            extra["tts_confidence_top_k"] = k
        if stop_at is not None:
            expected = tokens[:stop_at] + [MARKER]
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, extra_args=extra)
    with admission_tokenizer(StubTokenizer(), VOCAB):
        TTSLogitsProcessor.validate_params(params)
    params.update_from_generation_config({}, EOS)
    return Req(key, params, [5, 6, 7], max_tokens=max_tokens), expected, stop_at


def stop_tokens(req: Req) -> list[int]:
    return list(req.params.stop_token_ids or ())  # the marker, stamped at admission (EOS is not scripted)


def run_driver(driver, requests: list[Req], rng: random.Random, capacity: int, v1: bool) -> None:
    waiting = list(requests)
    running: list[Req] = []
    for _ in range(400):
        for req in [r for r in running if r.done or (r.output and r.output[-1] in stop_tokens(r))]:
            running.remove(req)
            driver.remove(req)
        if v1 and running and rng.random() < 0.15:
            # Preempted: it leaves and comes back later with its output so far; the adapter's stash restores its
            # window (the V2 interface shows a resumed request without its state: its window would restart).
            victim = rng.choice(running)
            running.remove(victim)
            driver.remove(victim)
            waiting.insert(0, victim)
        while waiting and len(running) < capacity:
            req = waiting.pop(0)
            driver.add(req)
            running.append(req)
        if v1:
            driver.condense()
            if driver.num_reqs >= 2 and rng.random() < 0.3:
                driver.swap(*rng.sample(range(driver.num_reqs), 2))
        if not running:
            return
        driver.step()
    raise AssertionError("did not finish")


@pytest.mark.parametrize("runner", ["v1", "v2"])
@pytest.mark.parametrize("seed", range(6))
def test_samples_stop_exactly_where_the_rule_says_on_both_runners(runner, seed, monkeypatch):
    rng = random.Random(seed)
    use_vocab(monkeypatch, TokenizerVocab(StubTokenizer(), VOCAB))
    cases = [make_request(rng, f"s{seed}-r{i}") for i in range(rng.randint(4, 10))]
    if runner == "v1":
        driver = V1Driver(8, VOCAB)
    else:
        patch_v2_buffers_for_cpu(monkeypatch)
        driver = V2Driver(8, VOCAB)
    run_driver(driver, [req for req, _, _ in cases], rng, rng.randint(2, 8), runner == "v1")
    for req, expected, stop_at in cases:
        assert req.output == expected, f"{req.key} (stop at {stop_at}, extra {req.params.extra_args})"
    assert any(stop is not None for _, _, stop in cases)  # the premise: stops do happen


def test_rows_without_the_keys_are_untouched(monkeypatch):
    from vllm import SamplingParams

    use_vocab(monkeypatch, TokenizerVocab(StubTokenizer(), VOCAB))
    driver = V1Driver(4, VOCAB)
    plain = Req("plain", SamplingParams(temperature=1.0), [5], max_tokens=3)
    driver.add(plain)
    driver.proc.update_state(driver.builder.get_and_reset(1))
    logits = torch.randn(1, VOCAB)
    assert torch.equal(driver.proc.apply(logits.clone()), logits)


def test_token_confidence_is_minus_the_mean_top_k_log_probability_under_temperature():
    torch.manual_seed(0)
    logits = torch.randn(5, 300) * 3
    temperature = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.7])
    k = torch.tensor([20, 1, 7, 300, 20])
    got = token_confidence(logits, 1 / temperature, k)
    for r in range(5):
        log_p = torch.log_softmax(logits[r].double() / temperature[r], 0)
        assert got[r].item() == pytest.approx(-log_p.topk(int(k[r])).values.mean().item(), rel=1e-5)


def test_group_lowest_tail_percentile_and_vote():
    c = [1.0, 2.0, 3.0, 4.0, 0.5]
    assert np.allclose(group_confidences(c, 2), [1.5, 2.5, 3.5, 2.25])
    assert lowest_group_confidence(c, 2) == 1.5
    assert lowest_group_confidence(c, 10) == pytest.approx(2.1)  # shorter than a window: the mean
    assert tail_confidence(c, 2) == 2.25
    # Windows ending at token t-1 decide token t: the window [1, 2] (mean 1.5) stops token 2.
    assert stop_position(c, 2, 2.0) == 2
    assert stop_position(c, 2, 1.0) is None
    assert stop_position(c, 2, 2.3) == 2
    # The last window (ending at the last token) would stop a token past the end.
    assert stop_position([5.0, 5.0, 1.0, 1.0], 2, 1.5) is None
    assert percentile_threshold([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(1.4)
    assert percentile_threshold([1.0, 2.0, 3.0, 4.0, 5.0], 10) == pytest.approx(4.6)
    answer, totals = weighted_vote(["a", "b", "b", None, "a"], [3.0, 1.0, 1.5, 9.0, 0.1])
    assert answer == "a" and totals == {"a": 3.1, "b": 2.5}
    assert weighted_vote([None], [1.0]) == (None, {})


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"tts_confidence_threshold": "high"}, "tts_confidence_threshold"),
        ({"tts_confidence_threshold": float("nan")}, "tts_confidence_threshold"),
        ({"tts_confidence_threshold": float("inf")}, "tts_confidence_threshold"),
        ({"tts_confidence_threshold": True}, "tts_confidence_threshold"),
        ({"tts_confidence_threshold": 1.0, "tts_confidence_window": 0}, "tts_confidence_window"),
        ({"tts_confidence_threshold": 1.0, "tts_confidence_window": 2.5}, "tts_confidence_window"),
        ({"tts_confidence_threshold": 1.0, "tts_confidence_window": 10**6}, "tts_confidence_window"),
        ({"tts_confidence_threshold": 1.0, "tts_confidence_top_k": 0}, "tts_confidence_top_k"),
        ({"tts_confidence_threshold": 1.0, "tts_confidence_top_k": VOCAB + 1}, "tts_confidence_top_k"),
        ({"tts_confidence_threshold": 1.0, "tts_confidence_top_k": "20"}, "tts_confidence_top_k"),
        ({"tts_confidence_window": 16}, "tts_confidence_window"),
        ({"tts_confidence_top_k": 5}, "tts_confidence_top_k"),
        ({"tts_confidence_threshold": 1.0, "tts_confidence_windw": 16}, "tts_confidence_windw"),
    ],
)
def test_garbage_keys_are_rejected_at_admission_naming_the_key(extra, key):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    from vllm_ttsplugin import TTSLogitsProcessor
    from vllm_ttsplugin.processor import admission_tokenizer

    params = SamplingParams(extra_args=dict(extra))
    with admission_tokenizer(StubTokenizer(), VOCAB), pytest.raises(VLLMValidationError) as info:
        TTSLogitsProcessor.validate_params(params)
    assert info.value.parameter == key and key in str(info.value)
    assert isinstance(info.value.__cause__, TTSParamsError)


def test_admission_stamps_the_marker_as_a_stop_token_and_leaves_other_requests_alone():
    from vllm import SamplingParams

    from vllm_ttsplugin import TTSLogitsProcessor
    from vllm_ttsplugin.ffs import MARKER_KEY
    from vllm_ttsplugin.processor import admission_tokenizer

    shared = {"tts_confidence_threshold": 2.0, MARKER_KEY: 9}  # a client-sent marker is never taken over
    params = SamplingParams(n=4, extra_args=shared)
    plain = SamplingParams(n=4, extra_args={"other_plugin": 1})
    with admission_tokenizer(StubTokenizer(), VOCAB):
        TTSLogitsProcessor.validate_params(params)
        TTSLogitsProcessor.validate_params(plain)
    assert params.extra_args[MARKER_KEY] == MARKER and MARKER in params.stop_token_ids
    assert shared == {"tts_confidence_threshold": 2.0, MARKER_KEY: 9}  # the caller's dict is not modified
    assert plain.extra_args == {"other_plugin": 1} and not plain.stop_token_ids
    assert parse_confidence_args(params.extra_args).window == 2048


def test_the_confidence_stop_composes_with_first_finish(monkeypatch):
    """With First Finish on the same request, its marker mask does not undo the confidence stop (which runs
    after it); tests/test_thinking_core.py checks that it wins over a forced end of thinking."""
    import copy

    from vllm import SamplingParams

    from vllm_ttsplugin import TTSLogitsProcessor
    from vllm_ttsplugin.ffs import first_finish_scope
    from vllm_ttsplugin.processor import admission_tokenizer

    use_vocab(monkeypatch, TokenizerVocab(StubTokenizer(), VOCAB))
    always = {"tts_confidence_threshold": 1e9, "tts_confidence_window": 1}  # every full window is below it
    parent = SamplingParams(n=2, temperature=1.0, max_tokens=8, extra_args={**always, "tts_first_finish": 1})
    with admission_tokenizer(StubTokenizer(), VOCAB), first_finish_scope():
        TTSLogitsProcessor.validate_params(parent)
    parent.update_from_generation_config({}, EOS)
    driver = V1Driver(4, VOCAB)
    samples = []
    for i in range(2):
        child = copy.copy(parent)
        child.n = 1
        samples.append(Req(f"c{i}", child, [5, 6], max_tokens=8))
        driver.add(samples[-1])
    driver.step()  # no full window yet: sampled freely (the marker masked)
    driver.step()  # the window of token 0 is below the threshold: the marker
    for req in samples:
        assert req.output[0] != MARKER and req.output[1] == MARKER
