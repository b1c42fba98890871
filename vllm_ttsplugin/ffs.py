"""First Finish Search inside vLLM: once k samples of a request finish naturally, their siblings are stopped.

Per request, through `SamplingParams.extra_args` (offline) or `vllm_xargs` (OpenAI server):

- ``tts_first_finish`` (int k >= 1): once k samples of the same race have finished *naturally* (EOS or one of
  the request's stop tokens; stop strings count too on the V1 runner; a length cut never counts), every other sample
  still running is stopped at its next decode step. Needs ``n > 1``, or a ``tts_group``.
- ``tts_group`` (str, optional): ties several requests of one *admission scope* into one race (all their samples
  are siblings). A scope is one HTTP request on a server run with `vllm_ttsplugin.serving.TTSMiddleware`, or a
  ``with first_finish_scope():`` block offline; a group outside any scope is rejected. Without a group, the
  siblings are exactly the ``n`` samples of one request (each prompt of ``LLM.generate`` its own race).

Isolation: no request can join or stop a race it did not create. Race ids are minted at admission (a fresh
random id per request, or per group name and scope), never taken from the client, and the engine matches members
by that id only; a group name means nothing outside the scope that admitted it, so two clients (or two calls)
using the same name never meet, and a name reused later starts a new race.

How the stopped samples look in the output: they end with ``finish_reason == "stop"`` and ``stop_reason`` equal to
the *marker token*, the model's single token for ``FFS_MARKER_TEXT`` (``"\\x18"``, ASCII CANCEL), which members
can never sample themselves; their text does not contain it. `first_finish_winners` / `is_first_finish_stopped`
tell them apart given the LLM or its tokenizer (`first_finish_marker`). On the OpenAI server,
`vllm_ttsplugin.serving.TTSMiddleware` turns this into plain-client fields (winners first, losers
``finish_reason="abort"``).

What this module relies on in vLLM (0.32; read in its source, checked in tests/test_ffs_engine.py):

1. **Siblings.** For ``n > 1`` the engine fans a request out into n child requests whose `SamplingParams` are shallow
   copies with ``n = 1`` (and ``seed + i`` when seeded). A processor never sees request ids (V1 `BatchUpdate.added`
   gives index, params, prompt ids, live output ids; V2 `add_request` gives slot and params). Object identity of the
   shared ``extra_args`` dict would group children in-process, but not across the msgpack hop to a separate engine
   core process (the server). So `validate_first_finish_params`, which vLLM calls at admission on the *parent* params
   (``n`` still visible) right before cloning them for the request, stamps the race id, ``n`` and the marker token
   into a *new* ``extra_args`` dict. The children inherit it through the clone and it survives serialization. On V1
   the prompt (length and ends) is part of the key of an ``n``-race too.
2. **Natural finish.** The processor cannot see finish reasons, only tokens. The adapters observe every token each
   sample produced, including the one that finished it (V1: from its live output list right before it leaves the
   persistent batch, listed in ``removed`` or overwritten by an ``added`` or condensing ``moved`` entry; V2: from
   ``req_states.all_token_ids``, which keeps a slot's committed tokens until the slot is reused, for every member
   slot each step and right before a reuse). A member's token that is one of its own stop tokens (not the marker),
   and that FFS did not force, is a natural finish, counted on the device. A stop *string* ends a sample in the
   frontend; on V1 its output list then still holds the text, read when it leaves (`member_outcome`): a natural
   finish only if the string ends in the text after the first ``min_tokens`` tokens, exactly where vLLM's
   detokenizer looks. V2 has no such hook.
3. **Stopping.** A logits processor stops a request by forcing a token: the row is filled with -inf and the token's
   logit set to 0. Admission appends the marker token to the request's ``stop_token_ids``, so the engine core's
   stop check ends a loser on the very step it is forced (stop tokens are checked before ``min_tokens`` and need no
   detokenization), with the marker as its ``stop_reason``. Members never sample the marker naturally (it is masked
   for them). Where the tokenizer has no single token for the marker, the stop token (EOS) is forced and losers are
   not marked.

Serving: `vllm_ttsplugin.components.FirstFinishComponent` plugs this race core into
``vllm_ttsplugin:TTSLogitsProcessor`` through the same slot interface and adapter bookkeeping as thinking control
(both runners). FFS's stop is applied last, so it overrides forced sequences, budgets and TS.

This module is framework-free (no vLLM import at run time).
"""

from __future__ import annotations

import math
import numbers
import threading
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
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
# Stamped at admission (underscore: not a user knob; any value a client sends is overwritten or removed).
RACE_ID_KEY = "_tts_ffs_race"
RACE_SIZE_KEY = "_tts_ffs_n"
MARKER_KEY = "_tts_ffs_marker"
STAMPED_KEYS = (RACE_ID_KEY, RACE_SIZE_KEY, MARKER_KEY)
# Text of the marker token that ends the samples FFS stopped: ASCII CANCEL, a single byte token in byte-level BPE
# vocabularies and a byte-fallback token in SentencePiece ones, which text generation does not use.
FFS_MARKER_TEXT = "\x18"
MAX_GROUP_NAME_LENGTH = 256

__all__ = [
    "FFS_MARKER_TEXT",
    "FIRST_FINISH_KEY",
    "GROUP_KEY",
    "FirstFinishCore",
    "FirstFinishMember",
    "FirstFinishParamsError",
    "FirstFinishRequest",
    "SlotOutcome",
    "find_marker_token",
    "first_finish_marker",
    "first_finish_scope",
    "first_finish_winners",
    "force_tokens_",
    "is_first_finish_stopped",
    "member_outcome",
    "parse_first_finish_args",
    "stamp_stop_marker",
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


class _Scope:
    """One admission scope: group name -> race id, minted here (the only way two requests share a race)."""

    def __init__(self) -> None:
        self._races: dict[str, str] = {}
        self._ranks: dict[str, int] = {}
        self._lock = threading.Lock()

    def race_id(self, group: str) -> str:
        with self._lock:
            return self._races.setdefault(group, uuid.uuid4().hex)

    def pin_rank(self, group: str, rank: int) -> int:
        """The data-parallel engine of the group's first request (all its requests must run there)."""
        with self._lock:
            return self._ranks.setdefault(group, rank)


_SCOPE: ContextVar[_Scope | None] = ContextVar("ttsplugin_ffs_scope", default=None)


@contextmanager
def first_finish_scope() -> Iterator[None]:
    """An admission scope: requests admitted inside it with the same ``tts_group`` race together.

    The race ids are minted inside the scope, so nothing admitted outside it (another call, another client) can
    join or stop these races, and a group name reused in a later scope starts a new race. Admission happens when
    vLLM validates a request: inside `LLM.generate` / `LLMEngine.add_request`, or when an `AsyncLLM.generate`
    generator is first advanced (asyncio tasks created inside the block inherit the scope).
    `vllm_ttsplugin.serving.TTSMiddleware` opens one scope per HTTP request.

    Example::

        with first_finish_scope():
            outputs = llm.generate([prompt, prompt], [params_t06, params_t10])  # both carry tts_group="g"
    """
    token = _SCOPE.set(_Scope())
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _admission_context() -> Any:
    """The frontend engine being admitted to (tokenizer, data-parallel routing): `processor.AdmissionContext`."""
    from vllm_ttsplugin.processor import admission_context  # processor imports us

    return admission_context()


def _admission_marker(context: Any) -> int | None:
    """The marker token of the model being admitted to (None without a tokenizer or a single marker token)."""
    vocab = context.vocab
    tokenizer = getattr(vocab, "tokenizer", None)
    if tokenizer is None:
        return None
    return _cached_marker(tokenizer, getattr(vocab, "vocab_size", None))


def _check_data_parallel(spec: FirstFinishRequest, context: Any, scope: _Scope | None) -> None:
    """A race runs in one engine core: its samples must not be spread over data-parallel engines.

    vLLM 0.32's load-balancing client sends each of the n samples of a request to the least loaded engine, where
    the race could not see its siblings (it would stop fewer samples than asked, and k would count per engine). A
    request sent to one engine explicitly keeps all its samples there (they copy its `data_parallel_rank`);
    `TTSMiddleware` does that for every FFS request. Anything else is refused here, before any sample starts.
    """
    if context.engines <= 1:
        return
    if context.data_parallel_rank is None:
        raise _error(
            GROUP_KEY if spec.group is not None else FIRST_FINISH_KEY,
            f"First Finish Search under data parallelism ({context.engines} engines) needs all samples of a race in "
            "one engine, and vLLM would spread them: send the request to one engine (the OpenAI server with "
            "`--middleware vllm_ttsplugin.serving.TTSMiddleware` does so; or the `X-data-parallel-rank` header; "
            "or `AsyncLLM.generate(..., data_parallel_rank=r)`), or race over the engine with "
            "`vllm_ttsplugin.first_finish_async`",
        )
    if spec.group is not None and scope is not None:
        pinned = scope.pin_rank(spec.group, context.data_parallel_rank)
        if pinned != context.data_parallel_rank:
            raise _error(
                GROUP_KEY,
                f"the requests of `{GROUP_KEY}` {spec.group!r} were sent to different data-parallel engines "
                f"({pinned} and {context.data_parallel_rank}); a race runs in one engine: send them to the same one",
            )


_MARKERS: OrderedDict[int, tuple[Any, int | None, int | None]] = OrderedDict()
_MARKERS_LOCK = threading.Lock()


def _cached_marker(tokenizer: Any, vocab_size: int | None) -> int | None:
    key = id(tokenizer)
    with _MARKERS_LOCK:
        hit = _MARKERS.get(key)
        if hit is not None and hit[0] is tokenizer and hit[1] == vocab_size:
            return hit[2]
    marker = find_marker_token(tokenizer, vocab_size)
    with _MARKERS_LOCK:
        _MARKERS[key] = (tokenizer, vocab_size, marker)
        while len(_MARKERS) > 16:
            _MARKERS.popitem(last=False)
    return marker


def validate_first_finish_params(params: SamplingParams) -> None:
    """Check a request's FFS arguments at admission and stamp its race; the hook for ``validate_params``.

    vLLM calls it with the request's own (parent) params, ``n`` included, right before it clones them for the
    engine. Requests without ``tts_*`` keys are left untouched. For FFS requests the params get a new
    ``extra_args`` dict carrying the race id (fresh per admission; per group name within an admission scope), ``n``
    and the marker token, and the marker token is appended to ``stop_token_ids`` so that stopped samples end at
    once, marked (see the module docstring).

    Raises:
        FirstFinishParamsError: naming the parameter; HTTP 400 on the server.
    """
    spec = parse_first_finish_args(params.extra_args)
    if spec is None:
        return
    context = _admission_context()
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
        race = uuid.uuid4().hex
        scope = None
    else:
        scope = _SCOPE.get()
        if scope is None:
            raise _error(
                GROUP_KEY,
                f"`{GROUP_KEY}` ties requests only within one admission scope, so that no other client's "
                "request can join the race: one HTTP request on a server run with `--middleware "
                "vllm_ttsplugin.serving.TTSMiddleware`, or a `with vllm_ttsplugin.first_finish_scope():` block "
                "offline; this request was admitted outside any scope",
            )
        race = scope.race_id(spec.group)
    if params.ignore_eos and not params.stop_token_ids:
        raise _error(
            FIRST_FINISH_KEY,
            f"`{FIRST_FINISH_KEY}` with ignore_eos=True and no stop_token_ids: no sample can finish naturally",
        )
    _check_data_parallel(spec, context, scope)
    # A new dict per admission: the caller's dict (maybe shared by other requests) is never modified, and each
    # prompt of one LLM.generate call, validated in turn with the same params object, gets its own race.
    extra_args = {k: v for k, v in params.extra_args.items() if k not in STAMPED_KEYS}
    extra_args.update({RACE_ID_KEY: race, RACE_SIZE_KEY: int(n)})
    params.extra_args = extra_args
    stamp_stop_marker(params, context)


def stamp_stop_marker(params: SamplingParams, context: Any = None) -> int | None:
    """Make the marker token a stop token of `params` and record it in ``extra_args`` (a new dict); returns it.

    The admission step of every control that stops samples in-engine (First Finish, the confidence stop): the
    processor forces the marker on a sample it stops, and the engine core ends the sample there. None when the
    model has no single marker token (nothing stamped).
    """
    # A new dict (the caller's may be shared); a marker a client sent is never taken over.
    extra_args = {k: v for k, v in (params.extra_args or {}).items() if k != MARKER_KEY}
    params.extra_args = extra_args
    marker = _admission_marker(context if context is not None else _admission_context())
    if marker is None:
        return None
    extra_args[MARKER_KEY] = marker
    stop_token_ids = list(params.stop_token_ids or ())
    if marker not in stop_token_ids:
        params.stop_token_ids = [*stop_token_ids, marker]
        params.all_stop_token_ids.add(marker)  # vLLM's min_tokens mask reads this set
    return marker


def _race_key(
    extra_args: dict[str, Any], spec: FirstFinishRequest, prompt_ids: Sequence[int] | None
) -> Hashable:
    race = extra_args.get(RACE_ID_KEY)
    if not isinstance(race, str):
        # Not stamped (the params never went through validate_params, e.g. a direct engine-core caller):
        # in-process children still share the dict. A group name alone never keys a race.
        return ("dict", id(extra_args))
    if spec.group is not None or prompt_ids is None:
        return ("race", race)
    return ("race", race, len(prompt_ids), tuple(prompt_ids[:16]), tuple(prompt_ids[-16:]))


def _race_size(extra_args: dict[str, Any], spec: FirstFinishRequest) -> int | None:
    """Samples in the race when known (one request's n); None for a group (its requests arrive one by one)."""
    size = extra_args.get(RACE_SIZE_KEY)
    if spec.group is not None or isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return None
    return size


def stamped_marker(params: SamplingParams, vocab_size: int | None) -> int | None:
    """The marker token admission stamped (and appended to ``stop_token_ids``), if any."""
    marker = (params.extra_args or {}).get(MARKER_KEY)
    if isinstance(marker, bool) or not isinstance(marker, int) or marker < 0:
        return None
    if vocab_size is not None and marker >= vocab_size:
        return None
    return marker if marker in (params.stop_token_ids or ()) else None


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
    """The single token that decodes to `FFS_MARKER_TEXT`, or None when the tokenizer has none."""
    if tokenizer is None:
        return None
    try:
        ids = tokenizer.encode(FFS_MARKER_TEXT, add_special_tokens=False)
        for token in ids:
            if (vocab_size is None or token < vocab_size) and tokenizer.decode([token]) == FFS_MARKER_TEXT:
                return int(token)
    except Exception:
        return None
    return None


def _natural_stop_ids(params: SamplingParams, marker: int | None) -> tuple[int, ...]:
    """EOS and the request's own stop tokens (the marker, which admission added, is not a natural finish)."""
    ids = [] if params.eos_token_id is None else [params.eos_token_id]
    ids += [t for t in params.stop_token_ids or () if t not in ids and t != marker]
    return tuple(int(t) for t in ids)


def _user_stop_strings(params: SamplingParams) -> tuple[str, ...]:
    stop = [params.stop] if isinstance(params.stop, str) else params.stop or ()
    return tuple(stop)


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
    stop_token: int  # forced to end an unmarked sample: EOS, else the first stop token (-1: none)
    marker: int | None  # marker token stamped at admission (a stop token of the request); None: unmarked
    max_tokens: int | None
    min_tokens: int  # vLLM checks stop strings only in the text after the first min_tokens tokens
    stop_strings: tuple[str, ...]
    skip_special_tokens: bool
    prompt_len: int = 0
    key: Hashable | None = None  # its race, fixed at first admission (a resumed sample rejoins it)

    @classmethod
    def from_params(cls, params: SamplingParams, vocab_size: int | None = None) -> FirstFinishMember | None:
        spec = parse_first_finish_args(params.extra_args)
        if spec is None:
            return None
        marker = stamped_marker(params, vocab_size)
        stop_ids = _natural_stop_ids(params, marker)
        if not stop_ids and marker is None:
            return None  # nothing can end this sample; validate_params rejects this case at admission
        return cls(
            spec=spec,
            extra_args=params.extra_args,
            size=_race_size(params.extra_args, spec),
            stop_ids=stop_ids,
            stop_token=stop_ids[0] if stop_ids else -1,
            marker=marker,
            max_tokens=params.max_tokens,
            min_tokens=int(getattr(params, "min_tokens", 0) or 0),
            stop_strings=_user_stop_strings(params),
            skip_special_tokens=params.skip_special_tokens,
        )

    def race_key(self, prompt_ids: Sequence[int] | None) -> Hashable:
        return _race_key(self.extra_args, self.spec, prompt_ids)


def member_outcome(
    member: FirstFinishMember,
    output_ids: list[int],
    tokenizer: Any = None,
    max_model_len: int | None = None,
) -> SlotOutcome:
    """Why a member left its slot, read from its (V1, live) output list when it leaves the batch.

    Its list still ends with the token that ended it: a stop token (natural), our marker (stopped), a stop
    string in its text after the first ``min_tokens`` tokens (natural: the frontend ended it and aborted it in the
    engine core), ``max_tokens`` or the context length reached (length), or anything else (preempted or aborted:
    it may come back; not counted).
    """
    last = _last_real_token(output_ids)
    if last is None:
        return SlotOutcome.UNKNOWN
    if last in member.stop_ids:
        return SlotOutcome.NATURAL
    if member.marker is not None and last == member.marker:
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
    # (possibly followed by the few tokens generated before the abort arrived). vLLM's detokenizer looks for
    # stop strings only once more than min_tokens tokens exist, and only for matches ending in the text after
    # the first min_tokens tokens: a string there is a natural finish, one before it is not (e.g. a sample cut
    # by max_tokens == min_tokens whose text contains a stop string is a length cut).
    ids = [t for t in output_ids if t >= 0]
    if len(ids) <= member.min_tokens:
        return False
    try:
        text = tokenizer.decode(ids, skip_special_tokens=member.skip_special_tokens)
        head = member.min_tokens and len(
            tokenizer.decode(ids[: member.min_tokens], skip_special_tokens=member.skip_special_tokens)
        )
    except Exception:
        return False
    return any(text.find(s, max(head - len(s) + 1, 0)) >= 0 for s in member.stop_strings)


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


def first_finish_marker(source: Any) -> int | None:
    """The marker token id that ends the samples FFS stopped (their ``stop_reason``), or None when the model's
    tokenizer has no single token for `FFS_MARKER_TEXT` (losers are then stopped with EOS, unmarked).

    Args:
        source: A `vllm.LLM` / `AsyncLLM` (anything with ``get_tokenizer()``), a tokenizer, or the id itself.
    """
    if isinstance(source, numbers.Integral) and not isinstance(source, bool):
        return int(source)
    tokenizer = source.get_tokenizer() if hasattr(source, "get_tokenizer") else source
    return _cached_marker(tokenizer, None)


FIRST_FINISH_STATUS = "first_finish"  # key of a choice's `tts` report set by the server middleware


def is_first_finish_stopped(completion: Any, marker: Any = None) -> bool:
    """Whether FFS stopped this sample.

    Args:
        completion: A `CompletionOutput`, or an OpenAI choice (object or dict). A choice from a server with
            `vllm_ttsplugin.serving.TTSMiddleware` says it itself (``tts.first_finish == "stopped"``).
        marker: The LLM, its tokenizer, or the marker token id (`first_finish_marker`). Needed when the sample
            ended on a stop token: a loser's ``stop_reason`` is the marker token, which only the tokenizer names.

    Raises:
        ValueError: the sample ended on a stop token and no `marker` was given.
    """
    tts = _field(completion, "tts")
    if isinstance(tts, dict) and FIRST_FINISH_STATUS in tts:
        return tts[FIRST_FINISH_STATUS] == "stopped"
    if _field(completion, "finish_reason") != "stop":
        return False
    reason = _field(completion, "stop_reason")
    if isinstance(reason, bool) or not isinstance(reason, numbers.Integral):
        return False  # EOS (None) or a stop string: a natural finish
    if marker is None:
        raise ValueError(
            f"sample {_field(completion, 'index')} ended on stop token {reason}: pass `marker=` (the LLM, its "
            "tokenizer or the marker token id) to tell a First Finish stop from the request's own stop tokens"
        )
    return reason == first_finish_marker(marker)


def is_natural_finish(completion: Any, marker: Any = None) -> bool:
    """Whether the sample ended by itself (EOS, stop token or stop string), i.e. not cut, aborted or stopped."""
    return _field(completion, "finish_reason") == "stop" and not is_first_finish_stopped(completion, marker)


def first_finish_winners(
    output: RequestOutput, k: int | None = None, *, marker: Any = None
) -> list[CompletionOutput]:
    """The natural finishers of an in-engine FFS request, in finishing order (at most `k` when given).

    Within one request all samples start together, so finishing order is length order; samples of equal length
    finished in the same step and are ordered by index. Samples FFS stopped (`is_first_finish_stopped`) and length
    cuts are never winners. Several samples finishing in the step that decides the race are all natural finishers;
    pass `k` to keep the first k. `marker`: the LLM, its tokenizer or the marker token id (required once a sample
    ended on a stop token, which every FFS loser does).
    """
    natural = [c for c in output.outputs if is_natural_finish(c, marker)]
    natural.sort(key=lambda c: (len(c.token_ids), c.index))
    return natural if k is None else natural[:k]
