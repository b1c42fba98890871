"""First Finish Search inside vLLM: once k samples of a request finish naturally, their siblings are stopped.

Per request, through `SamplingParams.extra_args` (offline) or `vllm_xargs` (OpenAI server):

- ``tts_first_finish`` (int k >= 1): once k samples of the same request have finished *naturally* (EOS or one of
  the request's stop tokens; stop strings count too on the V1 runner; a length cut never counts), every other sample
  still running is stopped at its next decode step. Needs ``n > 1``, or a ``tts_group``.
- ``tts_group`` (str, optional): ties separate requests into one race (all their samples are siblings). Without it,
  the siblings are exactly the ``n`` samples of one request: for every prompt of ``LLM.generate(prompts,
  SamplingParams(n=8, extra_args={"tts_first_finish": 1}))`` and for an OpenAI request with ``n=8`` and
  ``vllm_xargs={"tts_first_finish": 1}``.

How the stopped samples look in the output: they end with ``finish_reason == "stop"`` and
``stop_reason == FFS_STOP_REASON`` (the one-character string ``"\\x18"``, ASCII CANCEL), which no natural finish
has; their text does not contain the marker. `first_finish_winners` returns the natural finishers of a
`RequestOutput` in finishing order.

What this module relies on in vLLM (0.32; read in its source, checked in tests/test_ffs_engine.py):

1. **Siblings.** For ``n > 1`` the engine fans a request out into n child requests whose `SamplingParams` are shallow
   copies with ``n = 1`` (and ``seed + i`` when seeded). A processor never sees request ids (V1 `BatchUpdate.added`
   gives index, params, prompt ids, live output ids; V2 `add_request` gives slot and params). Object identity of the
   shared ``extra_args`` dict would group children in-process, but not across the msgpack hop to a separate engine
   core process (the server). So `validate_first_finish_params`, which vLLM calls at admission on the *parent* params
   (``n`` still visible) right before cloning them for the request, stamps a fresh race id and ``n`` into a *new*
   ``extra_args`` dict. Each admission gets its own id even when one `SamplingParams` object serves many prompts; the
   children inherit it through the clone and it survives serialization. On V1 the prompt (length and ends) is part
   of the race key too, so two prompts can never share a race by accident.
2. **Natural finish.** The processor cannot see finish reasons, only tokens. The adapters observe every token each
   sample produced, including the one that finished it (V1: from its live output list right before it leaves the
   persistent batch, listed in ``removed`` or overwritten by an ``added`` or condensing ``moved`` entry; V2: from
   ``req_states.all_token_ids``, which keeps a slot's committed tokens until the slot is reused, for every member
   slot each step and right before a reuse). A member's token that is one of its stop tokens, and that FFS did not
   force, is a natural finish, counted on the device. A stop *string* ends a sample in the frontend; on V1 its
   output list then still holds the text, read when it leaves (`member_outcome`); V2 has no such hook.
3. **Stopping.** A logits processor stops a request by forcing a token: the row is filled with -inf and the token's
   logit set to 0. To make losers distinguishable, admission also appends ``FFS_STOP_REASON`` to the request's
   ``stop`` strings; the engine core forces the single token that decodes to it, the frontend's detokenizer then ends
   the sample with that stop reason (and aborts it in the engine core); if the sample is still scheduled one step
   later, EOS is forced. Members never sample the marker token naturally (it is masked for them). Where the
   tokenizer has no such single token (or ``detokenize=False``), EOS is forced directly and losers are not marked.

Serving: `vllm_ttsplugin.components.FirstFinishComponent` plugs this race core into
``vllm_ttsplugin:TTSLogitsProcessor`` through the same slot interface and adapter bookkeeping as thinking control
(both runners); natural finishes are counted on the device as the adapters observe each sample's tokens (stop
tokens), and on the V1 runner also when a sample leaves the batch on a stop string (`member_outcome`). FFS's stop
is applied last, so it overrides forced sequences, budgets and TS.

This module is framework-free (no vLLM import at run time).
"""

from __future__ import annotations

import math
import numbers
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vllm_ttsplugin.config import TTSParamsError

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.outputs import CompletionOutput, RequestOutput

FIRST_FINISH_KEY = "tts_first_finish"
GROUP_KEY = "tts_group"
# Stamped at admission (underscore: not a user knob; any value a client sends is overwritten).
RACE_ID_KEY = "_tts_ffs_race"
RACE_SIZE_KEY = "_tts_ffs_n"
# Stop reason of the samples FFS stopped: ASCII CANCEL, a single byte token in byte-level BPE vocabularies and a
# byte-fallback token in SentencePiece ones, which text generation does not use.
FFS_STOP_REASON = "\x18"
MAX_GROUP_NAME_LENGTH = 256

__all__ = [
    "FFS_STOP_REASON",
    "FIRST_FINISH_KEY",
    "GROUP_KEY",
    "FirstFinishCore",
    "FirstFinishMember",
    "FirstFinishParamsError",
    "FirstFinishRequest",
    "SlotOutcome",
    "first_finish_winners",
    "force_tokens_",
    "is_first_finish_stopped",
    "member_outcome",
    "parse_first_finish_args",
    "validate_first_finish_params",
]


# ----------------------------------------------------------------------------------------------------------------
# Per-request arguments: parsing, validation and the admission stamp
# ----------------------------------------------------------------------------------------------------------------


class FirstFinishParamsError(TTSParamsError):
    """A bad FFS argument, naming the parameter (``.parameter``).

    A `TTSParamsError` like every ttsplugin setting error: `TTSLogitsProcessor.validate_params` turns it into vLLM's
    `VLLMValidationError` with the same parameter (HTTP 400 on the server; the engine goes on serving)."""


@dataclass(frozen=True)
class FirstFinishRequest:
    """The FFS arguments of one request, as parsed from `extra_args`."""

    k: int
    group: str | None = None


def _error(parameter: str, message: str) -> FirstFinishParamsError:
    return FirstFinishParamsError(message, parameter=parameter)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def parse_first_finish_args(extra_args: dict[str, Any] | None) -> FirstFinishRequest | None:
    """Parse and check ``tts_first_finish`` / ``tts_group``; None when the request does not use FFS.

    Raises:
        FirstFinishParamsError: naming the parameter, for a non-integer or non-positive k, a
            group that is not a non-empty string, or a group without k.
    """
    if not extra_args or (FIRST_FINISH_KEY not in extra_args and GROUP_KEY not in extra_args):
        return None
    k = extra_args.get(FIRST_FINISH_KEY)
    group = extra_args.get(GROUP_KEY)
    if k is None:
        raise _error(
            GROUP_KEY, f"`{GROUP_KEY}` needs `{FIRST_FINISH_KEY}` (the number of samples that must finish)"
        )
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        if isinstance(k, float) and math.isnan(k):
            raise _error(FIRST_FINISH_KEY, f"`{FIRST_FINISH_KEY}` must be an integer >= 1, got NaN")
        raise _error(FIRST_FINISH_KEY, f"`{FIRST_FINISH_KEY}` must be an integer >= 1, got {_describe(k)}")
    if k < 1:
        raise _error(FIRST_FINISH_KEY, f"`{FIRST_FINISH_KEY}` must be an integer >= 1, got {int(k)}")
    if group is not None:
        if not isinstance(group, str):
            raise _error(GROUP_KEY, f"`{GROUP_KEY}` must be a string, got {_describe(group)}")
        if not group or len(group) > MAX_GROUP_NAME_LENGTH:
            raise _error(
                GROUP_KEY, f"`{GROUP_KEY}` must be 1 to {MAX_GROUP_NAME_LENGTH} characters, got {len(group)}"
            )
    return FirstFinishRequest(k=int(k), group=group)


def validate_first_finish_params(params: SamplingParams) -> None:
    """Check a request's FFS arguments at admission and stamp its race; the hook for ``validate_params``.

    vLLM calls it with the request's own (parent) params, ``n`` included, right before it clones them for the
    engine. Requests without ``tts_*`` keys are left untouched. For FFS requests the params get a new
    ``extra_args`` dict carrying a fresh race id and ``n`` (the children only see ``n == 1``), and
    `FFS_STOP_REASON` is appended to ``stop`` so that stopped samples are marked (see the module docstring).

    Raises:
        FirstFinishParamsError: naming the parameter; HTTP 400 on the server.
    """
    spec = parse_first_finish_args(params.extra_args)
    if spec is None:
        return
    n = params.n
    if spec.group is None:
        if n < 2:
            raise _error(
                FIRST_FINISH_KEY,
                f"`{FIRST_FINISH_KEY}` needs n > 1 samples to race (got n={n}); "
                f"or tie separate requests together with `{GROUP_KEY}`",
            )
        if spec.k > n:
            raise _error(
                FIRST_FINISH_KEY, f"`{FIRST_FINISH_KEY}`={spec.k} exceeds the n={n} samples of the request"
            )
    if params.ignore_eos and not params.stop_token_ids:
        raise _error(
            FIRST_FINISH_KEY,
            f"`{FIRST_FINISH_KEY}` with ignore_eos=True and no stop_token_ids: no sample can finish naturally",
        )
    # A new dict per admission: the caller's dict (maybe shared by other requests) is never modified, and each
    # prompt of one LLM.generate call, validated in turn with the same params object, gets its own race.
    params.extra_args = {**params.extra_args, RACE_ID_KEY: uuid.uuid4().hex, RACE_SIZE_KEY: int(n)}
    if params.detokenize:
        stop = [params.stop] if isinstance(params.stop, str) else list(params.stop or ())
        if FFS_STOP_REASON not in stop:
            params.stop = [*stop, FFS_STOP_REASON]


def _race_key(
    extra_args: dict[str, Any], spec: FirstFinishRequest, prompt_ids: Sequence[int] | None
) -> Hashable:
    if spec.group is not None:
        return ("group", spec.group)
    race = extra_args.get(RACE_ID_KEY)
    if race is None:
        # Not stamped (params never went through validate_params): in-process children still share the dict.
        race = ("dict", id(extra_args))
    if prompt_ids is None:
        return ("race", race)
    return ("race", race, len(prompt_ids), tuple(prompt_ids[:16]), tuple(prompt_ids[-16:]))


# ----------------------------------------------------------------------------------------------------------------
# Framework-free core: race membership over request slots
# ----------------------------------------------------------------------------------------------------------------


class SlotOutcome(IntEnum):
    """Why a member left its slot."""

    UNKNOWN = 0  # preempted or aborted: may come back, does not count
    NATURAL = 1  # ended by EOS / a stop token / a stop string
    LENGTH = 2  # max_tokens or max_model_len
    STOPPED = 3  # stopped by FFS


@dataclass(eq=False)
class _Race:
    key: Hashable
    index: int  # dense index (device count tensors are indexed by it)
    size: int | None  # number of samples when known (one request); None for a tts_group
    finished: int = 0  # natural finishes so far
    done: int = 0  # members that left for good
    slots: set[int] = field(default_factory=set)


class FirstFinishCore:
    """Race bookkeeping over request slots (batch indices on V1, persistent slots on V2); no engine types.

    Slot arrays are preallocated (``max_slots``); races live in an LRU table so that samples admitted late (KV cache
    pressure, preemption) still find the race they belong to after it was decided. A race is forgotten when all its
    ``n`` samples have left for good, or, as the oldest race without members, when the table is full.

    Hooks: `add`, `remove` (with the `SlotOutcome`), `move`; `stopping_slots` are the members to stop now.
    """

    def __init__(self, max_slots: int, max_races: int | None = None):
        self.max_slots = max_slots
        self.max_races = max_races or max(4 * max_slots, 1024)
        # [max_slots] slot -> race index, -1 when the slot holds no FFS member
        self.race_index = np.full(max_slots, -1, dtype=np.int64)
        # [max_slots] natural finishes of the race that stop this member
        self.k = np.zeros(max_slots, dtype=np.int64)
        # [max_slots] the member is being stopped
        self.stopping = np.zeros(max_slots, dtype=bool)
        # [max_slots] adapter data moved along with the slot (e.g. the live output list)
        self.payload: list[Any] = [None] * max_slots
        self.num_members = 0
        self.stopping_slots: set[int] = set()
        # Race indices handed out again since the last drain (device adapters zero their counters).
        self.recycled: list[int] = []
        self._races: OrderedDict[Hashable, _Race] = OrderedDict()
        self._race_of_index: list[_Race | None] = [None] * self.max_races
        self._free_indices = list(range(self.max_races - 1, -1, -1))
        self._ever_used = np.zeros(self.max_races, dtype=bool)

    # -- races -------------------------------------------------------------------------------------------------
    def _race(self, key: Hashable, size: int | None) -> _Race:
        race = self._races.get(key)
        if race is not None:
            self._races.move_to_end(key)
            return race
        if not self._free_indices:
            self._evict_one()
        index = self._free_indices.pop()
        if self._ever_used[index]:
            self.recycled.append(index)
        self._ever_used[index] = True
        race = _Race(key=key, index=index, size=size)
        self._races[key] = race
        self._race_of_index[index] = race
        return race

    def _evict_one(self) -> None:
        for race in self._races.values():
            if not race.slots:
                self._drop(race)
                return
        raise RuntimeError("FFS race table full of races with live members (max_races < max_slots?)")

    def _drop(self, race: _Race) -> None:
        del self._races[race.key]
        self._race_of_index[race.index] = None
        self._free_indices.append(race.index)

    @property
    def num_races(self) -> int:
        return len(self._races)

    def race_finished(self, slot: int) -> int:
        """Natural finishes so far in the race of the member in `slot`."""
        race = self._race_of_index[self.race_index[slot]]
        return race.finished if race is not None else 0

    # -- slot hooks --------------------------------------------------------------------------------------------
    def add(self, slot: int, key: Hashable, k: int, size: int | None = None, payload: Any = None) -> bool:
        """Make `slot` a member of race `key` (the slot must be free); returns whether it must stop at once."""
        race = self._race(key, size)
        race.slots.add(slot)
        self.race_index[slot] = race.index
        self.k[slot] = k
        self.payload[slot] = payload
        self.num_members += 1
        stop = race.finished >= k
        self.stopping[slot] = stop
        if stop:
            self.stopping_slots.add(slot)
        return stop

    def remove(self, slot: int, outcome: SlotOutcome) -> None:
        """The member in `slot` left; a natural finish may stop its siblings. Free slots are ignored."""
        index = self.race_index[slot]
        if index < 0:
            return
        race = self._race_of_index[index]
        self._clear(slot)
        if race is None:
            return
        race.slots.discard(slot)
        if outcome != SlotOutcome.UNKNOWN:
            race.done += 1
        if outcome == SlotOutcome.NATURAL:
            race.finished += 1
            for other in race.slots:
                if not self.stopping[other] and race.finished >= self.k[other]:
                    self.stopping[other] = True
                    self.stopping_slots.add(other)
        if race.size is not None and race.done >= race.size and not race.slots:
            self._drop(race)

    def move(self, src: int, dst: int, swap: bool) -> None:
        """Move slot `src` to `dst` (`dst` must be free unless `swap`), or swap them."""
        races = {self._race_of_index[self.race_index[i]] for i in (src, dst) if self.race_index[i] >= 0}
        for race in races:
            if race is not None:
                race.slots = {dst if s == src else src if (swap and s == dst) else s for s in race.slots}
        for arr in (self.race_index, self.k, self.stopping):
            if swap:
                arr[src], arr[dst] = arr[dst], arr[src]
            else:
                arr[dst] = arr[src]
        if swap:
            self.payload[src], self.payload[dst] = self.payload[dst], self.payload[src]
        else:
            self.payload[dst] = self.payload[src]
            self.race_index[src] = -1
            self.stopping[src] = False
            self.payload[src] = None
        self.stopping_slots = {
            dst if s == src else src if (swap and s == dst) else s for s in self.stopping_slots
        }

    def permute(self, source: np.ndarray) -> None:
        """Rearrange slots: slot i takes what slot `source[i]` held (`-1`: empties slot i)."""
        source = np.asarray(source, dtype=np.int64)
        keep = source >= 0
        src = np.where(keep, source, np.arange(self.max_slots))
        leaving = np.setdiff1d(np.flatnonzero(self.race_index >= 0), src[keep])
        for slot in leaving.tolist():  # members whose slot is overwritten without a successor
            self.remove(int(slot), SlotOutcome.UNKNOWN)
        self.race_index = np.where(keep, self.race_index[src], -1)
        self.k = np.where(keep, self.k[src], 0)
        self.stopping = np.where(keep, self.stopping[src], False)
        self.payload = [self.payload[src[i]] if keep[i] else None for i in range(self.max_slots)]
        for race in self._races.values():
            race.slots = set()
        for slot in np.flatnonzero(self.race_index >= 0).tolist():
            race = self._race_of_index[self.race_index[slot]]
            if race is not None:
                race.slots.add(slot)
        self.stopping_slots = set(np.flatnonzero(self.stopping).tolist())
        self.num_members = int((self.race_index >= 0).sum())

    def _clear(self, slot: int) -> None:
        self.race_index[slot] = -1
        self.k[slot] = 0
        self.stopping[slot] = False
        self.payload[slot] = None
        self.stopping_slots.discard(slot)
        self.num_members -= 1

    def member_slots(self) -> np.ndarray:
        return np.flatnonzero(self.race_index >= 0)


def force_tokens_(logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Make `tokens[i]` the only choice of row `rows[i]` (-inf elsewhere, 0 on it), in place."""
    logits.index_fill_(0, rows, float("-inf"))
    logits.index_put_((rows, tokens), torch.zeros((), dtype=logits.dtype, device=logits.device))
    return logits


def force_tokens_where_(logits: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Force `tokens[r]` on the rows where `mask[r]`; other rows keep their logits. No host sync."""
    column = tokens.unsqueeze(1)
    kept = logits.gather(1, column)
    logits.masked_fill_(mask.unsqueeze(1), float("-inf"))
    logits.scatter_(1, column, torch.where(mask.unsqueeze(1), torch.zeros_like(kept), kept))
    return logits


# ----------------------------------------------------------------------------------------------------------------
# Engine-side helpers shared by both runners
# ----------------------------------------------------------------------------------------------------------------


def find_marker_token(tokenizer, vocab_size: int | None = None) -> int | None:
    """The single token that decodes to `FFS_STOP_REASON`, or None when the tokenizer has none."""
    if tokenizer is None:
        return None
    try:
        ids = tokenizer.encode(FFS_STOP_REASON, add_special_tokens=False)
        for token in ids:
            if (vocab_size is None or token < vocab_size) and tokenizer.decode([token]) == FFS_STOP_REASON:
                return int(token)
    except Exception:
        return None
    return None


def _stop_token_ids(params: SamplingParams) -> tuple[int, ...]:
    ids = [] if params.eos_token_id is None else [params.eos_token_id]
    ids += [t for t in params.stop_token_ids or () if t not in ids]
    return tuple(int(t) for t in ids)


def _user_stop_strings(params: SamplingParams) -> tuple[str, ...]:
    stop = [params.stop] if isinstance(params.stop, str) else params.stop or ()
    return tuple(s for s in stop if s != FFS_STOP_REASON)


def _marked(params: SamplingParams, marker: int | None) -> bool:
    stop = [params.stop] if isinstance(params.stop, str) else params.stop or ()
    return marker is not None and FFS_STOP_REASON in stop


# ----------------------------------------------------------------------------------------------------------------
# One member as the engine sees it, and how it left its slot
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FirstFinishMember:
    """One sample's FFS facts, parsed engine-side from its params (`FirstFinishComponent.parse_engine`)."""

    spec: FirstFinishRequest
    extra_args: dict[str, Any]
    size: int | None  # samples of the request (n) when known; None for a tts_group
    stop_ids: tuple[int, ...]  # tokens that end the sample naturally (EOS unless ignore_eos, stop_token_ids)
    stop_token: int  # forced to end the sample: EOS, else the first stop token
    marked: bool  # losers get the marker token first
    max_tokens: int | None
    stop_strings: tuple[str, ...]
    skip_special_tokens: bool
    prompt_len: int = 0
    key: Hashable | None = None  # its race, fixed at first admission (a resumed sample rejoins it)

    @classmethod
    def from_params(cls, params: SamplingParams, marker: int | None) -> FirstFinishMember | None:
        spec = parse_first_finish_args(params.extra_args)
        if spec is None:
            return None
        stop_ids = _stop_token_ids(params)
        marked = _marked(params, marker)
        if not stop_ids and not marked:
            return None  # nothing can end this sample; validate_params rejects this case at admission
        return cls(
            spec=spec,
            extra_args=params.extra_args,
            size=params.extra_args.get(RACE_SIZE_KEY) if spec.group is None else None,
            stop_ids=stop_ids,
            stop_token=stop_ids[0] if stop_ids else -1,
            marked=marked,
            max_tokens=params.max_tokens,
            stop_strings=_user_stop_strings(params),
            skip_special_tokens=params.skip_special_tokens,
        )

    def race_key(self, prompt_ids: Sequence[int] | None) -> Hashable:
        return _race_key(self.extra_args, self.spec, prompt_ids)


def member_outcome(
    member: FirstFinishMember,
    output_ids: list[int],
    marker: int | None,
    tokenizer: Any = None,
    max_model_len: int | None = None,
) -> SlotOutcome:
    """Why a member left its slot, read from its (V1, live) output list when it leaves the batch.

    Its list still ends with the token that ended it: a stop token (natural), our marker (stopped), a stop
    string in its text (natural: the frontend ended it and aborted it in the engine core), ``max_tokens`` or the
    context length reached (length), or anything else (preempted or aborted: it may come back; not counted).
    """
    last = _last_real_token(output_ids)
    if last is None:
        return SlotOutcome.UNKNOWN
    if last in member.stop_ids:
        return SlotOutcome.NATURAL
    if marker is not None and last == marker and member.marked:
        return SlotOutcome.STOPPED
    if (
        member.stop_strings
        and tokenizer is not None
        and _ends_with_stop_string(member, output_ids, tokenizer)
    ):
        return SlotOutcome.NATURAL
    num_tokens = len(output_ids) - _num_placeholders(output_ids)
    if (member.max_tokens is not None and num_tokens >= member.max_tokens) or (
        max_model_len is not None and member.prompt_len + num_tokens >= max_model_len
    ):
        return SlotOutcome.LENGTH
    return SlotOutcome.UNKNOWN


def _ends_with_stop_string(member: FirstFinishMember, output_ids: list[int], tokenizer: Any) -> bool:
    # A sample the frontend ended on a stop string was aborted in the engine core; its text holds the string
    # (possibly followed by the few tokens generated before the abort arrived).
    ids = [t for t in output_ids if t >= 0]
    try:
        text = tokenizer.decode(ids, skip_special_tokens=member.skip_special_tokens)
    except Exception:
        return False
    return any(s in text for s in member.stop_strings)


def _num_placeholders(tokens: list[int]) -> int:
    count = 0
    while count < len(tokens) and tokens[-1 - count] < 0:  # async scheduling's not-yet-known tokens are -1
        count += 1
    return count


def _last_real_token(tokens: list[int]) -> int | None:
    for token in reversed(tokens):
        if token >= 0:
            return token
    return None


# ----------------------------------------------------------------------------------------------------------------
# Reading the output
# ----------------------------------------------------------------------------------------------------------------


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def is_first_finish_stopped(completion: Any) -> bool:
    """Whether FFS stopped this sample (a `CompletionOutput`, or an OpenAI choice object / dict)."""
    return (
        _field(completion, "finish_reason") == "stop" and _field(completion, "stop_reason") == FFS_STOP_REASON
    )


def is_natural_finish(completion: Any) -> bool:
    """Whether the sample ended by itself (EOS, stop token or stop string), i.e. not cut, aborted or stopped."""
    return _field(completion, "finish_reason") == "stop" and not is_first_finish_stopped(completion)


def first_finish_winners(output: RequestOutput, k: int | None = None) -> list[CompletionOutput]:
    """The natural finishers of an in-engine FFS request, in finishing order (at most `k` when given).

    Within one request all samples start together, so finishing order is length order; samples of equal length
    finished in the same step and are ordered by index. Samples FFS stopped (`is_first_finish_stopped`) and length
    cuts are never winners. Several samples finishing in the step that decides the race are all natural finishers;
    pass `k` to keep the first k.
    """
    natural = [c for c in output.outputs if is_natural_finish(c)]
    natural.sort(key=lambda c: (len(c.token_ids), c.index))
    return natural if k is None else natural[:k]
