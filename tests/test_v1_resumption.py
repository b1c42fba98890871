"""Requests that leave vLLM's V1 persistent batch without being listed in `BatchUpdate.removed` and come back.

vLLM reports a slot freed by a finished, preempted or unscheduled request in `removed` only while it stays empty:
when condensing moves another request onto it, the index is popped from `removed` and only the move is
reported. The thinking state of the request that was there must still be kept (it may resume, with the same
output list) and, when it is gone, rebuilt from the tokens. Found by tests/test_server_load.py: a greedy request
with `tts_max_waits=2`, preempted after its first (injected) wait, came back with its wait counted as a thinking
token and got a third wait.
"""

from __future__ import annotations

import pytest
from thinking_helpers import Req, V1Driver, reference_decode, spec_of, use_vocab
from transformers import AutoTokenizer
from vllm import SamplingParams

from vllm_ttsplugin.vocab import TokenizerVocab


@pytest.fixture(scope="module")
def vocab(tiny_model_dir) -> TokenizerVocab:
    return TokenizerVocab(AutoTokenizer.from_pretrained(tiny_model_dir))


def _requests(vocab: TokenizerVocab) -> tuple[Req, Req]:
    end = vocab.encode("</think>")[0]
    prompt = list(vocab.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"))
    greedy = dict(temperature=0.0, max_tokens=8)
    # The model wants to end thinking at every step: waits at 0 and 1, then the end (tts_max_waits=2).
    victim = Req(
        "victim",
        SamplingParams(**greedy, extra_args={"tts_min_think": 10, "tts_max_waits": 2}),
        prompt,
        boost={p: {end: 60.0} for p in range(8)},
        max_tokens=8,
    )
    other = Req("other", SamplingParams(**greedy, extra_args={"tts_max_think": 3}), prompt, max_tokens=8)
    return victim, other


@pytest.mark.parametrize("fresh_list", [False, True], ids=["same-output-list", "new-output-list"])
def test_request_overwritten_by_a_condensing_move_resumes_exactly(monkeypatch, vocab, fresh_list):
    use_vocab(monkeypatch, vocab)
    driver = V1Driver(4, vocab.vocab_size)
    victim, other = _requests(vocab)
    driver.add(victim)  # index 0
    driver.add(other)  # index 1
    driver.step()  # victim: the first wait is injected
    assert len(victim.output) == 1
    driver.remove(victim)  # preempted ...
    driver.condense()  # ... and `other` moves 1 -> 0 over it: BatchUpdate.removed is empty, moved = [(1, 0)]
    assert driver.log[-1] == "move 1->0"
    driver.step()
    if fresh_list:  # resumed with a new output list (no stash to find): its one token is replayed
        victim = Req(victim.key, victim.params, victim.prompt, victim.boost, list(victim.output), 8)
    driver.add(victim)
    while not victim.done:
        driver.step()
    expected = reference_decode(
        Req(victim.key, victim.params, victim.prompt, victim.boost, [], 8),
        spec_of(victim.params, vocab),
        vocab.vocab_size,
        0,
    )
    wait, end = vocab.encode("Wait")[0], vocab.encode("</think>")[0]
    # The scenario: a wait injected at position 0 (before the preemption), two in all, then the end is allowed.
    assert expected[0] == wait and expected.count(wait) == 2 and expected.index(end) > expected.index(wait, 1)
    assert victim.output == expected
