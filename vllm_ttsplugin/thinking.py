"""The framework-free core of thinking control: a batched state machine over request slots (torch + numpy).

Used by every adapter: vLLM's V1-runner and V2-runner logits processors and the transformers `LogitsProcessor`.
Each adapter owns the mapping from its engine's batch to *slots* and feeds the core two calls per decode step:

1. `observe(slots, tokens, positions)`: the token each request produced at the previous step (after the sampler,
   whatever processor chose it), which advances the state: thinking-token count, waits injected, the forced
   sequence in progress, the phase.
2. `apply(logits, slots, ...)`: edits the logits rows of those requests for the next token, without changing
   the state (a step whose token is discarded, e.g. a chunked-prefill row, leaves nothing behind). The only
   thing `apply` records is the step's *decision* (wait injected / end forced), keyed by the output position it
   was made for, which `observe` reads back to tell a forced token from a sampled one.

State lives in preallocated tensors of `num_slots` rows on the device (a phase enum, counters, the forced-sequence
cursor, sentinels such as `NO_LIMIT`), so the per-step work is a fixed number of tensor ops over the batch. Host
mirrors of per-request flags let adapters skip work with a numpy test. On an accelerator nothing in `observe` or
`apply` synchronises with the device (host index arrays travel through pinned memory, `arrays.to_device`).

Semantics (one request; `E` = end delimiter tokens, `W` = wait tokens, `A` = answer prefix tokens). These are the
semantics of s1's re-prompt loop (generate with the end delimiter and EOS as stop tokens; on a stop below the
minimum append the wait text and continue with `min_tokens=1`; otherwise append the end delimiter, plus the answer
prefix when the budget ran out, and generate the answer):

- Thinking starts when the prompt ends inside an open think block or when the model emits the start delimiter,
  and ends at the end delimiter. *Thinking tokens* are the model's own tokens between them: injected wait tokens
  do not count.
- An *end attempt* is producing, while thinking, `E[0]` (when it is a single token or a special/added token) or a
  token that would end the request (EOS, a stop token; `ThinkingSpec.stop_ids`).
  A delimiter whose first token is ordinary text is recognised only once the model has written all of it; text
  that merely starts like it is untouched.
- **Max:** with `count == max_think` the next tokens are forced to `E`, then `A` (a budget stop).
- **Min:** with `count < min_think` (and fewer than `max_waits` injections): greedy requests attempt when the
  argmax is an attempt token; sampled requests attempt with probability p(attempt tokens) under the request's
  temperature (and top-k/top-p/min-p, as vLLM's sampler truncates), decided by a uniform from a counter-based
  generator keyed by (request seed, output position). An attempt forces `W`; otherwise the attempt tokens are
  excluded, so the token is drawn from the renormalised rest.
- **After a wait** (s1 continues with `min_tokens=1`): the first model token after `W` is never an attempt.
- **End allowed** (at or above the minimum, or no waits left): an EOS attempt ends thinking like `E[0]` would
  (`E` follows, no answer prefix). For an attempt-token `E[0]` the attempt tokens' logits are merged into `E[0]`
  (greedy: max; sampled: probabilities added in the request's temperature); for a text delimiter an EOS attempt
  is decided like a min-budget one and forces `E`.
- **TS:** while thinking (and nothing is forced), `E[0]`'s logit z becomes z / T or z + bias; the decisions see
  the scaled logit.
- Priority: a forced sequence in progress (W, E, A: once started always completed) > max forcing > the
  after-wait exclusion > min decision > end allowed > TS. A token different from the one we forced (another
  processor overrode us, e.g. vLLM's own `thinking_token_budget`, which runs after custom processors) abandons
  the forced sequence and is processed as a produced token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import IntEnum

import numpy as np
import torch

from vllm_ttsplugin.arrays import ops_for, to_device
from vllm_ttsplugin.sampling import PAD_TOKEN, attempt_probability, counter_uniform, int64_seed
from vllm_ttsplugin.vocab import ThinkingSpec

# Phases of a slot.
PHASE_OFF = 0  # no request, or a request without thinking control
PHASE_BEFORE = 1  # controlled, waiting for the start delimiter
PHASE_THINKING = 2
PHASE_ANSWER = 3  # the end delimiter was produced (its forced tail and the answer prefix may still follow)

# Forced sequences.
SEQ_NONE = -1
SEQ_WAIT = 0
SEQ_END = 1  # end delimiter followed by the answer prefix (the prefix only after a budget stop)

# Decisions recorded by `apply` for the position being sampled.
DECIDED_NOTHING = 0
DECIDED_WAIT = 1  # an end attempt below the minimum: the wait text was forced
DECIDED_END = 2  # an EOS attempt with a text end delimiter: the delimiter was forced

# TS modes.
TS_OFF = 0
TS_TEMPERATURE = 1
TS_BIAS = 2

NO_LIMIT = 2**31 - 1  # sentinel for "no max_think" / "unlimited waits"
ANY_TOKEN = -2  # "matches anything" in the right-aligned delimiter patterns


class Dyn(IntEnum):
    """Columns of the per-slot dynamic state (`ThinkingControl.dyn`, int64)."""

    PHASE = 0
    THINK = 1  # thinking tokens so far (the model's own; a text delimiter's pending prefix included)
    WAITS = 2  # wait texts injected
    SEQ = 3  # forced sequence in progress (SEQ_*)
    SEQ_POS = 4  # next index into it
    SEQ_STOP = 5  # its length
    DEC_POS = 6  # output position of the last recorded decision
    DEC_KIND = 7  # DECIDED_*
    BUDGET_STOP = 8  # thinking ended at the max budget
    AFTER_WAIT = 9  # the next model token follows a wait text: it is never an end attempt


class CfgI(IntEnum):
    """Columns of the per-slot int64 constants (`ThinkingControl.cfg_i`)."""

    MIN = 0
    MAX = 1
    MAX_WAITS = 2
    WAIT_LEN = 3
    END_LEN = 4
    PREFIX_LEN = 5
    END0 = 6
    WAIT0 = 7
    TS_MODE = 8
    GREEDY = 9
    TOP_K = 10
    SEED = 11
    END_IS_ATTEMPT = 12
    HAS_STOPS = 13


class CfgF(IntEnum):
    """Columns of the per-slot float32 constants (`ThinkingControl.cfg_f`)."""

    TS_VALUE = 0
    TEMPERATURE = 1
    TOP_P = 2
    MIN_P = 3


def min_window(free, think, min_think, max_think, waits, max_waits, after_wait):
    """Whether the next token gets a min-budget decision (an end attempt would become the wait text).

    The one statement of the condition, used by the batched core (numpy or torch arrays) and by the scalar
    reference (Python ints): thinking freely, below both budgets, waits left, and not right after a wait.
    """
    return free & (think < max_think) & (think < min_think) & (waits < max_waits) & (after_wait == 0)


def _limit(value: int | None) -> int:
    return NO_LIMIT if value is None else value


class ThinkingControl:
    """Batched thinking-control state for `num_slots` request slots on one device.

    Args:
        num_slots: Number of slots (vLLM's `max_num_seqs`, or the batch size in transformers).
        device: Where the state lives: the logits' device.
        seq_width: Initial width of the forced-sequence buffers (grows at admission when a longer wait text or
            end delimiter + answer prefix arrives).
        window_width: Initial width of the delimiter detection window (grows likewise).
        pin_memory: Copy host arrays to an accelerator through pinned memory (no synchronisation).
    """

    def __init__(
        self,
        num_slots: int,
        device: torch.device | str,
        seq_width: int = 8,
        window_width: int = 2,
        pin_memory: bool = True,
    ) -> None:
        self.num_slots = int(num_slots)
        self.device = torch.device(device)
        self.pin_memory = pin_memory
        dev = self.device
        # [num_slots] whether the slot holds a controlled request.
        self.active = torch.zeros(num_slots, dtype=torch.bool, device=dev)
        # [num_slots, len(Dyn)] phase, counters, forced-sequence cursor, last decision.
        self.dyn = torch.zeros(num_slots, len(Dyn), dtype=torch.long, device=dev)
        # [num_slots, len(CfgI)] / [num_slots, len(CfgF)] per-request constants.
        self.cfg_i = torch.zeros(num_slots, len(CfgI), dtype=torch.long, device=dev)
        self.cfg_f = torch.zeros(num_slots, len(CfgF), dtype=torch.float32, device=dev)
        # [num_slots, 2, seq_width] forced sequences: row SEQ_WAIT = wait tokens, row SEQ_END = end + prefix.
        self.seq = torch.full((num_slots, 2, seq_width), PAD_TOKEN, dtype=torch.long, device=dev)
        # [num_slots, window_width] start / end delimiter, right-aligned, ANY_TOKEN-padded on the left.
        self.start_pattern = torch.full((num_slots, window_width), ANY_TOKEN, dtype=torch.long, device=dev)
        self.end_pattern = torch.full((num_slots, window_width), ANY_TOKEN, dtype=torch.long, device=dev)
        # [num_slots, window_width] the last generated (or prompt-tail) tokens, right-aligned.
        self.recent = torch.full((num_slots, window_width), PAD_TOKEN, dtype=torch.long, device=dev)
        # [num_slots, S] stop tokens that are end attempts, padded by repeating the first (or E[0] if none), and
        # [num_slots, S] which entries are real (padding must not count twice in a probability).
        self.stops = torch.zeros(num_slots, 1, dtype=torch.long, device=dev)
        self.stop_valid = torch.zeros(num_slots, 1, dtype=torch.bool, device=dev)

        # Host mirrors of per-request flags, so adapters can skip work without touching the device.
        self.active_np = np.zeros(num_slots, dtype=bool)
        self.greedy_np = np.zeros(num_slots, dtype=bool)
        self.truncates_np = np.zeros(num_slots, dtype=bool)  # sampled with top-k/top-p/min-p
        self.temperature_np = np.ones(num_slots, dtype=np.float32)
        self.may_force_np = np.zeros(num_slots, dtype=bool)  # budgets, multi-token end, decisions
        self.decides_np = np.zeros(num_slots, dtype=bool)  # may need a decision (a vocabulary pass)
        self.has_stops_np = np.zeros(num_slots, dtype=bool)
        self.specs: list[ThinkingSpec | None] = [None] * num_slots

    _HOST_FLAGS = (
        "active_np",
        "greedy_np",
        "truncates_np",
        "temperature_np",
        "may_force_np",
        "decides_np",
        "has_stops_np",
    )
    _DEVICE_STATE = (
        "active",
        "dyn",
        "cfg_i",
        "cfg_f",
        "seq",
        "start_pattern",
        "end_pattern",
        "recent",
        "stops",
        "stop_valid",
    )

    # -- membership ------------------------------------------------------------------------------------------
    @property
    def seq_width(self) -> int:
        return self.seq.shape[2]

    @property
    def window_width(self) -> int:
        return self.start_pattern.shape[1]

    def required_window_width(self, specs: Sequence[ThinkingSpec]) -> int:
        """Width of the delimiter window these specs need (prompt tails are scanned with it)."""
        return max(
            [self.window_width]
            + [max(len(s.start_ids), 1 if s.end_is_attempt else len(s.end_ids)) for s in specs]
        )

    def _to_device(self, array) -> torch.Tensor:
        return to_device(array, self.device, self.pin_memory)

    def _grow(self, specs: Sequence[ThinkingSpec]) -> None:
        dev, n = self.device, self.num_slots
        need = max(
            [self.seq_width]
            + [max(len(s.wait_ids), len(s.end_ids) + len(s.answer_prefix_ids)) for s in specs]
        )
        if need > self.seq_width:
            pad = torch.full((n, 2, need - self.seq_width), PAD_TOKEN, dtype=torch.long, device=dev)
            self.seq = torch.cat([self.seq, pad], dim=2)
        need = self.required_window_width(specs)
        if need > self.window_width:
            extra = need - self.window_width

            def widen(t, fill):
                return torch.cat([torch.full((n, extra), fill, dtype=torch.long, device=dev), t], dim=1)

            self.start_pattern = widen(self.start_pattern, ANY_TOKEN)
            self.end_pattern = widen(self.end_pattern, ANY_TOKEN)
            self.recent = widen(self.recent, PAD_TOKEN)
        need = max([self.stops.shape[1]] + [len(s.stop_ids) for s in specs])
        if need > self.stops.shape[1]:
            extra = need - self.stops.shape[1]
            self.stops = torch.cat([self.stops, self.stops[:, :1].expand(n, extra)], dim=1)
            self.stop_valid = torch.cat(
                [self.stop_valid, torch.zeros(n, extra, dtype=torch.bool, device=dev)], dim=1
            )

    def admit(
        self,
        slots: Sequence[int],
        specs: Sequence[ThinkingSpec],
        seeds: Sequence[int],
        opens: torch.Tensor,
        tails: torch.Tensor,
    ) -> None:
        """(Re)initialise slots for new requests. Everything a previous occupant left is overwritten.

        Args:
            slots: Slot indices.
            specs: The requests' resolved specs.
            seeds: int64 seed per request (the request's seed, or one drawn by the adapter).
            opens: [n] bool, whether each prompt ends inside an open think block (see `scan_prompt`).
            tails: [n, w] prompt tails right-aligned, `w <= self.window_width` after `required_window_width`.
        """
        if not slots:
            return
        self._grow(specs)
        n, width, num_stops = len(slots), self.window_width, self.stops.shape[1]
        cfg_i = np.zeros((n, len(CfgI)), dtype=np.int64)
        cfg_f = np.zeros((n, len(CfgF)), dtype=np.float32)
        seq = np.full((n, 2, self.seq_width), PAD_TOKEN, dtype=np.int64)
        start_pattern = np.full((n, width), ANY_TOKEN, dtype=np.int64)
        end_pattern = np.full((n, width), ANY_TOKEN, dtype=np.int64)
        stops = np.zeros((n, num_stops), dtype=np.int64)
        stop_valid = np.zeros((n, num_stops), dtype=bool)
        for j, (spec, seed) in enumerate(zip(specs, seeds, strict=True)):
            self._pack(spec, seed, cfg_i[j], cfg_f[j], seq[j], start_pattern[j], end_pattern[j])
            stops[j] = spec.stop_ids[0] if spec.stop_ids else spec.end_ids[0]
            stops[j, : len(spec.stop_ids)] = spec.stop_ids
            stop_valid[j, : len(spec.stop_ids)] = True
            self._set_host_flags(slots[j], spec)
        dev = self.device
        index = self._to_device(np.asarray(slots, dtype=np.int64))
        opens = opens.to(dev, torch.bool)
        dyn = torch.zeros(n, len(Dyn), dtype=torch.long, device=dev)
        dyn[:, Dyn.PHASE] = torch.where(opens, PHASE_THINKING, PHASE_BEFORE)
        dyn[:, Dyn.SEQ] = SEQ_NONE
        dyn[:, Dyn.DEC_POS] = -1
        self.dyn[index] = dyn
        for name, array in (
            ("cfg_i", cfg_i),
            ("cfg_f", cfg_f),
            ("seq", seq),
            ("start_pattern", start_pattern),
            ("end_pattern", end_pattern),
            ("stops", stops),
            ("stop_valid", stop_valid),
        ):
            getattr(self, name)[index] = self._to_device(array)
        # The window holds the prompt's tail while waiting for the start delimiter; inside thinking it starts
        # empty (a text end delimiter must be written whole after the start).
        recent = torch.full((n, width), PAD_TOKEN, dtype=torch.long, device=dev)
        if tails.numel():
            w = min(tails.shape[1], width)
            recent[:, width - w :] = tails[:, tails.shape[1] - w :].to(dev, torch.long)
        self.recent[index] = torch.where(opens.unsqueeze(1), PAD_TOKEN, recent)
        self.active[index] = True

    def _pack(self, spec, seed, cfg_i, cfg_f, seq, start_pattern, end_pattern) -> None:
        """One request's constants into the host rows of the admission buffers."""
        sampling = spec.sampling
        ts_mode, ts_value = TS_OFF, 0.0
        if spec.end_temperature is not None:
            ts_mode, ts_value = TS_TEMPERATURE, spec.end_temperature
        elif spec.end_bias is not None:
            ts_mode, ts_value = TS_BIAS, spec.end_bias
        cfg_i[:] = (
            spec.min_think,
            _limit(spec.max_think),
            _limit(spec.max_waits),
            len(spec.wait_ids),
            len(spec.end_ids),
            len(spec.answer_prefix_ids),
            spec.end_ids[0],
            spec.wait_ids[0],
            ts_mode,
            int(sampling.greedy),
            sampling.top_k,
            int64_seed(seed),
            int(spec.end_is_attempt),
            int(bool(spec.stop_ids)),
        )
        cfg_f[:] = (ts_value, sampling.temperature, sampling.top_p, sampling.min_p)
        seq[SEQ_WAIT, : len(spec.wait_ids)] = spec.wait_ids
        forced_end = spec.end_ids + spec.answer_prefix_ids
        seq[SEQ_END, : len(forced_end)] = forced_end
        width = start_pattern.shape[0]
        if spec.start_ids:
            start_pattern[width - len(spec.start_ids) :] = spec.start_ids
        if not spec.end_is_attempt:
            end_pattern[width - len(spec.end_ids) :] = spec.end_ids

    def _set_host_flags(self, slot: int, spec: ThinkingSpec) -> None:
        sampling = spec.sampling
        text_end_decisions = not spec.end_is_attempt and bool(spec.stop_ids)
        self.specs[slot] = spec
        self.active_np[slot] = True
        self.greedy_np[slot] = sampling.greedy
        self.temperature_np[slot] = sampling.temperature
        self.truncates_np[slot] = not sampling.greedy and (
            sampling.top_k > 0 or sampling.top_p < 1.0 or sampling.min_p > 0.0
        )
        self.has_stops_np[slot] = bool(spec.stop_ids)
        self.decides_np[slot] = spec.min_think > 0 or text_end_decisions
        self.may_force_np[slot] = (
            spec.min_think > 0 or spec.max_think is not None or len(spec.end_ids) > 1 or text_end_decisions
        )

    def release(self, slots: Sequence[int]) -> None:
        """Forget the requests in these slots (finished, aborted, preempted, or overwritten)."""
        if len(slots) == 0:
            return
        slots_np = np.asarray(slots, dtype=np.int64)
        for s in slots_np.tolist():
            self.specs[s] = None
        for name in self._HOST_FLAGS:
            flags = getattr(self, name)
            flags[slots_np] = 1.0 if flags.dtype != bool else False
        index = self._to_device(slots_np)
        self.active[index] = False
        self.dyn[index, Dyn.PHASE] = PHASE_OFF

    def permute(self, source: np.ndarray) -> None:
        """Rearrange slots: slot i takes what slot `source[i]` held; `source[i] == -1` empties slot i."""
        source = np.asarray(source, dtype=np.int64)
        empty = source < 0
        src = np.where(empty, np.arange(self.num_slots), source)
        index = self._to_device(src)
        for name in self._DEVICE_STATE:
            setattr(self, name, getattr(self, name)[index])
        self.specs = [None if empty[i] else self.specs[src[i]] for i in range(self.num_slots)]
        for name in self._HOST_FLAGS:
            setattr(self, name, getattr(self, name)[src])
        if empty.any():
            self.release(np.flatnonzero(empty).tolist())

    def snapshot(self, slot: int) -> tuple:
        """A copy of one slot's state (device tensors, no sync), for `restore` after a preemption."""
        return (self.specs[slot],) + tuple(
            getattr(self, name)[slot].clone() for name in self._DEVICE_STATE[1:]
        )

    def restore(self, slot: int, snap: tuple) -> None:
        spec, dyn, cfg_i, cfg_f, seq, start_pattern, end_pattern, recent, stops, stop_valid = snap
        dev = self.device
        self.admit(
            [slot],
            [spec],
            [0],
            torch.zeros(1, dtype=torch.bool, device=dev),
            torch.empty(1, 0, dtype=torch.long, device=dev),
        )
        self.dyn[slot] = dyn
        self.cfg_i[slot] = cfg_i
        self.cfg_f[slot] = cfg_f
        self.seq[slot, :, : seq.shape[1]] = seq
        width = self.window_width
        self.start_pattern[slot, width - start_pattern.shape[0] :] = start_pattern
        self.end_pattern[slot, width - end_pattern.shape[0] :] = end_pattern
        self.recent[slot, width - recent.shape[0] :] = recent
        self.stops[slot, : stops.shape[0]] = stops
        self.stop_valid[slot, : stop_valid.shape[0]] = stop_valid

    # -- per step --------------------------------------------------------------------------------------------
    def observe(
        self,
        slots: torch.Tensor,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        valid: torch.Tensor | None = None,
        infer_injections: bool = False,
    ) -> None:
        """Advance the state by one produced token per given slot.

        Args:
            slots: [n] int64 slot per token (distinct).
            tokens: [n] int64 the token produced.
            positions: [n] int64 its index in the completion (0 for the first generated token).
            valid: [n] bool, rows without a new token this step are left unchanged; `None`: all valid.
            infer_injections: Replaying tokens whose decisions were not recorded (a resumed request): a wait
                text starting where an injection was possible counts as injected.
        """
        if slots.numel() == 0:
            return
        xp = ops_for(self.device, self.pin_memory, slots, tokens, positions, valid)
        slots, tokens, positions, valid = (xp.view(t) for t in (slots, tokens, positions, valid))
        dyn, seq, recent_all = xp.view(self.dyn), xp.view(self.seq), xp.view(self.recent)
        d, c = dyn[slots], xp.view(self.cfg_i)[slots]
        phase, think, waits = d[:, Dyn.PHASE], d[:, Dyn.THINK], d[:, Dyn.WAITS]
        seq_kind, seq_pos, seq_stop = d[:, Dyn.SEQ], d[:, Dyn.SEQ_POS], d[:, Dyn.SEQ_STOP]
        after_wait = d[:, Dyn.AFTER_WAIT]
        ok = xp.view(self.active)[slots]
        if valid is not None:
            ok = ok & valid

        # A forced sequence in progress: the token either follows it or (overridden) abandons it.
        in_seq = ok & (seq_kind >= 0)
        expected = seq[slots, xp.clamp(seq_kind, 0), xp.clamp(seq_pos, 0, self.seq_width - 1)]
        follows = in_seq & (tokens == expected)
        seq_pos = seq_pos + follows
        finished_seq = follows & (seq_pos >= seq_stop)
        after_wait = xp.where(finished_seq & (seq_kind == SEQ_WAIT), 1, after_wait)
        seq_kind = xp.where(finished_seq | (in_seq & ~follows), SEQ_NONE, seq_kind)
        free = ok & ~follows

        # A produced token while thinking: an injected wait, an end, or a thinking token (the model's own).
        thinking = free & (phase == PHASE_THINKING)
        max_think, end0 = c[:, CfgI.MAX], c[:, CfgI.END0]
        at_max = think >= max_think
        window = min_window(
            thinking, think, c[:, CfgI.MIN], max_think, waits, c[:, CfgI.MAX_WAITS], after_wait
        )
        injected = window & (tokens == c[:, CfgI.WAIT0])
        decided_here = d[:, Dyn.DEC_POS] == positions
        if not infer_injections:
            injected = injected & decided_here & (d[:, Dyn.DEC_KIND] == DECIDED_WAIT)
        forced_end = at_max | (decided_here & (d[:, Dyn.DEC_KIND] == DECIDED_END))
        attempt_end = c[:, CfgI.END_IS_ATTEMPT] != 0
        is_end = thinking & ~injected & (tokens == end0) & (attempt_end | forced_end)
        budget_stop = is_end & at_max

        # The delimiter window: the start delimiter before thinking, a text end delimiter inside it.
        before = free & (phase == PHASE_BEFORE)
        slides = before | (thinking & ~injected & ~is_end)
        recent = recent_all[slots]
        recent = xp.where(slides[:, None], xp.cat_cols(recent[:, 1:], tokens[:, None]), recent)
        start_pattern, end_pattern = xp.view(self.start_pattern)[slots], xp.view(self.end_pattern)[slots]
        started = before & xp.all_rows((recent == start_pattern) | (start_pattern == ANY_TOKEN))
        text_end = (
            thinking
            & ~injected
            & ~is_end
            & ~attempt_end
            & xp.all_rows((recent == end_pattern) | (end_pattern == ANY_TOKEN))
        )
        recent_all[slots] = xp.where((started | text_end)[:, None], PAD_TOKEN, recent)

        end_len, prefix_len, wait_len = c[:, CfgI.END_LEN], c[:, CfgI.PREFIX_LEN], c[:, CfgI.WAIT_LEN]
        counted = thinking & ~injected & ~is_end & ~text_end
        # A text delimiter's first tokens were counted while it could still have been ordinary text.
        think = think + counted - text_end * (end_len - 1)
        waits = waits + injected
        after_wait = xp.where(counted, 0, xp.where(injected & (wait_len == 1), 1, after_wait))
        start_wait = injected & (wait_len > 1)
        end_rest = is_end & ((end_len > 1) | (budget_stop & (prefix_len > 0)))
        seq_kind = xp.where(start_wait, SEQ_WAIT, xp.where(end_rest, SEQ_END, seq_kind))
        seq_pos = xp.where(start_wait | end_rest, 1, seq_pos)
        seq_stop = xp.where(
            start_wait, wait_len, xp.where(end_rest, end_len + budget_stop * prefix_len, seq_stop)
        )
        ended = is_end | text_end
        new_phase = xp.where(started, PHASE_THINKING, xp.where(ended, PHASE_ANSWER, phase))
        budget = xp.where(ended, budget_stop * 1, d[:, Dyn.BUDGET_STOP])
        dyn[slots] = xp.stack_cols(
            [
                new_phase,
                think,
                waits,
                seq_kind,
                seq_pos,
                seq_stop,
                d[:, Dyn.DEC_POS],
                d[:, Dyn.DEC_KIND],
                budget,
                after_wait,
            ]
        )

    def apply(
        self,
        logits: torch.Tensor,
        slots: torch.Tensor,
        slots_np: np.ndarray,
        out_len: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Edit the logits rows of controlled requests for their next token (in place; also returned).

        Args:
            logits: [num_rows, vocab] float logits (before temperature).
            slots: [n] int64 slot of each handled row (device).
            slots_np: The same slots on the host (to skip work without a device sync).
            out_len: [n] int64 number of tokens each request has generated so far (the position being sampled).
            rows: [n] int64 logits row of each slot; `None` means row i is `slots[i]`'s (n == num_rows).
        """
        if not self.active_np[slots_np].any():
            return logits
        xp = ops_for(self.device, self.pin_memory, logits, slots, out_len, rows)
        scores = xp.view(logits)
        slots, out_len = xp.view(slots), xp.view(out_len)
        rows = xp.view(rows) if rows is not None else xp.arange(len(slots_np), slots)
        dyn = xp.view(self.dyn)
        d, c = dyn[slots], xp.view(self.cfg_i)[slots]
        act = xp.view(self.active)[slots]
        phase, think, after_wait = d[:, Dyn.PHASE], d[:, Dyn.THINK], d[:, Dyn.AFTER_WAIT]
        seq_kind, seq_pos = d[:, Dyn.SEQ], d[:, Dyn.SEQ_POS]
        end0 = c[:, CfgI.END0]

        in_seq = act & (seq_kind >= 0)
        free = act & ~in_seq & (phase == PHASE_THINKING)
        at_max = free & (think >= c[:, CfgI.MAX])
        thinking_on = free & ~at_max
        cooling = thinking_on & (after_wait != 0)
        window = min_window(
            free, think, c[:, CfgI.MIN], c[:, CfgI.MAX], d[:, Dyn.WAITS], c[:, CfgI.MAX_WAITS], after_wait
        )
        end_allowed = thinking_on & ~cooling & ~window
        attempt_end = c[:, CfgI.END_IS_ATTEMPT] != 0
        has_stops = c[:, CfgI.HAS_STOPS] != 0
        text_decision = end_allowed & ~attempt_end & has_stops  # an EOS attempt forces a text delimiter
        merge = end_allowed & attempt_end & has_stops  # EOS attempts become E[0]

        # TS: scale the end token's logit while thinking freely (the decisions see the scaled logit).
        ts_mode, ts_value = c[:, CfgI.TS_MODE], xp.view(self.cfg_f)[slots, CfgF.TS_VALUE]
        z_end = scores[rows, end0]
        scaled = xp.where(ts_mode == TS_TEMPERATURE, z_end / xp.clamp(ts_value, 1e-30), z_end + ts_value)
        z_end = xp.where(thinking_on & (ts_mode != TS_OFF), scaled, z_end)
        scores[rows, end0] = z_end

        decides = window | text_decision
        decided = decides & False
        if self.decides_np[slots_np].any():
            decided = self._decide(xp, scores, rows, slots, slots_np, decides, out_len, c)
            dyn[slots, Dyn.DEC_POS] = xp.where(decides, out_len, d[:, Dyn.DEC_POS])
            kind = xp.where(window & decided, DECIDED_WAIT, xp.where(decided, DECIDED_END, DECIDED_NOTHING))
            dyn[slots, Dyn.DEC_KIND] = xp.where(decides, kind, d[:, Dyn.DEC_KIND])

        # Attempt tokens that may not be produced now, and EOS attempts merged into the end token.
        exclude = cooling | (decides & ~decided)
        if self.has_stops_np[slots_np].any():
            stops = xp.view(self.stops)[slots]
            stop_z = xp.where(xp.view(self.stop_valid)[slots], scores[rows[:, None], stops], -math.inf)
            greedy = c[:, CfgI.GREEDY] != 0
            temperature = xp.view(self.cfg_f)[slots, CfgF.TEMPERATURE]
            temperature = xp.where(
                greedy | (temperature <= 0), 1.0, temperature
            )  # (rows it does not control)
            both = xp.cat_cols(z_end[:, None], stop_z)
            merged = xp.where(
                greedy, xp.max_rows(both), temperature * xp.logsumexp_rows(both / temperature[:, None])
            )
            scores[rows, end0] = xp.where(merge, merged, xp.where(exclude & attempt_end, -math.inf, z_end))
            kill = (merge | exclude) & has_stops
            scores[rows[:, None], stops] = xp.where(kill[:, None], -math.inf, scores[rows[:, None], stops])
        else:
            scores[rows, end0] = xp.where(exclude & attempt_end, -math.inf, z_end)

        if self.may_force_np[slots_np].any():
            seq_token = xp.view(self.seq)[
                slots, xp.clamp(seq_kind, 0), xp.clamp(seq_pos, 0, self.seq_width - 1)
            ]
            forced = xp.where(
                in_seq,
                seq_token,
                xp.where(
                    at_max | (text_decision & decided),
                    end0,
                    xp.where(window & decided, c[:, CfgI.WAIT0], PAD_TOKEN),
                ),
            )
            force = forced >= 0
            xp.fill_rows_(scores, rows, force, -math.inf)
            column = xp.clamp(forced, 0)
            scores[rows, column] = xp.where(force, 0.0, scores[rows, column])
        return logits

    def _decide(self, xp, scores, rows, slots, slots_np, decides, out_len, c):
        """Whether each row makes an end attempt now: argmax (greedy) or a seeded draw (sampled).

        Only rows in `decides` matter. On an accelerator the candidates are chosen on the host (rows of requests
        that can need a decision) so nothing synchronises; on the CPU the vocabulary passes are restricted to the
        rows actually deciding.
        """
        decided = decides & False
        candidates = xp.candidates(decides, self.decides_np[slots_np])
        if candidates.size == 0:
            return decided
        greedy = self.greedy_np[slots_np[candidates]]
        end0 = c[:, CfgI.END0]
        head = xp.where(c[:, CfgI.END_IS_ATTEMPT] != 0, end0, PAD_TOKEN)
        stops = xp.where(xp.view(self.stop_valid)[slots], xp.view(self.stops)[slots], PAD_TOKEN)
        attempt_tokens = xp.cat_cols(head[:, None], stops)  # [n, 1 + S]
        for pick, is_greedy in ((candidates[greedy], True), (candidates[~greedy], False)):
            if pick.size == 0:
                continue
            sel = xp.index(pick)
            tokens = attempt_tokens[sel]
            logits = scores[rows[sel]]
            if is_greedy:
                top = logits.argmax(-1)
                decided[sel] = xp.any_rows((tokens == top[:, None]) & (tokens >= 0))
            else:
                decided[sel] = self._sampled_attempts(
                    xp, logits, tokens, slots[sel], out_len[sel], pick, slots_np
                )
        return decided & decides

    def _sampled_attempts(self, xp, logits, tokens, slots, positions, pick, slots_np):
        """Seeded decisions u < p(attempt) for sampled rows (`pick` indexes the host arrays)."""
        f = xp.view(self.cfg_f)[slots]
        u = counter_uniform(xp.view(self.cfg_i)[slots, CfgI.SEED], positions)
        temps = self.temperature_np[slots_np[pick]]
        temperature = None if (temps == 1.0).all() else xp.to_torch(f[:, CfgF.TEMPERATURE])
        top_k = top_p = min_p = None
        if self.truncates_np[slots_np[pick]].any():
            top_k = xp.to_torch(xp.view(self.cfg_i)[slots, CfgI.TOP_K])
            top_p, min_p = xp.to_torch(f[:, CfgF.TOP_P]), xp.to_torch(f[:, CfgF.MIN_P])
            p = attempt_probability(
                xp.to_torch(logits), xp.to_torch(tokens), temperature, top_k, top_p, min_p, distinct=True
            )
            return u < xp.from_torch(p)
        # Without truncation p(attempt) <= sum_a exp((z_a - z_max) / T): a draw above that bound is "no attempt"
        # without the exp-sum over the vocabulary (exact; on the CPU most rows stop here).
        scale = f[:, CfgF.TEMPERATURE][:, None] if temperature is not None else 1.0
        z = xp.where(
            tokens >= 0, logits[xp.arange(tokens.shape[0], tokens)[:, None], xp.clamp(tokens, 0)], -math.inf
        )
        bound = xp.exp_sum_rows((z - xp.max_rows(logits)[:, None]) / scale) * (1 + 1e-5)
        need = xp.candidates(u < bound, None)
        result = u < 0.0
        if need.size:
            sub = xp.index(need)
            p = attempt_probability(
                xp.to_torch(logits[sub]),
                xp.to_torch(tokens[sub]),
                None if temperature is None else temperature[sub],
                distinct=True,  # E[0] and the request's stop ids differ (resolve_thinking); padding is -1
            )
            result[sub] = u[sub] < xp.from_torch(p)
        return result

    # -- inspection ------------------------------------------------------------------------------------------
    def thinking_done(self) -> torch.Tensor:
        """[num_slots] bool: the think block is closed and its forced tail (delimiter, answer prefix) written."""
        return (self.dyn[:, Dyn.PHASE] == PHASE_ANSWER) & (self.dyn[:, Dyn.SEQ] == SEQ_NONE)

    def state(self, slot: int) -> dict[str, int]:
        """One slot's dynamic state as Python ints (synchronises; for tests and debugging)."""
        values = self.dyn[slot].tolist()
        return {column.name.lower(): values[column] for column in Dyn}
