"""The thinking-control core and its vLLM adapters without an engine: exact tokens against a reference.

Every scenario runs three ways on the same scripted logits: vLLM's V1 interface (persistent batch through vLLM's
own BatchUpdateBuilder), vLLM's V2 interface (vLLM's real RequestState / loader / LogitsContext on CPU tensors),
and a pure-Python reference (ThinkingTrace + the decision rule of the spec). All three must agree token for token.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats
from thinking_helpers import (
    Req,
    V1Driver,
    V2Driver,
    model_logits,
    patch_v2_buffers_for_cpu,
    reference_decode,
    spec_of,
    use_vocab,
)
from transformers import AutoTokenizer
from vllm import SamplingParams

from vllm_ttsplugin.config import ThinkingConfig, ThinkingConfigError
from vllm_ttsplugin.prompts import scan_prompt
from vllm_ttsplugin.report import report_tokens
from vllm_ttsplugin.sampling import attempt_probability, counter_uniform, end_token_probability
from vllm_ttsplugin.thinking import PHASE_ANSWER, PHASE_THINKING, ThinkingControl
from vllm_ttsplugin.vocab import SamplingView, ThinkingSpec, TokenizerVocab, resolve_thinking

# -- counter-based uniforms -------------------------------------------------------------------------------------


def test_counter_uniform_is_deterministic_uniform_and_decorrelated():
    seeds = torch.arange(200, dtype=torch.long).repeat_interleave(100)
    counters = torch.arange(100, dtype=torch.long).repeat(200)
    u = counter_uniform(seeds, counters)
    assert torch.equal(u, counter_uniform(seeds, counters))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    # Kolmogorov-Smirnov against U(0, 1) on 20,000 draws, alpha = 0.001.
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    # Neighbouring counters and neighbouring seeds are uncorrelated (|r| < 0.05 for 20,000 pairs).
    grid = u.view(200, 100)
    assert abs(np.corrcoef(grid[:, :-1].flatten(), grid[:, 1:].flatten())[0, 1]) < 0.05
    assert abs(np.corrcoef(grid[:-1].flatten(), grid[1:].flatten())[0, 1]) < 0.05
    # Seeds beyond 32 bits and negative int64 seeds are distinct streams.
    big = counter_uniform(torch.tensor([2**40, 2**40 + 1, -5]), torch.tensor([3, 3, 3]))
    assert len(set(big.tolist())) == 3


# -- p(end) as vLLM's sampler would draw it ---------------------------------------------------------------------


def _vllm_reference_probs(logits, temperature, top_k, top_p, min_p):
    """vLLM's own ops in the V1 sampler order: temperature, min-p, top-k/top-p (PyTorch reference)."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    x = logits / temperature.unsqueeze(1)
    if min_p is not None:
        probs = x.softmax(-1)
        x = x.masked_fill(probs < probs.amax(-1, keepdim=True) * min_p.unsqueeze(1), -math.inf)
    x = apply_top_k_top_p_pytorch(x.clone(), top_k, top_p)
    return x.softmax(-1)


@pytest.mark.parametrize(
    "use_k,use_p,use_min_p",
    [(False, False, False), (True, False, False), (False, True, True), (True, True, True)],
)
def test_end_probability_matches_vllm_sampler_ops(use_k, use_p, use_min_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    end = torch.tensor([0, 5, 7, 49, 3, 3])
    logits[torch.arange(6), end] += torch.tensor([4.0, -2.0, 0.0, 1.0, 8.0, -9.0])
    temperature = torch.tensor([1.0, 0.5, 2.0, 0.7, 1.3, 1.0])
    top_k = torch.tensor([5, 50, 3, 10, 1, 0]).clamp(min=1) if use_k else None
    top_p = torch.tensor([0.9, 1.0, 0.5, 0.95, 0.2, 0.99]) if use_p else None
    min_p = torch.tensor([0.05, 0.0, 0.1, 0.2, 0.0, 0.01]) if use_min_p else None
    ours = end_token_probability(logits, end, temperature, top_k, top_p, min_p)
    ref = _vllm_reference_probs(logits, temperature, top_k, top_p, min_p).gather(1, end[:, None]).squeeze(1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


# -- prompts -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt,opens,tail",
    [
        ([1, 2, 3, 8], False, [-1, -1, 8]),  # no delimiter
        ([1, 9, 8, 3, 4], True, [-1, -1, 4]),  # start (9, 8) open
        ([9, 8, 3, 7, 4], False, [-1, -1, 4]),  # start then end (7)
        ([9, 8, 3, 7, 9, 8], True, [-1, -1, 8]),  # reopened
        ([5, 9], False, [-1, -1, 9]),  # start split across prompt and completion
        ([], False, [-1, -1, -1]),
    ],
)
def test_scan_prompt(prompt, opens, tail):
    got_open, got_tail = scan_prompt(torch.tensor(prompt, dtype=torch.long), [9, 8], [7], 3)
    assert bool(got_open) is opens
    assert got_tail.tolist() == tail


def test_no_start_delimiter_means_open_from_the_start():
    assert bool(scan_prompt(torch.tensor([1, 2, 3]), [], [7], 1)[0])


# -- scenarios on the three paths ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab(tiny_model_dir) -> TokenizerVocab:
    return TokenizerVocab(AutoTokenizer.from_pretrained(tiny_model_dir))


@pytest.fixture
def ids(vocab):
    enc = vocab.encode
    return {
        "end": enc("</think>")[0],
        "start": enc("<think>")[0],
        "wait": enc("Wait"),
        "wait3": enc("Wait, let me check"),
        "prefix": enc("\nFinal Answer:"),
        "im_start": enc("<|im_start|>")[0],
        "think": enc("<|im_start|>think")[-1],
        "s1_end": list(enc("<|im_start|>answer")),
        "text_end": list(enc("</answer>")),
        "open_prompt": enc("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"),
        "closed_prompt": enc("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
    }


@pytest.fixture(params=["numpy", "torch"])
def ops(request, monkeypatch):
    """The core runs its per-step arithmetic on numpy views on the CPU and on torch on accelerators: force each
    namespace in turn so both are checked against the reference (torch is what GPUs run)."""
    import vllm_ttsplugin.thinking as thinking
    from vllm_ttsplugin.arrays import TorchOps

    if request.param == "torch":
        monkeypatch.setattr(thinking, "ops_for", lambda device, pin, *tensors: TorchOps(device, pin))
    return request.param


def _run_three_ways(monkeypatch, vocab, make_reqs, max_num_seqs=8):
    use_vocab(monkeypatch, vocab)
    patch_v2_buffers_for_cpu(monkeypatch)
    size = vocab.vocab_size
    v1_reqs, v2_reqs, ref_reqs = make_reqs(), make_reqs(), make_reqs()
    v1 = V1Driver(max_num_seqs, size)
    for r in v1_reqs:
        v1.add(r)
    v2 = V2Driver(max_num_seqs, size)
    for r in v2_reqs:
        v2.add(r)
    steps = max(r.max_tokens for r in v1_reqs)
    for _ in range(steps):
        v1.step()
        v2.step()
    expected = []
    for r in ref_reqs:
        spec = spec_of(r.params, vocab)
        expected.append(reference_decode(r, spec, size, r.params.seed or 0))
    for r1, r2, ref in zip(v1_reqs, v2_reqs, expected, strict=True):
        assert r1.output == ref, f"V1 {r1.key}: {r1.output} != reference {ref}"
        assert r2.output == ref, f"V2 {r2.key}: {r2.output} != reference {ref}"
    return v1_reqs


EOS = 2  # the tiny tokenizer's <|im_end|>


def _params(temperature=0.0, seed=None, eos=True, **extra):
    """A request's params as the engine sees them: EOS set from the generation config (vLLM does this at
    admission), so EOS inside thinking is an end attempt."""
    params = SamplingParams(temperature=temperature, seed=seed, max_tokens=32, extra_args=extra or None)
    if eos:
        params.update_from_generation_config({}, EOS)
    return params


def _report(tokens, prompt, vocab, **config):
    return report_tokens(tokens, prompt, ThinkingConfig(**config), vocab, (EOS,))


def test_max_budget_forces_end_then_answer_prefix(ops, monkeypatch, vocab, ids):
    def make():
        return [
            Req("max", _params(tts_max_think=5, tts_answer_prefix="\nFinal Answer:"), ids["open_prompt"]),
            Req("max-sampled", _params(1.0, 3, tts_max_think=7), ids["open_prompt"]),
            Req("plain", _params(), ids["open_prompt"]),
        ]

    out = _run_three_ways(monkeypatch, vocab, make)
    assert out[0].output[5] == ids["end"]
    assert out[0].output[6 : 6 + len(ids["prefix"])] == list(ids["prefix"])
    assert ids["end"] not in out[0].output[:5]
    assert out[1].output[7] == ids["end"] and ids["end"] not in out[1].output[:7]
    report = _report(
        out[0].output, ids["open_prompt"], vocab, tts_max_think=5, tts_answer_prefix="\nFinal Answer:"
    )
    assert (report.thinking_tokens, report.end) == (5, "budget")
    assert report.forced_positions == tuple(range(5, 6 + len(ids["prefix"])))  # the end and the whole prefix


def test_min_budget_greedy_injects_waits_where_the_model_tries_to_end(ops, monkeypatch, vocab, ids):
    end, wait = ids["end"], ids["wait"][0]
    boost = {p: {end: 60.0} for p in (2, 4, 6, 12)}

    def make():
        return [
            Req("min", _params(tts_min_think=8), ids["open_prompt"], boost=dict(boost)),
            Req(
                "min-1wait", _params(tts_min_think=8, tts_max_waits=1), ids["open_prompt"], boost=dict(boost)
            ),
            Req("vanilla", _params(), ids["open_prompt"], boost=dict(boost)),
        ]

    out = _run_three_ways(monkeypatch, vocab, make)
    # Attempts at 2, 4, 6 (2, 3, 4 model tokens so far) become waits; a wait is not a thinking token, so at 12
    # the model has written 2 + 1 + 1 + 5 = 9 >= 8 tokens and may end.
    assert [out[0].output[p] for p in (2, 4, 6, 12)] == [wait, wait, wait, end]
    assert end not in out[0].output[:12] and out[0].output.count(wait) == 3
    report = _report(out[0].output, ids["open_prompt"], vocab, tts_min_think=8)
    assert (report.thinking_tokens, report.waits, report.end) == (9, 3, "natural")
    assert report.wait_positions == (2, 4, 6) and report.forced_positions == (2, 4, 6)
    assert (
        out[1].output[2] == wait and out[1].output[4] == end
    )  # max_waits=1: the second attempt ends thinking
    assert out[2].output[2] == end  # without control the model ends at 2


def test_the_token_after_a_wait_is_never_an_end_attempt(ops, monkeypatch, vocab, ids):
    """s1 continues every round after a wait with `min_tokens=1`: the model writes at least one token of its own
    between waits, so with the end token always on top the minimum is met by model tokens, not by waits."""
    end, wait = ids["end"], ids["wait"][0]

    def make():
        boost = {p: {end: 60.0} for p in range(20)}
        return [Req("w", _params(tts_min_think=3), ids["open_prompt"], boost=boost, max_tokens=10)]

    (r,) = _run_three_ways(monkeypatch, vocab, make)
    assert r.output[0::2][:3] == [wait] * 3 and r.output[6] == end
    assert all(t not in (end, wait) for t in r.output[1:6:2])
    report = _report(r.output, ids["open_prompt"], vocab, tts_min_think=3)
    assert (report.thinking_tokens, report.waits, report.end) == (3, 3, "natural")


def test_multi_token_wait_is_always_completed_and_not_counted(ops, monkeypatch, vocab, ids):
    end = ids["end"]
    wait = list(ids["wait3"])
    assert len(wait) > 2

    def make():
        # End attempts at 1 and at every position of the wait text and after it: the wait text is completed,
        # the token after it is the model's own, then the next attempt is below the minimum again.
        boost = {p: {end: 60.0} for p in range(1, 2 * len(wait) + 4)}
        return [
            Req("w", _params(tts_min_think=3, tts_wait="Wait, let me check"), ids["open_prompt"], boost=boost)
        ]

    (r,) = _run_three_ways(monkeypatch, vocab, make)
    k = len(wait)
    assert r.output[1 : 1 + k] == wait and r.output[1 + k] not in (end, wait[0])
    assert r.output[2 + k : 2 + 2 * k] == wait  # 2 model tokens < 3: the next attempt is a wait again
    report = _report(r.output, ids["open_prompt"], vocab, tts_min_think=3, tts_wait="Wait, let me check")
    assert report.wait_positions[:2] == (1, 2 + k)
    assert set(range(1, 1 + k)) <= set(report.forced_positions)


def test_min_equal_to_max_counts_only_model_tokens(ops, monkeypatch, vocab, ids):
    end, wait = ids["end"], ids["wait"][0]

    def make():
        boost = {p: {end: 60.0} for p in range(40)}
        params = _params(tts_min_think=6, tts_max_think=6, tts_answer_prefix="\nFinal Answer:")
        return [Req("fit", params, ids["open_prompt"], boost=boost, max_tokens=20)]

    (r,) = _run_three_ways(monkeypatch, vocab, make)
    # wait, model token, six times: 6 model tokens, then the budget forces the end (and the answer prefix).
    assert r.output[0:12:2] == [wait] * 6 and r.output[12] == end
    assert r.output[13 : 13 + len(ids["prefix"])] == list(ids["prefix"])
    report = _report(
        r.output,
        ids["open_prompt"],
        vocab,
        tts_min_think=6,
        tts_max_think=6,
        tts_answer_prefix="\nFinal Answer:",
    )
    assert (report.thinking_tokens, report.waits, report.end) == (6, 6, "budget")


def test_eos_inside_thinking_is_an_end_attempt(ops, monkeypatch, vocab, ids):
    """An EOS sampled while thinking means what s1's loop makes of it: below the minimum the wait text, with the
    end allowed the end delimiter (thinking ends naturally, the answer follows); `tts_eos_in_thinking="stop"`
    keeps vLLM's meaning. After thinking, EOS ends the completion as usual."""
    end, wait = ids["end"], ids["wait"][0]
    boost = {2: {EOS: 60.0}, 5: {EOS: 60.0}, 9: {EOS: 60.0}}

    def make():
        return [
            Req("min", _params(tts_min_think=5), ids["open_prompt"], boost=dict(boost)),
            Req(
                "max",
                _params(tts_max_think=20, tts_answer_prefix="\nFinal Answer:"),
                ids["open_prompt"],
                boost=dict(boost),
            ),
            Req(
                "stop",
                _params(tts_max_think=20, tts_eos_in_thinking="stop"),
                ids["open_prompt"],
                boost=dict(boost),
            ),
            Req("ignore-eos", _params(tts_max_think=20, eos=False), ids["open_prompt"], boost=dict(boost)),
            Req(
                "sampled",
                _params(1.0, 4, tts_min_think=4),
                ids["open_prompt"],
                boost={p: {EOS: 9.0} for p in range(20)},
            ),
        ]

    out = _run_three_ways(monkeypatch, vocab, make)
    # Attempts at 2 and 5 (2 and 4 model tokens < 5) become waits; at 9 (7 model tokens) the end delimiter.
    assert [out[0].output[p] for p in (2, 5, 9)] == [wait, wait, end] and EOS not in out[0].output[:9]
    assert out[1].output[2] == end and EOS not in out[1].output[:3]  # natural end, no answer prefix
    assert out[1].output[3 : 3 + len(ids["prefix"])] != list(ids["prefix"])
    assert out[1].output[5] == EOS  # the answer ends at EOS as usual
    assert out[2].output[2] == EOS and out[3].output[2] == EOS  # opt-out / ignore_eos: untouched
    assert end in out[4].output and wait in out[4].output
    assert EOS not in out[4].output[: out[4].output.index(end)]
    report = _report(out[4].output, ids["open_prompt"], vocab, tts_min_think=4)
    assert report.end == "natural" and report.thinking_tokens >= 4


def test_start_delimiter_emitted_by_the_model_and_multi_token_delimiters(ops, monkeypatch, vocab, ids):
    im, think, s1_end = ids["im_start"], ids["think"], ids["s1_end"]
    assert len(s1_end) == 3 and s1_end[0] == im  # <|im_start|> + "an" + "swer" in the tiny tokenizer

    def make():
        s1 = dict(tts_think_start="<|im_start|>think", tts_think_end="<|im_start|>answer")
        # The model writes <|im_start|>think at positions 2-3, tries to end (<|im_start|>) at 6.
        boost = {2: {im: 60.0}, 3: {think: 60.0}, 6: {im: 60.0}}
        return [
            Req(
                "s1-max",
                _params(tts_max_think=2, tts_answer_prefix="\nFinal Answer:", **s1),
                ids["closed_prompt"],
                boost=dict(boost),
            ),
            Req("s1-natural", _params(tts_max_think=30, **s1), ids["closed_prompt"], boost=dict(boost)),
            Req("s1-min", _params(tts_min_think=5, **s1), ids["closed_prompt"], boost=dict(boost)),
        ]

    out = _run_three_ways(monkeypatch, vocab, make)
    assert out[0].output[2:4] == [im, think]
    # Budget stop: thinking tokens at 4 and 5, then the whole end delimiter and the answer prefix are forced.
    assert out[0].output[6:9] == s1_end
    assert out[0].output[9 : 9 + len(ids["prefix"])] == list(ids["prefix"])
    # Natural end: the model produces <|im_start|> at 6; the delimiter is completed, no prefix follows.
    assert out[1].output[6:9] == s1_end
    assert out[1].output[9 : 9 + len(ids["prefix"])] != list(ids["prefix"])
    assert out[2].output[6] == ids["wait"][0]  # 2 thinking tokens < 5: the attempt becomes a wait


def test_end_scaling_and_sampled_min_agree_on_all_paths(ops, monkeypatch, vocab, ids):
    end = ids["end"]

    def make():
        boost = {p: {end: 9.0} for p in range(0, 30)}
        return [
            Req("ts-bias", _params(tts_end_bias=2.5), ids["open_prompt"], boost=dict(boost)),
            Req("ts-temp", _params(tts_end_temperature=0.5), ids["open_prompt"], boost=dict(boost)),
            Req("ts-sampled", _params(1.0, 11, tts_end_bias=1.0), ids["open_prompt"], boost=dict(boost)),
            Req("min-sampled", _params(1.0, 5, tts_min_think=20), ids["open_prompt"], boost=dict(boost)),
            Req(
                "min-topk",
                SamplingParams(
                    temperature=0.8, seed=9, top_k=20, top_p=0.9, extra_args={"tts_min_think": 20}
                ),
                ids["open_prompt"],
                boost=dict(boost),
            ),
            Req(
                "min-ts",
                _params(1.0, 7, tts_min_think=12, tts_end_bias=2.0),
                ids["open_prompt"],
                boost=dict(boost),
            ),
        ]

    out = _run_three_ways(monkeypatch, vocab, make)
    for r in out[3:]:
        assert ids["wait"][0] in r.output  # the sampled min budget injected at least one wait


def test_text_delimiter_recognised_only_when_written_whole(ops, monkeypatch, vocab, ids):
    """`</answer>` is `</` `an` `swer` `>` here: `</` is ordinary text. A `</` (or `</an`) the model writes is
    left exactly as without the processor; the whole delimiter ends thinking naturally; the max budget forces it
    whole; an EOS attempt forces it too."""
    text_end = list(ids["text_end"])
    slash, rest = text_end[0], text_end[1:]
    partial = {2: {slash: 60.0}, 6: {slash: 60.0}, 7: {rest[0]: 60.0}}  # `</` alone, then `</an` + something
    whole = {9 + j: {t: 60.0} for j, t in enumerate(text_end)}  # the model writes `</answer>` at 9..12
    config = {"tts_think_end": "</answer>", "tts_max_think": 20}
    budget = {"tts_think_end": "</answer>", "tts_max_think": 4, "tts_answer_prefix": "\nFinal Answer:"}

    def make():
        eos_boost = {p: {EOS: 3.0} for p in range(20)}
        return [
            Req("partial", _params(**config), ids["closed_prompt"], boost={**partial, **whole}),
            Req("plain", _params(), ids["closed_prompt"], boost={**partial, **whole}, twin="partial"),
            Req("budget", _params(**budget), ids["closed_prompt"], boost=dict(partial)),
            Req("eos", _params(**config), ids["closed_prompt"], boost={3: {EOS: 60.0}}),
            Req("eos-sampled", _params(1.0, 9, **config), ids["closed_prompt"], boost=eos_boost),
        ]

    out = _run_three_ways(monkeypatch, vocab, make)
    assert out[0].output[:13] == out[1].output[:13]  # nothing changed up to and including the delimiter
    assert out[0].output[2] == slash and out[0].output[6:8] == [slash, rest[0]]
    report = _report(out[0].output, ids["closed_prompt"], vocab, **config)
    assert (report.end, report.think_end, report.thinking_tokens, report.forced_positions) == (
        "natural",
        9,
        9,
        (),
    )
    assert out[2].output[4:8] == text_end and out[2].output[8 : 8 + len(ids["prefix"])] == list(ids["prefix"])
    report = _report(out[2].output, ids["closed_prompt"], vocab, **budget)
    assert (report.end, report.thinking_tokens) == ("budget", 4)
    assert out[3].output[3:7] == text_end  # EOS at 3 became the end of thinking
    assert _report(out[3].output, ids["closed_prompt"], vocab, **config).end == "natural"
    sampled = out[4].output
    assert EOS not in sampled[: sampled.index(slash) if slash in sampled else None]


def test_text_delimiters_refuse_what_they_cannot_do_exactly(vocab):
    for extra in (
        {"tts_min_think": 4},
        {"tts_end_bias": 1.0},
        {"tts_end_temperature": 0.5, "tts_max_think": 9},
    ):
        with pytest.raises(ThinkingConfigError, match="ordinary-text token") as err:
            resolve_thinking(ThinkingConfig(tts_think_end="</answer>", **extra), vocab)
        assert err.value.parameter == "tts_think_end"
    # A special first token (s1's <|im_start|>answer) is an end attempt on its own: everything is allowed.
    spec = resolve_thinking(ThinkingConfig(tts_think_end="<|im_start|>answer", tts_min_think=4), vocab)
    assert spec.end_is_attempt and len(spec.end_ids) == 3
    assert not resolve_thinking(
        ThinkingConfig(tts_think_end="</answer>", tts_max_think=4), vocab
    ).end_is_attempt


def test_attempt_probability_is_the_mass_of_the_attempt_tokens():
    """The probability of an end attempt is a multi-token event: p(E[0]) + p(EOS) + p(stop tokens) under the
    request's distribution after temperature and truncation, each token once."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 30, generator=g)
    tokens = torch.tensor([[3, 7, -1], [3, 3, 7], [5, -1, -1], [1, 2, 3]])
    temperature = torch.tensor([1.0, 0.7, 1.3, 1.0])
    probs = (logits / temperature[:, None]).softmax(-1)
    expected = torch.stack(
        [probs[0, [3, 7]].sum(), probs[1, [3, 7]].sum(), probs[2, 5], probs[3, [1, 2, 3]].sum()]
    )
    torch.testing.assert_close(attempt_probability(logits, tokens, temperature), expected)
    top_p = torch.tensor([1.0, 0.8, 1.0, 0.5])
    per_token = [
        end_token_probability(logits, torch.full((4,), t), temperature, None, top_p) for t in range(30)
    ]
    expected = torch.stack(
        [sum(per_token[t][r] for t in set(tokens[r].tolist()) if t >= 0) for r in range(4)]
    )
    torch.testing.assert_close(attempt_probability(logits, tokens, temperature, None, top_p), expected)


def test_requests_without_tts_keys_are_bit_identical(ops, monkeypatch, vocab, ids):
    use_vocab(monkeypatch, vocab)
    driver = V1Driver(4, vocab.vocab_size)
    plain = Req("plain", _params(), ids["open_prompt"])
    other = Req("other-plugin", _params(other_plugin_key=1), ids["open_prompt"])
    ctl = Req("ctl", _params(tts_max_think=1, tts_min_think=1), ids["open_prompt"])
    for r in (plain, other, ctl):
        driver.add(r)
    driver.proc.update_state(driver.builder.get_and_reset(3))
    for position in range(4):
        logits = torch.stack([model_logits(r, position, vocab.vocab_size) for r in (plain, other, ctl)])
        before = logits.clone()
        after = driver.proc.apply(logits)
        assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
        for r, row in zip((plain, other, ctl), after, strict=True):
            r.output.append(int(row.argmax()))
    assert ctl.output[1] == ids["end"]


# -- V1 persistent batch: randomized adds, finishes, aborts, condensing, swaps, preemption -------------------------


_CONFIGS = [
    {},
    {"tts_max_think": 4, "tts_answer_prefix": "\nFinal Answer:"},
    {"tts_min_think": 6},
    {"tts_min_think": 5, "tts_max_think": 9, "tts_wait": "Wait, let me check"},
    {"tts_min_think": 10, "tts_max_waits": 2},
    {"tts_end_bias": 3.0},
    {"tts_end_temperature": 0.3, "tts_max_think": 12},
    {"tts_think_start": "<|im_start|>think", "tts_think_end": "<|im_start|>answer", "tts_max_think": 3},
    {"tts_think_end": "</answer>", "tts_max_think": 7},
    {"tts_min_think": 4, "tts_eos_in_thinking": "stop"},
]


def _random_request(rng: random.Random, i: int, ids) -> Req:
    extra = dict(rng.choice(_CONFIGS))
    sampled = rng.random() < 0.5
    params = SamplingParams(
        temperature=rng.choice([0.7, 1.0]) if sampled else 0.0,
        seed=rng.randrange(1000) if sampled else None,
        max_tokens=64,
        extra_args=extra or None,
    )
    if rng.random() < 0.7:
        params.update_from_generation_config({}, EOS)  # EOS inside thinking is an end attempt
    end = {"</answer>": ids["text_end"][0], "<|im_start|>answer": ids["im_start"]}.get(
        extra.get("tts_think_end"), ids["end"]
    )
    boost = {p: {rng.choice([end, end, EOS]): rng.choice([2.0, 4.0, 60.0])} for p in rng.sample(range(16), 6)}
    if "</answer>" in extra.values() and rng.random() < 0.5:
        boost.update({8 + j: {t: 60.0} for j, t in enumerate(ids["text_end"])})
    if "tts_think_start" in extra:
        boost[1] = {ids["im_start"]: 60.0}
        boost[2] = {ids["think"]: 60.0}
    prompt = ids["open_prompt"] if rng.random() < 0.7 else ids["closed_prompt"]
    if rng.random() < 0.2:
        boost.setdefault(0, {})[ids["start"]] = 60.0  # the model opens thinking itself
    return Req(f"r{i}", params, list(prompt), boost=boost, max_tokens=rng.randint(6, 18))


@pytest.mark.parametrize("seed", [0, 1])
def test_v1_randomized_persistent_batch(ops, monkeypatch, vocab, ids, seed):
    """Like vLLM's tests/v1/logits_processors/test_correctness.py: a persistent batch under random churn."""
    use_vocab(monkeypatch, vocab)
    rng = random.Random(seed)
    driver = V1Driver(6, vocab.vocab_size)
    pending = [_random_request(rng, i, ids) for i in range(24)]
    originals = {r.key: Req(r.key, r.params, list(r.prompt), r.boost, [], r.max_tokens) for r in pending}
    preempted: list[Req] = []
    kinds = {True: 0, False: 0}  # preemptions resumed by replay / from the stash
    finished: list[Req] = []
    aborted: set[str] = set()
    for _step in range(200):
        for r in [r for r in driver.batch if r is not None and r.done]:
            driver.remove(r)
            finished.append(r)
        if driver.num_reqs and rng.random() < 0.05:
            victim = rng.choice([r for r in driver.batch if r is not None])
            driver.remove(victim)
            aborted.add(victim.key)
        if driver.num_reqs and rng.random() < 0.25:
            victim = rng.choice([r for r in driver.batch if r is not None])
            driver.remove(victim)
            replay = kinds[True] <= kinds[False]  # alternate the two kinds of resumption
            kinds[replay] += 1
            if replay:
                # Resumed with a fresh output list (as under async scheduling): the state is replayed.
                victim = Req(
                    victim.key,
                    victim.params,
                    victim.prompt,
                    victim.boost,
                    list(victim.output),
                    victim.max_tokens,
                )
            preempted.append(victim)
        while driver.num_reqs < driver.max_num_seqs and (pending or preempted):
            source = preempted if preempted and rng.random() < 0.6 else pending or preempted
            driver.add(source.pop(0))
        driver.condense()
        if driver.num_reqs >= 2 and rng.random() < 0.3:
            i, j = rng.sample(range(driver.num_reqs), 2)
            driver.swap(i, j)
        if not driver.batch and not pending and not preempted:
            break
        driver.step()
    assert not pending and not preempted and all(r is None for r in driver.batch)
    assert len(finished) + len(aborted) == 24
    # The churn really happened: condensing moves, swaps, and both kinds of resumption.
    assert sum("move" in e for e in driver.log) > 3 and sum("swap" in e for e in driver.log) > 3
    assert kinds[True] >= 2 and kinds[False] >= 2, kinds
    for r in finished:
        ref = originals[r.key]
        expected = reference_decode(ref, spec_of(ref.params, vocab), vocab.vocab_size, ref.params.seed or 0)
        assert r.output == expected, f"{r.key} params={r.params.extra_args} log={driver.log[-30:]}"


def test_v1_resume_without_state_infers_even_a_single_injected_wait(monkeypatch, vocab, ids):
    """A preempted request re-added with a fresh output list (no stashed state) holding one token, an injected
    wait: that wait is replayed as an injection (not a thinking token), so the next token is the after-wait one."""
    use_vocab(monkeypatch, vocab)
    end = ids["end"]

    def make(key):
        params = _params(tts_min_think=3)
        return Req(key, params, ids["open_prompt"], boost={p: {end: 60.0} for p in range(12)}, max_tokens=8)

    driver = V1Driver(2, vocab.vocab_size)
    r = make("p")
    driver.add(r)
    driver.step()
    assert r.output == [ids["wait"][0]]
    driver.remove(r)
    driver.condense()
    driver.step()
    resumed = Req(r.key, r.params, r.prompt, r.boost, list(r.output), r.max_tokens)  # a new list: no stash
    driver.add(resumed)
    while not resumed.done:
        driver.step()
    ref = make("p")
    assert resumed.output == reference_decode(ref, spec_of(ref.params, vocab), vocab.vocab_size, 0)


def test_v2_resume_after_preemption_replays_state(ops, monkeypatch, vocab, ids):
    """V2 re-adds a preempted request with its partial output in prefill_len; the slot state is replayed."""
    use_vocab(monkeypatch, vocab)
    patch_v2_buffers_for_cpu(monkeypatch)
    end = ids["end"]
    boost = {p: {end: 60.0} for p in (1, 2, 12)}

    def make(key):
        params = _params(
            tts_min_think=10,
            tts_max_think=14,
            tts_wait="Wait, let me check",
            tts_answer_prefix="\nFinal Answer:",
        )
        return Req(key, params, ids["open_prompt"], boost=dict(boost), max_tokens=24)

    driver = V2Driver(4, vocab.vocab_size)
    r = make("p")
    driver.add(r)
    driver.add(make("filler"))
    for _ in range(3):  # preempt in the middle of the first wait text
        driver.step()
    driver.remove(r)
    driver.step()
    driver.add(r, resumed=True)
    while not r.done:
        driver.step()
    ref = make("p")
    assert r.output == reference_decode(ref, spec_of(ref.params, vocab), vocab.vocab_size, 0)


# -- the core directly ---------------------------------------------------------------------------------------------


def _spec(**kw) -> ThinkingSpec:
    base = dict(
        min_think=0,
        max_think=None,
        max_waits=None,
        wait_ids=(50,),
        answer_prefix_ids=(),
        end_ids=(60,),
        start_ids=(61,),
        end_temperature=None,
        end_bias=None,
        sampling=SamplingView(temperature=0.0),
    )
    base.update(kw)
    return ThinkingSpec(**base)


def test_end_scaling_forms_are_exact_and_only_while_thinking():
    control = ThinkingControl(3, "cpu")
    specs = [_spec(end_temperature=0.5), _spec(end_bias=-1.25), _spec(end_temperature=0.5)]
    opens = torch.tensor([True, True, False])
    control.admit([0, 1, 2], specs, [0, 0, 0], opens, torch.full((3, 1), -1))
    logits = torch.randn(3, 64)
    logits[:, 60] = torch.tensor([-2.0, 3.0, 4.0])
    out = control.apply(logits.clone(), torch.arange(3), np.arange(3), torch.zeros(3, dtype=torch.long))
    assert out[0, 60] == -4.0  # z / T is sign dependent: a negative logit goes down
    assert out[1, 60] == 3.0 - 1.25
    assert out[2, 60] == 4.0  # not thinking yet: untouched
    mask = torch.ones(64, dtype=torch.bool)
    mask[60] = False
    assert torch.equal(out[:, mask], logits[:, mask])


def test_overridden_forced_token_abandons_the_sequence():
    """Another processor (e.g. vLLM's thinking_token_budget, which runs after us) may override a forced token."""
    control = ThinkingControl(1, "cpu")
    spec = _spec(max_think=2, end_ids=(60, 62), answer_prefix_ids=(70, 71))
    control.admit([0], [spec], [0], torch.tensor([True]), torch.full((1, 1), -1))
    slots = torch.tensor([0])
    for pos, token in enumerate([5, 6]):
        control.observe(slots, torch.tensor([token]), torch.tensor([pos]))
    assert control.state(0)["think"] == 2
    out = control.apply(torch.zeros(1, 80), slots, np.array([0]), torch.tensor([2]))
    assert int(out.argmax()) == 60
    control.observe(slots, torch.tensor([60]), torch.tensor([2]))
    assert control.state(0)["phase"] == PHASE_ANSWER and control.state(0)["seq"] == 1
    out = control.apply(torch.zeros(1, 80), slots, np.array([0]), torch.tensor([3]))
    assert int(out.argmax()) == 62
    control.observe(slots, torch.tensor([9]), torch.tensor([3]))  # someone else chose 9
    state = control.state(0)
    assert state["seq"] == -1 and state["phase"] == PHASE_ANSWER
    out = control.apply(torch.zeros(1, 80), slots, np.array([0]), torch.tensor([4]))
    assert torch.equal(out, torch.zeros(1, 80))


def test_discarded_steps_leave_no_state():
    """A row whose sampled token is discarded (chunked prefill) gets the same edit when the step is re-run."""
    control = ThinkingControl(1, "cpu")
    spec = _spec(min_think=4, sampling=SamplingView(temperature=1.0, seed=3))
    control.admit([0], [spec], [3], torch.tensor([True]), torch.full((1, 1), -1))
    logits = torch.zeros(1, 80)
    logits[0, 60] = 2.0
    first = control.apply(logits.clone(), torch.tensor([0]), np.array([0]), torch.tensor([0]))
    for _ in range(3):
        again = control.apply(logits.clone(), torch.tensor([0]), np.array([0]), torch.tensor([0]))
        assert torch.equal(first, again)
    assert control.state(0)["think"] == 0 and control.state(0)["phase"] == PHASE_THINKING


def test_first_finish_plugs_in_as_a_slot_component_and_wins(monkeypatch, vocab, ids):
    """Both controls plug in the same way (slot components over one adapter); First Finish runs last, so its stop
    wins over a forced end delimiter on the same row."""
    import copy

    from vllm_ttsplugin.components import (
        COMPONENTS,
        ConfidenceComponent,
        FirstFinishComponent,
        SlotComponent,
        ThinkingComponent,
    )
    from vllm_ttsplugin.ffs import find_marker_token, validate_first_finish_params

    assert [ThinkingComponent, FirstFinishComponent, ConfidenceComponent] == COMPONENTS
    assert all(issubclass(c, SlotComponent) for c in COMPONENTS)
    use_vocab(monkeypatch, vocab)
    parent = _params(tts_max_think=1, tts_first_finish=1, tts_eos_in_thinking="stop")
    parent.n = 2
    validate_first_finish_params(parent)
    children = [copy.copy(parent) for _ in range(2)]
    for child in children:
        child.n = 1
    driver = V1Driver(4, vocab.vocab_size)
    a = Req("a", children[0], ids["open_prompt"], boost={0: {EOS: 60.0}})  # finishes at once (EOS)
    b = Req("b", children[1], ids["open_prompt"])
    driver.add(a)
    driver.add(b)
    driver.step()
    assert a.output == [EOS] and b.output[0] != ids["end"]
    driver.step()  # b is due to get the forced end delimiter (max 1): First Finish stops it instead
    assert b.output[1] == find_marker_token(vocab.tokenizer, vocab.vocab_size)


def test_the_confidence_stop_wins_over_a_forced_end_of_thinking(monkeypatch, vocab, ids):
    """DeepConf's stop is a slot component after thinking control: when a forced end delimiter is due (max 1) and
    the window says stop, the marker is forced instead."""
    from vllm_ttsplugin import TTSLogitsProcessor
    from vllm_ttsplugin.ffs import find_marker_token
    from vllm_ttsplugin.processor import admission_tokenizer

    use_vocab(monkeypatch, vocab)
    params = _params(
        tts_max_think=1,
        tts_eos_in_thinking="stop",
        tts_confidence_threshold=1e9,  # every full window is below it
        tts_confidence_window=1,
    )
    with admission_tokenizer(vocab.tokenizer, vocab.vocab_size):
        TTSLogitsProcessor.validate_params(params)
    driver = V1Driver(2, vocab.vocab_size)
    req = Req("r", params, ids["open_prompt"])
    driver.add(req)
    driver.step()
    assert req.output[0] != ids["end"]
    driver.step()  # the end delimiter is due (max 1), and so is the confidence stop: the stop wins
    assert req.output[1] == find_marker_token(vocab.tokenizer, vocab.vocab_size)
