"""The controls `TTSLogitsProcessor` composes, each a `SlotComponent` over the adapters' shared slot bookkeeping.

An adapter (vLLM V1 runner, vLLM V2 runner) maps its engine's batch onto slots and drives every component with
the same calls: admit / release / permute / snapshot / restore (membership), observe (every token each request
produced, including a finished request's last one before it is released), apply (edit the logits for the next
token). Components run in list order, so a later component overrides an earlier one on a row both touch. The
order, and so the priority of the controls, is:

    [ThinkingComponent, FirstFinishComponent, ConfidenceComponent]

i.e. a confidence stop or a First Finish stop (both force the stop marker) (force EOS or the stop marker) > a forced sequence in progress (end delimiter / answer
prefix / wait text, once started always completed) > max-budget forcing > min-budget decisions > TS scaling (the
last four are ordered inside `ThinkingComponent`).

A new control is one more `SlotComponent` subclass in `COMPONENTS`: it declares its `extra_args` keys, validates
them at admission (`validate`, in the frontend process), parses a request engine-side (`parse_engine`) and keeps
its own preallocated per-slot state.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from vllm_ttsplugin.arrays import TorchOps, to_device
from vllm_ttsplugin.confidence import (
    CONFIDENCE_KEYS,
    GREEDY_EPS,
    ConfidenceRequest,
    parse_confidence_args,
    token_confidence,
)
from vllm_ttsplugin.config import ThinkingConfig, ThinkingConfigError, TTSParamsError
from vllm_ttsplugin.ffs import (
    FIRST_FINISH_KEY,
    GROUP_KEY,
    FirstFinishCore,
    FirstFinishMember,
    SlotOutcome,
    find_marker_token,
    member_outcome,
    parse_first_finish_args,
    stamp_stop_marker,
    stamped_marker,
    validate_first_finish_params,
)
from vllm_ttsplugin.prompts import scan_prompt
from vllm_ttsplugin.thinking import ThinkingControl
from vllm_ttsplugin.vocab import SamplingView, ThinkingSpec, TokenizerVocab, resolve_thinking

logger = logging.getLogger("vllm_ttsplugin")

# A prompt as the adapter has it: a list of ids (V1, host), a 1-D token tensor (V2, on the device), or None
# (prompt embeddings).
Prompt = list[int] | torch.Tensor | None


@dataclass(frozen=True)
class SlotEnv:
    """What a component learns about its engine when the adapter builds it."""

    num_slots: int
    device: torch.device
    vocab: TokenizerVocab | None  # the model's tokenizer facts (None: the engine has no tokenizer)
    seed: int  # the engine's seed (for requests without one)
    pin_memory: bool = False
    max_model_len: int | None = None
    vocab_size: int | None = None


class SlotComponent(ABC):
    """A control that runs every decode step on the processor's request slots.

    Subclasses declare the `extra_args` keys they own, parse a request into an opaque per-request object, and
    keep their own per-slot state (preallocated, indexed by slot).
    """

    keys: ClassVar[tuple[str, ...]] = ()
    needs_tokenizer: ClassVar[bool] = True  # requests are refused on an engine without one

    @classmethod
    @abstractmethod
    def parse(
        cls, params: Any, vocab: TokenizerVocab | None, known_keys: Sequence[str] = ()
    ) -> object | None:
        """Check a request's params; return its per-request object, or `None` if it is not ours.

        Raises a `TTSParamsError` naming the parameter. With `vocab=None` only the checks that need no tokenizer
        are done (the returned object is then only meaningful as "is ours").
        """

    @classmethod
    def validate(cls, params: Any, vocab: TokenizerVocab | None, known_keys: Sequence[str] = ()) -> bool:
        """The admission check (frontend process, the request's own params, `n` included); whether it is ours.

        May update `params` for the engine (First Finish stamps its race). Raises a `TTSParamsError`.
        """
        return cls.parse(params, vocab, known_keys) is not None

    def __init__(self, env: SlotEnv) -> None:
        self.env = env
        self.vocab = env.vocab

    def parse_engine(self, params: Any, known_keys: Sequence[str] = ()) -> object | None:
        """Engine-side parse: never raises (admission already validated); logs and skips what it cannot use."""
        try:
            return self.parse(params, self.vocab, known_keys)
        except TTSParamsError as exc:
            logger.warning("ttsplugin: request left without %s: %s", type(self).__name__, exc)
            return None

    @property
    @abstractmethod
    def active_np(self) -> np.ndarray:
        """[num_slots] host mask of slots this component handles."""

    @abstractmethod
    def admit(self, slots: Sequence[int], requests: Sequence[object], prompts: Sequence[Prompt]) -> None: ...

    @abstractmethod
    def release(self, slots: Sequence[int], outputs: Sequence[list[int] | None] | None = None) -> None:
        """The requests in `slots` left (finished, aborted, preempted, overwritten). `outputs`: their live output
        lists where the runner has them (V1), for components that need to know how a request ended."""

    @abstractmethod
    def permute(self, source: np.ndarray) -> None:
        """Slot i takes what slot `source[i]` held (`-1`: empty)."""

    @abstractmethod
    def snapshot(self, slot: int) -> object | None: ...

    @abstractmethod
    def restore(self, slot: int, snap: object) -> None: ...

    @abstractmethod
    def observe(
        self,
        slots: torch.Tensor,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        valid: torch.Tensor | None,
        infer_injections: bool = False,
    ) -> None: ...

    def inspect(
        self,
        logits: torch.Tensor,
        slots: torch.Tensor,
        slots_np: np.ndarray,
        out_len: torch.Tensor,
        rows: torch.Tensor | None,
    ) -> None:
        """See the step's logits as the model produced them, before any component's `apply` (default: nothing).

        May mask tokens a request must never sample; forcing belongs in `apply`.
        """
        return None

    @abstractmethod
    def apply(
        self,
        logits: torch.Tensor,
        slots: torch.Tensor,
        slots_np: np.ndarray,
        out_len: torch.Tensor,
        rows: torch.Tensor | None,
    ) -> torch.Tensor: ...


def request_stop_ids(params: Any) -> tuple[int, ...]:
    """Tokens that end a request: EOS (unless `ignore_eos`) and its `stop_token_ids`."""
    ids = [] if getattr(params, "eos_token_id", None) is None else [params.eos_token_id]
    ids += [t for t in getattr(params, "stop_token_ids", None) or () if t not in ids]
    return tuple(int(t) for t in ids)


# -- thinking control --------------------------------------------------------------------------------------------
class ThinkingComponent(SlotComponent):
    """Budget forcing (min with the wait text, max with a forced end) and TS, over `ThinkingControl`."""

    keys = ThinkingConfig.keys()

    @classmethod
    def parse(
        cls, params: Any, vocab: TokenizerVocab | None, known_keys: Sequence[str] = ()
    ) -> ThinkingSpec | ThinkingConfig | None:
        config = ThinkingConfig.from_extra_args(getattr(params, "extra_args", None), known_keys=known_keys)
        if config is None or not config.is_active:
            return None
        if vocab is None:
            return config
        return resolve_thinking(config, vocab, SamplingView.from_params(params), request_stop_ids(params))

    def __init__(self, env: SlotEnv) -> None:
        super().__init__(env)
        self.control = ThinkingControl(env.num_slots, env.device, pin_memory=env.pin_memory)
        # Seeds for requests without one: a private generator seeded from the engine seed, so unseeded runs are
        # reproducible like vLLM's own and the global RNG (which vLLM's sampler uses) is not disturbed.
        self._seeds = torch.Generator().manual_seed(int(env.seed or 0))

    @property
    def active_np(self) -> np.ndarray:
        return self.control.active_np

    def parse_engine(self, params: Any, known_keys: Sequence[str] = ()) -> ThinkingSpec | None:
        spec = super().parse_engine(params, known_keys)
        if isinstance(spec, ThinkingConfig):
            logger.warning(
                "ttsplugin: no tokenizer in the engine; thinking control is disabled for the request"
            )
            return None
        return spec

    def admit(self, slots: Sequence[int], requests: Sequence[object], prompts: Sequence[Prompt]) -> None:
        if not slots:
            return
        specs: list[ThinkingSpec] = list(requests)  # type: ignore[arg-type]
        width = self.control.required_window_width(specs)
        opens, tails, seeds = [], [], []
        for spec, prompt in zip(specs, prompts, strict=True):
            # Prompt embeddings (no token ids): nothing to scan, so thinking starts at the start delimiter.
            tokens = torch.as_tensor(prompt if prompt is not None else [], dtype=torch.long)
            is_open, tail = scan_prompt(tokens, spec.start_ids, spec.end_ids, width)
            opens.append(is_open)
            tails.append(tail)
            seed = spec.sampling.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds).item())
            seeds.append(seed)
        device = self.control.device
        # Scanned where the prompts live (host lists on V1, the device on V2); moved without a sync.
        opens_t, tails_t = torch.stack(opens), torch.stack(tails)
        self.control.admit(
            list(slots),
            specs,
            seeds,
            to_device(opens_t, device, self.env.pin_memory) if opens_t.device != device else opens_t,
            to_device(tails_t, device, self.env.pin_memory) if tails_t.device != device else tails_t,
        )

    def release(self, slots: Sequence[int], outputs=None) -> None:
        self.control.release(list(slots))

    def permute(self, source: np.ndarray) -> None:
        self.control.permute(source)

    def snapshot(self, slot: int) -> object | None:
        return self.control.snapshot(slot) if self.control.active_np[slot] else None

    def restore(self, slot: int, snap: object) -> None:
        self.control.restore(slot, snap)  # type: ignore[arg-type]

    def observe(self, slots, tokens, positions, valid, infer_injections: bool = False) -> None:
        self.control.observe(slots, tokens, positions, valid, infer_injections)

    def apply(self, logits, slots, slots_np, out_len, rows) -> torch.Tensor:
        return self.control.apply(logits, slots, slots_np, out_len, rows)


# -- Components with opted-in member slots ----------------------------------------------------------------------
class MemberSlotComponent(SlotComponent):
    """A component that acts only on the slots whose requests opted in (its *members*, a host mask)."""

    def __init__(self, env: SlotEnv) -> None:
        super().__init__(env)
        self.members_np = np.zeros(env.num_slots, dtype=bool)

    @property
    def active_np(self) -> np.ndarray:
        return self.members_np

    def _to_device(self, values) -> torch.Tensor:
        return to_device(values, self.env.device, self.env.pin_memory)


# -- First Finish Search -----------------------------------------------------------------------------------------
class FirstFinishComponent(MemberSlotComponent):
    """First Finish Search: once k samples of a race finish naturally, the others are stopped (`vllm_ttsplugin.ffs`).

    Races and membership are host bookkeeping (`FirstFinishCore`); counting natural finishes and deciding whom to
    stop happen on the device: `observe` counts the members whose token is one of their stop tokens (and that
    FFS did not force), `apply` forces the stop marker (then EOS) on members whose race has k finishes. On the
    V1 runner a sample ended by a stop *string* is counted when it leaves its slot (`member_outcome`). `apply`
    returns at once, with no device work, when no member is in the batch.
    """

    keys = (FIRST_FINISH_KEY, GROUP_KEY)
    needs_tokenizer = False  # without one, losers are stopped with EOS, unmarked

    @classmethod
    def parse(cls, params: Any, vocab: TokenizerVocab | None, known_keys: Sequence[str] = ()):
        return parse_first_finish_args(getattr(params, "extra_args", None))

    @classmethod
    def validate(cls, params: Any, vocab: TokenizerVocab | None, known_keys: Sequence[str] = ()) -> bool:
        handled = cls.parse(params, vocab, known_keys) is not None
        validate_first_finish_params(params)
        return handled

    def __init__(self, env: SlotEnv) -> None:
        super().__init__(env)
        n, dev = env.num_slots, env.device
        self.core = FirstFinishCore(n)
        self.marker = (
            find_marker_token(env.vocab.tokenizer, env.vocab_size) if env.vocab is not None else None
        )
        self.requests: list[FirstFinishMember | None] = [None] * n
        # Device state per slot: membership, race, k, the member's stop tokens ([n, S], -1-padded), the token
        # forced to stop it, whether losers get the marker first, and what was counted / forced / seen last.
        self.member = torch.zeros(n, dtype=torch.bool, device=dev)
        self.race = torch.zeros(n, dtype=torch.long, device=dev)
        self.k = torch.zeros(n, dtype=torch.long, device=dev)
        self.stop_ids = torch.full((n, 1), -1, dtype=torch.long, device=dev)
        self.stop_token = torch.zeros(n, dtype=torch.long, device=dev)
        self.marked = torch.zeros(n, dtype=torch.bool, device=dev)
        self.counted = torch.zeros(n, dtype=torch.bool, device=dev)  # its natural finish was counted
        self.forced = torch.zeros(n, dtype=torch.bool, device=dev)  # FFS forced one of its tokens
        self.last_token = torch.full((n,), -1, dtype=torch.long, device=dev)
        # [max_races] natural finishes per race index.
        self.finished = torch.zeros(self.core.max_races, dtype=torch.long, device=dev)
        self._ops = TorchOps(dev, env.pin_memory)

    _PER_SLOT = ("member", "race", "k", "stop_ids", "stop_token", "marked", "counted", "forced", "last_token")

    def parse_engine(self, params: Any, known_keys: Sequence[str] = ()) -> FirstFinishMember | None:
        extra = getattr(params, "extra_args", None)
        if not extra or (FIRST_FINISH_KEY not in extra and GROUP_KEY not in extra):
            return None
        try:
            return FirstFinishMember.from_params(params, self.env.vocab_size)
        except TTSParamsError as exc:
            logger.warning("ttsplugin: request left without First Finish Search: %s", exc)
            return None

    def admit(self, slots, requests, prompts, restored=None) -> None:
        if not slots:
            return
        width = max([self.stop_ids.shape[1]] + [len(m.stop_ids) for m in requests])
        if width > self.stop_ids.shape[1]:
            pad = torch.full(
                (self.env.num_slots, width - self.stop_ids.shape[1]),
                -1,
                dtype=torch.long,
                device=self.env.device,
            )
            self.stop_ids = torch.cat([self.stop_ids, pad], dim=1)
        rows = {name: [] for name in ("race", "k", "stop_token", "marked", "stop_ids")}
        for slot, member, prompt in zip(slots, requests, prompts, strict=True):
            if member.key is None:
                host_prompt = prompt if isinstance(prompt, list) else None  # V2 prompts stay on the device
                member.prompt_len = len(host_prompt) if host_prompt is not None else 0
                member.key = member.race_key(host_prompt)
            if (
                self.marker is None
            ):  # no engine tokenizer: the marker admission stamped (one model, one marker)
                self.marker = member.marker
            self.core.add(slot, member.key, member.spec.k, member.size, member)
            self.members_np[slot] = True
            self.requests[slot] = member
            rows["race"].append(self.core.race_index[slot])
            rows["k"].append(member.spec.k)
            rows["stop_token"].append(member.stop_token)
            rows["marked"].append(member.marker is not None and member.marker == self.marker)
            rows["stop_ids"].append(list(member.stop_ids) + [-1] * (width - len(member.stop_ids)))
        if self.core.recycled:  # race indices handed out again: their device counts start over
            self.finished[self._to_device(np.asarray(self.core.recycled, dtype=np.int64))] = 0
            self.core.recycled.clear()
        index = self._to_device(np.asarray(slots, dtype=np.int64))
        for name, values in rows.items():
            getattr(self, name)[index] = self._to_device(np.asarray(values, dtype=np.int64)).to(
                getattr(self, name).dtype
            )
        self.member[index] = True
        for name, value in (("counted", False), ("forced", False), ("last_token", -1)):
            getattr(self, name)[index] = value
        if restored is not None:
            for name, value in restored.items():
                getattr(self, name)[index] = value

    def release(self, slots, outputs=None) -> None:
        gone = [s for s in slots if self.members_np[s]]
        if not gone:
            return
        stop_string_races = []
        for i, slot in enumerate(slots):
            if not self.members_np[slot]:
                continue
            member = self.requests[slot]
            outcome = SlotOutcome.UNKNOWN
            if outputs is not None and outputs[i] is not None:
                outcome = member_outcome(
                    member,
                    outputs[i],
                    self.vocab.tokenizer if self.vocab is not None else None,
                    self.env.max_model_len,
                )
                last = next((t for t in reversed(outputs[i]) if t >= 0), None)
                if outcome == SlotOutcome.NATURAL and last not in member.stop_ids:
                    stop_string_races.append(
                        int(self.core.race_index[slot])
                    )  # a stop string: not yet counted
            self.core.remove(slot, outcome)
            self.members_np[slot] = False
            self.requests[slot] = None
        if stop_string_races:
            index = self._to_device(np.asarray(stop_string_races, dtype=np.int64))
            self.finished.index_add_(0, index, torch.ones_like(index))
        self.member[self._to_device(np.asarray(gone, dtype=np.int64))] = False

    def permute(self, source: np.ndarray) -> None:
        source = np.asarray(source, dtype=np.int64)
        empty = source < 0
        src = np.where(empty, np.arange(self.env.num_slots), source)
        self.core.permute(source)
        index = self._to_device(src)
        for name in self._PER_SLOT:
            setattr(self, name, getattr(self, name)[index])
        self.members_np = self.members_np[src] & ~empty
        self.requests = [None if empty[i] else self.requests[src[i]] for i in range(self.env.num_slots)]
        if empty.any():
            self.member[self._to_device(np.flatnonzero(empty))] = False

    def snapshot(self, slot: int) -> object | None:
        if not self.members_np[slot]:
            return None
        return self.requests[slot], {
            n: getattr(self, n)[slot].clone() for n in ("counted", "forced", "last_token")
        }

    def restore(self, slot: int, snap: object) -> None:
        member, flags = snap  # type: ignore[misc]
        self.admit([slot], [member], [None], restored=flags)

    def observe(self, slots, tokens, positions, valid, infer_injections: bool = False) -> None:
        if not self.members_np.any() or slots.numel() == 0:
            return
        ok = self.member[slots]
        if valid is not None:
            ok = ok & valid
        is_stop = (self.stop_ids[slots] == tokens.unsqueeze(1)).any(dim=1)
        new = ok & is_stop & ~self.counted[slots] & ~self.forced[slots]
        self.counted[slots] = self.counted[slots] | new
        self.finished.index_add_(0, self.race[slots], new.long())
        self.last_token[slots] = torch.where(ok, tokens, self.last_token[slots])

    def apply(self, logits, slots, slots_np, out_len, rows) -> torch.Tensor:
        if not self.members_np[slots_np].any():
            return logits
        rows = rows if rows is not None else torch.arange(slots.shape[0], device=logits.device)
        member = self.member[slots]
        stop = member & ~self.counted[slots] & (self.finished[self.race[slots]] >= self.k[slots])
        tokens = self.stop_token[slots]
        if self.marker is not None:
            # Marked members (the marker is one of their stop tokens) never sample it themselves; a loser gets it
            # and the engine core ends it there (EOS only if it were scheduled again).
            marked = member & self.marked[slots]
            column = logits[rows, self.marker]
            logits[rows, self.marker] = torch.where(marked, float("-inf"), column)
            use_marker = marked & (self.last_token[slots] != self.marker)
            tokens = torch.where(use_marker, self.marker, tokens)
        self.forced[slots] = self.forced[slots] | stop
        self._ops.fill_rows_(logits, rows, stop, float("-inf"))
        column = logits[rows, tokens.clamp(min=0)]
        logits[rows, tokens.clamp(min=0)] = torch.where(stop, 0.0, column)
        return logits


# -- DeepConf: the confidence stop -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfidenceMember:
    """One sample's confidence stop, parsed engine-side from its params."""

    spec: ConfidenceRequest
    inv_temperature: float  # 1 / the request's temperature (1 for greedy)
    stop_token: int  # forced to stop it: the stamped marker, else EOS / its first stop token (-1: none)
    marked: bool  # the stop token is the marker (never sampled by the member itself)


class ConfidenceComponent(MemberSlotComponent):
    """DeepConf's online stop (`vllm_ttsplugin.confidence`): a sample whose last full window of token confidences
    has a mean below its ``tts_confidence_threshold`` gets the stop marker as its next token.

    `inspect` computes every member row's token confidence from the step's logits as the model produced them
    (before the other components force or mask anything; then it masks the marker, which members never sample
    themselves), batched (one top-k and one logsumexp over the member
    rows), and keeps a ring buffer of the last ``window`` confidences and their running sum per slot (float64) on
    the device; the stop decision for the step is taken there, from the window that ends at the previous token.
    `apply` forces the stop token on the rows to stop; it runs last, so it wins over forced thinking text and
    First Finish's marker mask, like a First Finish stop. Nothing is synchronised per step. A position computed
    twice (a step vLLM discarded) replaces its value; a gap in positions (a request resumed without its state)
    restarts the window.
    """

    keys = CONFIDENCE_KEYS
    needs_tokenizer = False  # without a marker token, stopped samples end on EOS

    @classmethod
    def parse(cls, params: Any, vocab: TokenizerVocab | None, known_keys: Sequence[str] = ()):
        return parse_confidence_args(getattr(params, "extra_args", None), getattr(vocab, "vocab_size", None))

    @classmethod
    def validate(cls, params: Any, vocab: TokenizerVocab | None, known_keys: Sequence[str] = ()) -> bool:
        if cls.parse(params, vocab, known_keys) is None:
            return False
        stop = request_stop_ids(params)
        if stamp_stop_marker(params) is None and not stop:
            raise TTSParamsError(
                f"`{CONFIDENCE_KEYS[0]}` with ignore_eos=True, no stop_token_ids and no marker token: a sample "
                "could not be stopped",
                parameter=CONFIDENCE_KEYS[0],
            )
        return True

    def __init__(self, env: SlotEnv) -> None:
        super().__init__(env)
        n, dev = env.num_slots, env.device
        self.top_k_np = np.zeros(n, dtype=np.int64)  # host copy: the step's top-k width without a sync
        self.requests: list[ConfidenceMember | None] = [None] * n  # host copy: snapshots without a sync
        self.unit_temperature_np = np.ones(n, dtype=bool)  # host: no temperature pass when every row's is 1
        # Device state per slot: parameters, then the window: a ring of the last `window` confidences
        # ([n, W], W = the largest window admitted), their running sum, how many positions it holds, the next
        # position expected, and the lowest full-window mean seen (inf until a window is full).
        self.member = torch.zeros(n, dtype=torch.bool, device=dev)
        self.threshold = torch.zeros(n, dtype=torch.float64, device=dev)
        self.window = torch.ones(n, dtype=torch.long, device=dev)
        self.top_k = torch.ones(n, dtype=torch.long, device=dev)
        self.inv_temperature = torch.ones(n, dtype=torch.float32, device=dev)
        self.stop_token = torch.zeros(n, dtype=torch.long, device=dev)
        self.marked = torch.zeros(n, dtype=torch.bool, device=dev)
        self.ring = torch.zeros((n, 1), dtype=torch.float64, device=dev)
        self.total = torch.zeros(n, dtype=torch.float64, device=dev)
        self.count = torch.zeros(n, dtype=torch.long, device=dev)
        self.next_pos = torch.zeros(n, dtype=torch.long, device=dev)
        self.lowest = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        self.stopped = torch.zeros(n, dtype=torch.bool, device=dev)
        self._stop_rows: torch.Tensor | None = None  # [rows] this step's stops (set by inspect)
        self._ops = TorchOps(dev, env.pin_memory)

    _PER_SLOT = (
        "member", "threshold", "window", "top_k", "inv_temperature", "stop_token", "marked",
        "ring", "total", "count", "next_pos", "lowest", "stopped",
    )  # fmt: skip
    _RUN_STATE = ("ring", "total", "count", "next_pos", "lowest", "stopped")

    def parse_engine(self, params: Any, known_keys: Sequence[str] = ()) -> ConfidenceMember | None:
        try:
            spec = parse_confidence_args(getattr(params, "extra_args", None), self.env.vocab_size)
        except TTSParamsError as exc:
            logger.warning("ttsplugin: request left without the confidence stop: %s", exc)
            return None
        if spec is None:
            return None
        marker = stamped_marker(params, self.env.vocab_size)
        stop = request_stop_ids(params)
        temperature = float(getattr(params, "temperature", 1.0))
        return ConfidenceMember(
            spec=spec,
            inv_temperature=1.0 / temperature if temperature >= GREEDY_EPS else 1.0,
            stop_token=marker if marker is not None else (stop[0] if stop else -1),
            marked=marker is not None,
        )

    def admit(self, slots, requests, prompts, restored=None) -> None:
        if not slots:
            return
        width = max(m.spec.window for m in requests)
        if width > self.ring.shape[1]:
            pad = torch.zeros(
                (self.env.num_slots, width - self.ring.shape[1]),
                dtype=self.ring.dtype,
                device=self.env.device,
            )
            self.ring = torch.cat([self.ring, pad], dim=1)
        index = self._to_device(np.asarray(slots, dtype=np.int64))
        for name, values, dtype in (
            ("threshold", [m.spec.threshold for m in requests], np.float64),
            ("window", [m.spec.window for m in requests], np.int64),
            ("top_k", [m.spec.top_k for m in requests], np.int64),
            ("inv_temperature", [m.inv_temperature for m in requests], np.float32),
            ("stop_token", [m.stop_token for m in requests], np.int64),
            ("marked", [m.marked for m in requests], bool),
        ):
            getattr(self, name)[index] = self._to_device(np.asarray(values, dtype=dtype))
        self.member[index] = True
        for name in self._RUN_STATE:
            getattr(self, name)[index] = float("inf") if name == "lowest" else 0
        if restored is not None:
            for name, value in restored.items():
                getattr(self, name)[index] = value
        self.members_np[list(slots)] = True
        self.top_k_np[list(slots)] = [m.spec.top_k for m in requests]
        for slot, request in zip(slots, requests, strict=True):
            self.requests[slot] = request
            self.unit_temperature_np[slot] = request.inv_temperature == 1.0

    def release(self, slots, outputs=None) -> None:
        gone = [s for s in slots if self.members_np[s]]
        if gone:
            self.members_np[gone] = False
            for slot in gone:
                self.requests[slot] = None
            self.member[self._to_device(np.asarray(gone, dtype=np.int64))] = False

    def permute(self, source: np.ndarray) -> None:
        source = np.asarray(source, dtype=np.int64)
        empty = source < 0
        src = np.where(empty, np.arange(self.env.num_slots), source)
        index = self._to_device(src)
        for name in self._PER_SLOT:
            setattr(self, name, getattr(self, name)[index])
        self.members_np = self.members_np[src] & ~empty
        self.top_k_np = self.top_k_np[src]
        self.unit_temperature_np = self.unit_temperature_np[src]
        self.requests = [None if empty[i] else self.requests[src[i]] for i in range(self.env.num_slots)]
        if empty.any():
            self.member[self._to_device(np.flatnonzero(empty))] = False

    def snapshot(self, slot: int) -> object | None:
        if not self.members_np[slot]:
            return None
        request = self.requests[slot]
        return request, {name: getattr(self, name)[slot].clone() for name in self._RUN_STATE}

    def restore(self, slot: int, snap: object) -> None:
        request, state = snap  # type: ignore[misc]
        ring = state["ring"]
        if ring.shape[0] < self.ring.shape[1]:  # the ring grew meanwhile (a wider window was admitted)
            state = dict(state, ring=torch.cat([ring, ring.new_zeros(self.ring.shape[1] - ring.shape[0])]))
        self.admit([slot], [request], [None], restored=state)

    def observe(self, slots, tokens, positions, valid, infer_injections: bool = False) -> None:
        pass  # the confidences depend on the logits only

    def inspect(self, logits, slots, slots_np, out_len, rows) -> None:
        self._stop_rows = None
        picked = np.flatnonzero(self.members_np[slots_np])
        if picked.size == 0:
            return
        pick = self._ops.index(picked)
        rows = pick if rows is None else rows[pick]
        s = slots[pick]
        position = out_len[pick]
        window = self.window[s]
        full = self.count[s] >= window
        mean = self.total[s] / self.count[s].clamp(min=1)
        # Decided from the window ending at the previous token (the marker replaces this token).
        stop = self.member[s] & full & (mean < self.threshold[s]) & (self.next_pos[s] == position)
        stop_rows = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        stop_rows[rows] = stop
        self._stop_rows = stop_rows
        self.stopped[s] = self.stopped[s] | stop
        # Every row a member: the rows in order (V1: batch index = slot, ascending; V2: all rows), no gather.
        view = logits if picked.size == logits.shape[0] else logits[rows]
        unit = self.unit_temperature_np[slots_np[picked]].all()
        k_max = int(self.top_k_np[slots_np[picked]].max())
        confidence = token_confidence(
            view, None if unit else self.inv_temperature[s], self.top_k[s], k_max
        ).to(torch.float64)
        # Append position `next_pos`, redo position `next_pos - 1` (a discarded step), restart on any other.
        redo = (position == self.next_pos[s] - 1) & (self.count[s] > 0)
        restart = (position != self.next_pos[s]) & ~redo
        count = torch.where(restart, 0, self.count[s])
        total = torch.where(restart, 0.0, self.total[s])
        column = position % window
        old = self.ring[s, column]
        drop = torch.where(redo | (count >= window), old, 0.0)
        total = total - drop + confidence
        count = torch.where(redo, count, (count + 1).clamp(max=window))
        self.ring[s, column] = confidence
        self.total[s] = total
        self.count[s] = count
        self.next_pos[s] = position + 1
        full_mean = torch.where(count >= window, total / count, float("inf"))
        self.lowest[s] = torch.minimum(self.lowest[s], full_mean)
        # Marked members never sample the marker themselves (masked before any component may force it).
        marked = self.marked[s]
        tokens = self.stop_token[s].clamp(min=0)
        column = logits[rows, tokens]
        logits[rows, tokens] = torch.where(marked, float("-inf"), column)

    def apply(self, logits, slots, slots_np, out_len, rows) -> torch.Tensor:
        stop_rows, self._stop_rows = self._stop_rows, None
        if stop_rows is None:
            return logits
        rows = rows if rows is not None else torch.arange(slots.shape[0], device=logits.device)
        stop = stop_rows[rows] & self.member[slots]
        tokens = self.stop_token[slots].clamp(min=0)
        self._ops.fill_rows_(logits, rows, stop, float("-inf"))
        column = logits[rows, tokens]
        logits[rows, tokens] = torch.where(stop, 0.0, column)
        return logits


# Components composed into TTSLogitsProcessor, in application order (later wins on a shared row).
COMPONENTS: list[type[SlotComponent]] = [ThinkingComponent, FirstFinishComponent, ConfidenceComponent]

__all__ = [
    "COMPONENTS",
    "ConfidenceComponent",
    "FirstFinishComponent",
    "SlotComponent",
    "SlotEnv",
    "ThinkingComponent",
    "ThinkingConfigError",
    "request_stop_ids",
]
