"""Scalar reference of the thinking-control state machine: one request, plain Python.

The specification the batched core (`vllm_ttsplugin.thinking.ThinkingControl`) matches token for token (tests run
both on the same scripted logits), and the reader of finished completions (`vllm_ttsplugin.report` replays a
completion's tokens through it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vllm_ttsplugin.prompts import scan_prompt
from vllm_ttsplugin.thinking import (
    DECIDED_END,
    DECIDED_NOTHING,
    DECIDED_WAIT,
    NO_LIMIT,
    PHASE_ANSWER,
    PHASE_BEFORE,
    PHASE_THINKING,
    SEQ_END,
    SEQ_NONE,
    SEQ_WAIT,
    min_window,
)
from vllm_ttsplugin.vocab import ThinkingSpec


@dataclass(frozen=True)
class StepRule:
    """What the processor does to the logits of the next token.

    `kind`: `"free"` (untouched, apart from TS), `"force"` (only `token`), `"exclude"` (the `tokens` get -inf),
    `"decide_wait"` / `"decide_end"` (an end attempt over `tokens` is decided: attempt -> force the wait text's /
    the end delimiter's first token, else exclude `tokens`), `"merge"` (the `tokens` are merged into the end
    token: greedy max, sampled probabilities added). `scale_end`: TS applies to the end token first.
    """

    kind: str
    token: int | None = None
    tokens: tuple[int, ...] = ()
    scale_end: bool = False


@dataclass
class ThinkingTrace:
    """One request's thinking-control state, advanced token by token."""

    spec: ThinkingSpec
    phase: int = PHASE_BEFORE
    think: int = 0
    waits: int = 0
    seq: int = SEQ_NONE
    seq_pos: int = 0
    seq_stop: int = 0
    budget_stop: bool = False
    after_wait: int = 0
    recent: list[int] = field(default_factory=list)
    position: int = 0
    # Completion index of the first thinking token, of the end delimiter's first token, where waits start, and
    # every position whose token the processor forced.
    think_begin: int | None = None
    end_index: int | None = None
    wait_positions: list[int] = field(default_factory=list)
    forced_positions: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, spec: ThinkingSpec, prompt_ids: Sequence[int] | None) -> ThinkingTrace:
        prompt = torch.as_tensor(list(prompt_ids or []), dtype=torch.long)
        opens, tail = scan_prompt(prompt, spec.start_ids, spec.end_ids, max(len(spec.start_ids), 1))
        if bool(opens):
            return cls(spec=spec, phase=PHASE_THINKING, think_begin=0)
        return cls(spec=spec, phase=PHASE_BEFORE, recent=[t for t in tail.tolist() if t >= 0])

    @property
    def _max(self) -> int:
        return self.spec.max_think if self.spec.max_think is not None else NO_LIMIT

    @property
    def _max_waits(self) -> int:
        return self.spec.max_waits if self.spec.max_waits is not None else NO_LIMIT

    def _sequence(self) -> tuple[int, ...]:
        spec = self.spec
        return spec.wait_ids if self.seq == SEQ_WAIT else spec.end_ids + spec.answer_prefix_ids

    def _free_thinking(self) -> bool:
        return self.phase == PHASE_THINKING and self.seq == SEQ_NONE

    def in_window(self) -> bool:
        """Whether the next token gets a min-budget decision (an end attempt would become the wait text)."""
        return bool(
            min_window(
                self._free_thinking(),
                self.think,
                self.spec.min_think,
                self._max,
                self.waits,
                self._max_waits,
                self.after_wait,
            )
        )

    def rule(self) -> StepRule:
        """What the processor does to the next token's logits (the batched core's `apply`, for one request)."""
        spec = self.spec
        if self.seq != SEQ_NONE:
            return StepRule("force", token=self._sequence()[self.seq_pos])
        if self.phase != PHASE_THINKING:
            return StepRule("free")
        if self.think >= self._max:
            return StepRule("force", token=spec.end_ids[0])
        scale = spec.end_temperature is not None or spec.end_bias is not None
        if self.after_wait:
            return StepRule("exclude", tokens=spec.attempt_ids, scale_end=scale)
        if self.in_window():
            return StepRule("decide_wait", tokens=spec.attempt_ids, scale_end=scale)
        if spec.stop_ids and not spec.end_is_attempt:
            return StepRule("decide_end", tokens=spec.stop_ids, scale_end=scale)
        if spec.stop_ids:
            return StepRule("merge", tokens=spec.stop_ids, scale_end=scale)
        return StepRule("free", scale_end=scale)

    def observe(self, token: int, decision: int | None = None) -> None:
        """Advance by one produced token.

        Args:
            token: The token produced.
            decision: The decision `apply` recorded for this position (`DECIDED_*`); `None` when unknown (reading
                a finished completion): a wait text starting where an injection was possible counts as injected,
                and an end delimiter as the model's own (forced only at the max budget).
        """
        spec = self.spec
        if self.seq != SEQ_NONE:
            if token == self._sequence()[self.seq_pos]:
                self.forced_positions.append(self.position)
                self.seq_pos += 1
                if self.seq_pos >= self.seq_stop:
                    if self.seq == SEQ_WAIT:
                        self.after_wait = 1
                    self.seq = SEQ_NONE
                self.position += 1
                return
            self.seq = SEQ_NONE
        if self.phase == PHASE_THINKING:
            self._observe_thinking(token, decision)
        elif self.phase == PHASE_BEFORE:
            width = max(len(spec.start_ids), 1)
            self.recent = (self.recent + [token])[-width:]
            if spec.start_ids and self.recent[-len(spec.start_ids) :] == list(spec.start_ids):
                self.phase = PHASE_THINKING
                self.think_begin = self.position + 1
                self.recent = []
        self.position += 1

    def _observe_thinking(self, token: int, decision: int | None) -> None:
        spec = self.spec
        at_max = self.think >= self._max
        injected = self.in_window() and token == spec.wait_ids[0] and decision in (None, DECIDED_WAIT)
        forced_end = at_max or decision == DECIDED_END
        if injected:
            self.forced_positions.append(self.position)
            self.wait_positions.append(self.position)
            self.waits += 1
            if len(spec.wait_ids) > 1:
                self.seq, self.seq_pos, self.seq_stop = SEQ_WAIT, 1, len(spec.wait_ids)
            else:
                self.after_wait = 1
            return
        if token == spec.end_ids[0] and (spec.end_is_attempt or forced_end):
            if forced_end:
                self.forced_positions.append(self.position)
            self.budget_stop = at_max
            self.phase = PHASE_ANSWER
            self.end_index = self.position
            stop = len(spec.end_ids) + (len(spec.answer_prefix_ids) if self.budget_stop else 0)
            if stop > 1:
                self.seq, self.seq_pos, self.seq_stop = SEQ_END, 1, stop
            return
        self.recent = (self.recent + [token])[-len(spec.end_ids) :]
        if not spec.end_is_attempt and self.recent == list(spec.end_ids):
            # The model wrote the whole text delimiter: its first tokens were thinking tokens until now.
            self.think -= len(spec.end_ids) - 1
            self.budget_stop = False
            self.phase = PHASE_ANSWER
            self.end_index = self.position - len(spec.end_ids) + 1
            self.recent = []
            return
        self.think += 1
        self.after_wait = 0


__all__ = ["DECIDED_END", "DECIDED_NOTHING", "DECIDED_WAIT", "StepRule", "ThinkingTrace"]
