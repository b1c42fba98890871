"""First Finish Search without an engine: argument validation, `TTSLogitsProcessor`'s V1 and V2 adapters (FFS is
one of its slot components) driven by simulated persistent batches (vLLM's own BatchUpdateBuilder /
LogitsContext), output helpers, answers and voting."""

from __future__ import annotations

import random
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ffs_helpers import EOS, MARKER, VOCAB, Reference, StubTokenizer, make_requests
from thinking_helpers import fake_vllm_config, use_vocab

from vllm_ttsplugin.answers import (
    extract_answer,
    extract_boxed,
    extract_final_answer,
    get_extractor,
    majority_vote,
    normalize_answer,
)
from vllm_ttsplugin.ffs import (
    MARKER_KEY,
    RACE_ID_KEY,
    RACE_SIZE_KEY,
    FirstFinishCore,
    FirstFinishMember,
    FirstFinishParamsError,
    SlotOutcome,
    first_finish_marker,
    first_finish_scope,
    first_finish_winners,
    force_tokens_,
    is_first_finish_stopped,
    member_outcome,
    validate_first_finish_params,
)
from vllm_ttsplugin.processor import admission_tokenizer

# ----------------------------------------------------------------------------------------------------------------
# Validation at admission
# ----------------------------------------------------------------------------------------------------------------

BAD = [
    ({"tts_first_finish": 0}, 4, "tts_first_finish"),
    ({"tts_first_finish": -3}, 4, "tts_first_finish"),
    ({"tts_first_finish": 5}, 4, "exceeds the n=4"),
    ({"tts_first_finish": 1}, 1, "n > 1"),
    ({"tts_first_finish": 1.5}, 4, "tts_first_finish"),
    ({"tts_first_finish": 1.0}, 4, "tts_first_finish"),
    ({"tts_first_finish": float("nan")}, 4, "NaN"),
    ({"tts_first_finish": float("inf")}, 4, "tts_first_finish"),
    ({"tts_first_finish": "1"}, 4, "tts_first_finish"),
    ({"tts_first_finish": True}, 4, "tts_first_finish"),
    ({"tts_first_finish": [1]}, 4, "tts_first_finish"),
    ({"tts_first_finish": None, "tts_group": "a"}, 4, "tts_group"),
    ({"tts_group": "a"}, 4, "tts_group"),
    ({"tts_first_finish": 1, "tts_group": 3}, 4, "tts_group"),
    ({"tts_first_finish": 1, "tts_group": ["a"]}, 4, "tts_group"),
    ({"tts_first_finish": 1, "tts_group": ""}, 4, "tts_group"),
    ({"tts_first_finish": 1, "tts_group": "x" * 300}, 4, "tts_group"),
]


@pytest.mark.parametrize(("extra_args", "n", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_arguments_are_rejected_naming_the_parameter(extra_args, n, message):
    from vllm import SamplingParams

    params = SamplingParams(n=n, temperature=1.0, extra_args=dict(extra_args))
    with first_finish_scope(), pytest.raises(FirstFinishParamsError, match=message) as error:
        validate_first_finish_params(params)
    assert error.value.parameter in ("tts_first_finish", "tts_group") and error.value.parameter in str(
        error.value
    )


def test_ignore_eos_without_stop_tokens_is_rejected():
    from vllm import SamplingParams

    params = SamplingParams(n=4, temperature=1.0, ignore_eos=True, extra_args={"tts_first_finish": 1})
    with pytest.raises(FirstFinishParamsError, match="ignore_eos"):
        validate_first_finish_params(params)
    ok = SamplingParams(
        n=4, temperature=1.0, ignore_eos=True, stop_token_ids=[3], extra_args={"tts_first_finish": 1}
    )
    validate_first_finish_params(ok)


def test_admission_stamps_a_fresh_race_per_call_and_leaves_other_requests_alone():
    from vllm import SamplingParams

    user_args = {"tts_first_finish": 2, "other": [1, 2], RACE_ID_KEY: "forged", MARKER_KEY: 7}
    params = SamplingParams(n=4, temperature=1.0, extra_args=user_args, stop=["END"], stop_token_ids=[9])
    with admission_tokenizer(StubTokenizer(), VOCAB):
        validate_first_finish_params(params)
    first = params.extra_args
    assert user_args[RACE_ID_KEY] == "forged"  # the caller's dict is never modified ...
    assert (
        first is not user_args and first[RACE_SIZE_KEY] == 4 and len(first[RACE_ID_KEY]) == 32
    )  # ... nor trusted
    assert (
        first[MARKER_KEY] == MARKER
        and params.stop_token_ids == [9, MARKER]
        and MARKER in params.all_stop_token_ids
    )
    assert params.stop == ["END"]
    with admission_tokenizer(StubTokenizer(), VOCAB):
        validate_first_finish_params(params)  # the next prompt validated with the same object: a new race
    assert params.extra_args[RACE_ID_KEY] != first[RACE_ID_KEY] and params.stop_token_ids == [9, MARKER]

    # Without a tokenizer at admission (an unknown frontend), no marker: losers are stopped with EOS, unmarked.
    unmarked = SamplingParams(n=4, temperature=1.0, extra_args={"tts_first_finish": 1, MARKER_KEY: 7})
    validate_first_finish_params(unmarked)
    assert MARKER_KEY not in unmarked.extra_args and not unmarked.stop_token_ids

    plain_args = {"something": 1}
    plain = SamplingParams(n=4, temperature=1.0, extra_args=plain_args)
    validate_first_finish_params(plain)
    assert plain.extra_args is plain_args and not plain.stop and not plain.stop_token_ids


def test_groups_exist_only_inside_the_admission_scope_that_minted_them():
    from vllm import SamplingParams

    def admit(group: str, n: int = 1) -> str:
        params = SamplingParams(n=n, temperature=1.0, extra_args={"tts_first_finish": 3, "tts_group": group})
        validate_first_finish_params(params)  # n == 1 and k > n are fine when a group ties requests together
        return params.extra_args[RACE_ID_KEY]

    with pytest.raises(FirstFinishParamsError, match="admission scope") as error:
        admit("q1")  # outside any scope: nothing could keep another client out of the race
    assert error.value.parameter == "tts_group"
    with first_finish_scope():
        a, b, other = admit("q1"), admit("q1", n=4), admit("q2")
        with first_finish_scope():  # a nested scope (another HTTP request): the same name is another race
            nested = admit("q1")
        assert admit("q1") == a
    with first_finish_scope():  # a later scope reusing the name: a new race, the old one cannot be joined
        later = admit("q1")
    assert a == b and len({a, other, nested, later}) == 4


@pytest.mark.parametrize("min_tokens", [0, 2, 3])
def test_stop_strings_count_only_where_vllm_checks_them_after_min_tokens(min_tokens):
    """A sample leaving with "t9 " in its text finished on that stop string only if the match ends after the text
    of its first min_tokens tokens (vLLM's detokenizer looks nowhere else); otherwise it was cut by length."""
    from vllm import SamplingParams

    params = SamplingParams(
        n=2, max_tokens=3, min_tokens=min_tokens, stop=["t9 "], extra_args={"tts_first_finish": 1}
    )
    validate_first_finish_params(params)
    params.update_from_generation_config({}, EOS)
    member = FirstFinishMember.from_params(params, VOCAB)
    outcome = member_outcome(member, [5, 5, 9], StubTokenizer())  # "t9 " is written by the third token
    assert outcome == (SlotOutcome.NATURAL if min_tokens < 3 else SlotOutcome.LENGTH)


# ----------------------------------------------------------------------------------------------------------------
# V1 adapter on a simulated persistent batch
# ----------------------------------------------------------------------------------------------------------------


class SimInputBatch:
    """The index bookkeeping of vLLM's V1 InputBatch (add, remove, condense, swap) over a BatchUpdateBuilder."""

    def __init__(self):
        from vllm.v1.sample.logits_processor import BatchUpdateBuilder

        self.builder = BatchUpdateBuilder()
        self.slots: list = []  # index -> ScriptedRequest | None

    @property
    def num_reqs(self) -> int:
        return sum(r is not None for r in self.slots)

    def add(self, req) -> None:
        index = self.builder.pop_removed()
        if index is None:
            index = len(self.slots)
            self.slots.append(None)
        self.builder.added.append((index, req.params, req.prompt, req.out))
        self.slots[index] = req

    def remove(self, req) -> None:
        index = next(i for i, r in enumerate(self.slots) if r is req)
        self.builder.removed_append(index)
        self.slots[index] = None

    def condense(self) -> None:
        from vllm.v1.sample.logits_processor import MoveDirectionality

        empty = self.builder.removed
        if not empty:
            return
        last = len(self.slots) - 1
        while empty:
            while last >= 0 and self.slots[last] is None:
                last -= 1
            hole = self.builder.peek_removed()
            if last < 0 or hole >= last:
                break
            self.builder.pop_removed()
            self.slots[hole], self.slots[last] = self.slots[last], None
            self.builder.moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
            last -= 1
        del self.slots[self.num_reqs :]

    def swap(self, i: int, j: int) -> None:
        from vllm.v1.sample.logits_processor import MoveDirectionality

        self.slots[i], self.slots[j] = self.slots[j], self.slots[i]
        self.builder.moved.append((i, j, MoveDirectionality.SWAP))

    def batch_update(self):
        return self.builder.get_and_reset(self.num_reqs)


def _check_row(row: torch.Tensor, req, ref: Reference, marker_known: bool, context: str) -> int | None:
    """Assert the processor's edit of one logits row; return the forced token (None when not forced)."""
    if ref.must_stop(req):
        token = ref.forced_token(req, marked=marker_known)
        expected = torch.full((VOCAB,), float("-inf"))
        expected[token] = 0.0
        assert torch.equal(row, expected), f"{context}: expected token {token} forced"
        return token
    expected = torch.zeros(VOCAB)
    if req.race is not None and marker_known:
        expected[MARKER] = float("-inf")  # members never sample the marker naturally
    assert torch.equal(row, expected), f"{context}: row must be untouched (marker masked for members)"
    return None


def _sample(req, forced: int | None) -> int:
    return forced if forced is not None else req.script[len(req.out)]


def _processor(monkeypatch, max_slots: int, req_states=None):
    """`TTSLogitsProcessor` over a stub tokenizer (it reads stop strings). Whether losers are marked is decided at
    admission (`make_requests(..., marker_known)`): the marker token is stamped there."""
    from vllm_ttsplugin import TTSLogitsProcessor
    from vllm_ttsplugin.components import FirstFinishComponent
    from vllm_ttsplugin.vocab import TokenizerVocab

    use_vocab(monkeypatch, TokenizerVocab(StubTokenizer(), VOCAB))
    config = fake_vllm_config(max_slots, vocab_size=VOCAB)
    if req_states is not None:
        proc = TTSLogitsProcessor(config, req_states)
    else:
        proc = TTSLogitsProcessor(config, torch.device("cpu"), False)
    return proc, next(c for c in proc._impl.components if isinstance(c, FirstFinishComponent))


@pytest.mark.parametrize("seed", range(12))
def test_v1_adapter_matches_the_rule_through_adds_moves_swaps_and_preemption(seed, monkeypatch):
    rng = random.Random(seed)
    marker_known = seed % 3 != 0
    requests = make_requests(rng, num_parents=rng.randint(2, 6), marker_known=marker_known)
    max_slots = 16
    ffs, component = _processor(monkeypatch, max_slots)
    batch, ref = SimInputBatch(), Reference()
    waiting = deque(requests)
    capacity = rng.randint(3, max_slots)
    finished_last_step: list = []
    for step in range(200):
        for req in finished_last_step:
            batch.remove(req)
        if batch.num_reqs and rng.random() < 0.15:  # preempt one: it comes back later with its output so far
            victim = rng.choice([r for r in batch.slots if r is not None])
            batch.remove(victim)
            waiting.appendleft(victim)
        while waiting and batch.num_reqs < capacity:
            batch.add(waiting.popleft())
        batch.condense()
        if batch.num_reqs >= 2 and rng.random() < 0.3:
            batch.swap(*rng.sample(range(batch.num_reqs), 2))
        ffs.update_state(batch.batch_update())
        if not batch.num_reqs:
            break
        logits = ffs.apply(torch.zeros(batch.num_reqs, VOCAB))
        finished_last_step = []
        for index, req in enumerate(batch.slots):
            forced = _check_row(
                logits[index], req, ref, marker_known, f"seed {seed} step {step} req {req.rid}"
            )
            ref.record(req, _sample(req, forced), forced is not None)
            if req.finished:
                finished_last_step.append(req)
        ref.end_step()
    assert all(r.finished for r in requests) and not waiting
    ffs.update_state(batch.batch_update())  # the last finishers leave
    assert component.core.num_members == 0 and not component.members_np.any()


def test_v1_adapter_untouched_without_ffs_requests(monkeypatch):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    ffs, component = _processor(monkeypatch, 4)
    params = SamplingParams(n=1, extra_args={"unrelated": 1})
    ffs.update_state(
        BatchUpdate(batch_size=2, removed=[], added=[(0, params, [1], []), (1, params, [2], [])], moved=[])
    )
    logits = torch.randn(2, VOCAB)
    assert ffs.apply(logits.clone()).equal(logits) and component.core.num_members == 0


# ----------------------------------------------------------------------------------------------------------------
# V2 adapter on simulated request slots
# ----------------------------------------------------------------------------------------------------------------


def _buffer(t: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(gpu=t, np=t.numpy())  # host view and "device" tensor share memory


class SimRequestStates:
    """The fields of vLLM's V2 LogitsProcRequestState the adapter reads, as plain CPU tensors (`.gpu` / `.np` like
    vLLM's buffers)."""

    def __init__(self, max_slots: int, max_len: int = 64):
        self.device = torch.device("cpu")
        self.max_num_reqs = max_slots
        self.vocab_size = VOCAB
        self.all_token_ids = _buffer(torch.zeros(max_slots, max_len, dtype=torch.int32))
        self.total_len = _buffer(torch.zeros(max_slots, dtype=torch.int32))
        self.prompt_len = _buffer(torch.zeros(max_slots, dtype=torch.int32))
        self.prefill_len = _buffer(torch.zeros(max_slots, dtype=torch.int32))

    def fill(self, slot: int, prompt: list[int], out: list[int]) -> None:
        tokens = prompt + out
        self.all_token_ids.gpu[slot, : len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
        self.total_len.gpu[slot] = len(tokens)
        self.prompt_len.gpu[slot] = len(prompt)
        self.prefill_len.gpu[slot] = len(tokens)

    def commit(self, slot: int, token: int) -> None:
        self.all_token_ids.gpu[slot, self.total_len.gpu[slot]] = token
        self.total_len.gpu[slot] += 1


@pytest.mark.parametrize("seed", range(10))
def test_v2_adapter_matches_the_rule_with_slot_reuse_preemption_and_async_lag(seed, monkeypatch):
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

    rng = random.Random(100 + seed)
    marker_known = seed % 3 != 0
    requests = make_requests(rng, num_parents=rng.randint(2, 6), marker_known=marker_known)
    for req in requests:  # V2 counts EOS and stop tokens on the device; stop strings are a V1 extra
        req.params.stop = None
    max_slots = 12
    states = SimRequestStates(max_slots)
    ffs, _ = _processor(monkeypatch, max_slots, req_states=states)
    async_lag = seed % 2 == 1  # a finished request stays scheduled one more step (async scheduling)
    ref = Reference()
    free = list(range(max_slots - 1, -1, -1))  # vLLM's free list: the last freed slot is reused first
    slot_of: dict = {}  # ScriptedRequest -> slot
    waiting = deque(requests)
    finished_prev: list = []  # finished in the previous step
    capacity = rng.randint(3, max_slots - 2)
    for step in range(200):
        # The scheduler lets finished requests go; under async scheduling they were scheduled once more first.
        leaving = [r for r in slot_of if r.finished and (not async_lag or r not in finished_prev)]
        for req in leaving:
            free.append(slot_of.pop(req))
        running = [r for r in slot_of if not r.finished]
        if running and rng.random() < 0.15:  # preempt: the slot is freed, the request comes back later
            victim = rng.choice(running)
            free.append(slot_of.pop(victim))
            waiting.appendleft(victim)
        while waiting and len(slot_of) < capacity:
            req = waiting.popleft()
            slot_of[req] = slot = free.pop()
            ffs.add_request(slot, req.params)  # before the runner flushes the new occupant's tokens
            states.fill(slot, req.prompt, req.out)
        ffs.apply_staged_writes()
        if not slot_of:
            break
        batch = list(slot_of.items())
        rng.shuffle(batch)  # rows are reordered every step
        slots = np.array([slot for _, slot in batch])
        ctx = LogitsContext(
            expanded_idx_mapping=torch.tensor(slots, dtype=torch.int32),
            idx_mapping=torch.tensor(slots, dtype=torch.int32),
            idx_mapping_np=slots,
            expanded_local_pos=torch.zeros(len(slots), dtype=torch.int32),
            input_ids=torch.zeros(len(slots), dtype=torch.int32),
            pos=torch.zeros(len(slots), dtype=torch.int32),
            seq_lens_upper_bound_np=np.zeros(len(slots), dtype=np.int32),
        )
        logits = ffs.apply(torch.zeros(len(batch), VOCAB), ctx)
        finished_prev = []
        for row, (req, slot) in enumerate(batch):
            if req.finished:  # scheduled once more under async scheduling: its sample is discarded
                assert async_lag
                continue
            forced = _check_row(logits[row], req, ref, marker_known, f"seed {seed} step {step} req {req.rid}")
            token = _sample(req, forced)
            ref.record(req, token, forced is not None)
            states.commit(slot, token)
            if req.finished:
                finished_prev.append(req)
        ref.end_step()
    assert all(r.finished for r in requests) and not waiting


def test_v2_apply_is_a_no_op_without_members_in_the_batch(monkeypatch):
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext

    states = SimRequestStates(4)
    ffs, _ = _processor(monkeypatch, 4, req_states=states)
    assert ffs.add_request(0, SamplingParams(n=1)) is False
    ffs.apply_staged_writes()
    slots = np.array([0])
    ctx = LogitsContext(
        expanded_idx_mapping=torch.tensor(slots),
        idx_mapping=torch.tensor(slots),
        idx_mapping_np=slots,
        expanded_local_pos=torch.zeros(1),
        input_ids=torch.zeros(1),
        pos=torch.zeros(1),
        seq_lens_upper_bound_np=np.zeros(1),
    )
    logits = torch.randn(1, VOCAB)
    assert ffs.apply(logits.clone(), ctx).equal(logits)


def test_both_runners_load_the_tts_processor_by_name_and_validate_ffs_through_it():
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.sample.logits_processor import (
        _load_logitsprocs_by_fqcns,
        validate_logits_processors_parameters,
    )
    from vllm.v1.worker.gpu.sample.logits_processor.loader import (
        _load_v2_logitsprocs_by_fqcns,
        build_custom_logits_processors_params_validator,
    )

    from vllm_ttsplugin import TTSLogitsProcessor

    # One class serves both runners (it implements both interfaces); FFS is composed into it.
    v1 = v2 = "vllm_ttsplugin:TTSLogitsProcessor"
    assert _load_logitsprocs_by_fqcns([v1]) == [TTSLogitsProcessor]
    assert _load_v2_logitsprocs_by_fqcns([v2]) == [TTSLogitsProcessor]
    for validate in (
        lambda p: validate_logits_processors_parameters([v1], p),
        build_custom_logits_processors_params_validator([v2]),
    ):
        params = SamplingParams(n=3, temperature=1.0, extra_args={"tts_first_finish": 2})
        validate(params)
        assert params.extra_args[RACE_SIZE_KEY] == 3
        with pytest.raises(VLLMValidationError, match="exceeds") as error:
            validate(SamplingParams(n=3, temperature=1.0, extra_args={"tts_first_finish": 4}))
        assert error.value.parameter == "tts_first_finish"  # passed through, parameter kept (HTTP 400)
        assert isinstance(error.value.__cause__, FirstFinishParamsError)


# ----------------------------------------------------------------------------------------------------------------
# Core and tensor ops
# ----------------------------------------------------------------------------------------------------------------


def test_core_races_outlive_their_members_until_all_n_left_and_the_table_is_bounded():
    core = FirstFinishCore(max_slots=4, max_races=3)
    assert core.add(0, "a", k=1, size=3) is False
    assert core.add(1, "a", k=2, size=3) is False
    core.remove(0, SlotOutcome.NATURAL)
    assert core.stopping_slots == set() and core.race_finished(1) == 1  # k=2 for slot 1
    core.remove(1, SlotOutcome.UNKNOWN)  # preempted
    assert core.add(1, "a", k=1, size=3) is True  # back, and the race already has its first finisher
    core.remove(1, SlotOutcome.STOPPED)
    assert core.num_races == 1  # 2 of 3 samples left for good: the third may still be waiting
    assert core.add(2, "a", k=1, size=3) is True
    core.remove(2, SlotOutcome.STOPPED)
    assert core.num_races == 0  # all three left
    for name in "bcd":
        core.add(0, name, k=1)
        core.remove(0, SlotOutcome.UNKNOWN)
    core.add(0, "e", k=1)  # table full (3): the oldest race without members goes
    assert core.num_races == 3 and sorted(core.recycled)


def test_force_tokens_sets_exactly_one_choice_per_row():
    logits = torch.randn(4, 6)
    before = logits.clone()
    force_tokens_(logits, torch.tensor([1, 3]), torch.tensor([5, 0]))
    assert logits[[0, 2]].equal(before[[0, 2]])
    assert logits[1].argmax() == 5 and logits[1, 5] == 0 and torch.isinf(logits[1, :5]).all()
    assert logits[3].argmax() == 0 and torch.isinf(logits[3, 1:]).all()


# ----------------------------------------------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------------------------------------------


def _completion(index, tokens, finish, stop_reason=None):
    from vllm.outputs import CompletionOutput

    return CompletionOutput(index, "", tokens, None, None, finish_reason=finish, stop_reason=stop_reason)


def test_winners_are_natural_finishers_in_finishing_order():
    output = SimpleNamespace(
        outputs=[
            _completion(0, [5, 5, 5, MARKER], "stop", MARKER),  # stopped by FFS: its stop token is the marker
            _completion(1, [5, 5, 1], "stop"),
            _completion(2, [5, 5, 9], "stop", 9),  # a stop token of the request is a natural finish
            _completion(3, [5, 5], "length"),
            _completion(4, [5, 1], "stop"),
            _completion(5, [5, 5, 7, 1], "stop", "t7"),  # a stop string too
        ]
    )
    for marker in (StubTokenizer(), MARKER):
        assert first_finish_marker(marker) == MARKER
        assert [c.index for c in first_finish_winners(output, marker=marker)] == [4, 1, 2, 5]
        assert [c.index for c in first_finish_winners(output, k=2, marker=marker)] == [4, 1]
        assert is_first_finish_stopped(output.outputs[0], marker) and not is_first_finish_stopped(
            output.outputs[2], marker
        )
    with pytest.raises(ValueError, match="marker"):  # a stop token, and nothing tells which one is the marker
        first_finish_winners(output)
    assert not is_first_finish_stopped(output.outputs[1]) and not is_first_finish_stopped(output.outputs[5])
    # Choices from a server with the ttsplugin middleware say it themselves (plain OpenAI JSON, no tokenizer).
    assert is_first_finish_stopped(
        {"finish_reason": "abort", "stop_reason": MARKER, "tts": {"first_finish": "stopped"}}
    )
    assert not is_first_finish_stopped(
        {"finish_reason": "stop", "stop_reason": None, "tts": {"first_finish": "winner"}}
    )
    assert not is_first_finish_stopped({"finish_reason": "length", "stop_reason": None})


# ----------------------------------------------------------------------------------------------------------------
# Answers and voting
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"The answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}} then \boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{ \{1, 2\} }", r"\{1, 2\}"),
        (r"\fbox{7} and \boxed {x^{2}}", "x^{2}"),
        (r"\boxed{$3$.}", "3"),
        (r"no box here", None),
        (r"\boxed{unclosed {", None),
        (r"\boxed{5} then \boxed{broken", "5"),
        (r"\boxed{}", None),
    ],
)
def test_extract_boxed(text, answer):
    assert extract_boxed(text) == answer


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("reasoning\nFinal Answer: 12\nmore text", "12"),
        ("final answer: maybe 3\nFinal Answer: The final answer is $4$.", "4"),
        (r"Final Answer: \boxed{x+1}", "x+1"),
        ("FINAL ANSWER:   B  ", "B"),
        ("Final Answer:", None),
        ("no answer", None),
    ],
)
def test_extract_final_answer(text, answer):
    assert extract_final_answer(text) == answer


def test_auto_extractor_majority_vote_and_extractor_lookup():
    assert extract_answer(r"Final Answer: 3 ... \boxed{4}") == "4"
    assert extract_answer("Final Answer: 3") == "3"
    assert normalize_answer("  $ 1  +  1 $. ") == "1 + 1"
    assert majority_vote(["2", None, "3", "3", "2"]) == "2"  # tie: the first seen (earliest finisher) wins
    assert majority_vote(["2", "3", "3"]) == "3"
    assert majority_vote([None, None]) is None
    assert get_extractor("boxed") is extract_boxed
    custom = str.strip
    assert get_extractor(custom) is custom
    for bad in ("nope", 3, None):
        with pytest.raises(ValueError, match="extractor"):
            get_extractor(bad)
