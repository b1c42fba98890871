"""Per-step components composed by `TTSLogitsProcessor`, sharing one slot bookkeeping.

An adapter (vLLM V1 runner, vLLM V2 runner) maps its engine's batch onto slots and drives every component with
the same calls: admit / release / permute (membership), observe (the token each request produced), apply (edit
the logits for the next token). Components run in list order, so a later component overrides an earlier one on a
row both touch. The intended order, and so the priority of the controls, is:

    [ThinkingComponent, FirstFinishComponent]

i.e. a First Finish stop (force EOS) > a forced sequence in progress (end delimiter / answer prefix / wait text,
once started always completed) > max-budget forcing > min-budget wait injection > TS scaling (the last four are
ordered inside `ThinkingComponent`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from vllm_ttsplugin.config import ThinkingConfig, ThinkingConfigError
from vllm_ttsplugin.thinking import ThinkingControl, scan_prompt
from vllm_ttsplugin.vocab import SamplingView, ThinkingSpec, TokenizerVocab, resolve_thinking

logger = logging.getLogger("vllm_ttsplugin")

# A prompt as the adapter has it: a 1-D token tensor (host or device) or None (prompt embeddings).
Prompt = torch.Tensor | None


class SlotComponent(ABC):
    """A control that runs every decode step on the processor's request slots.

    Subclasses declare the `extra_args` keys they own, parse a request into an opaque per-request object at
    admission, and keep their own per-slot state (preallocated, indexed by slot).
    """

    keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def parse(
        cls, params: Any, vocab: TokenizerVocab | None, known_keys: Sequence[str] = ()
    ) -> object | None:
        """Validate a request's params; return its per-request object, or `None` if it is not ours.

        Raises `ThinkingConfigError` (a `ValueError`) naming the parameter. With `vocab=None` only the checks that
        need no tokenizer are done (the returned object is then only meaningful as "is ours").
        """

    @abstractmethod
    def __init__(
        self, num_slots: int, device: torch.device, vocab: TokenizerVocab | None, seed: int
    ) -> None: ...

    vocab: TokenizerVocab | None = None

    def parse_engine(self, params: Any, known_keys: Sequence[str] = ()) -> object | None:
        """Engine-side parse: never raises (admission already validated); logs and skips what it cannot use."""
        try:
            return self.parse(params, self.vocab, known_keys)
        except ThinkingConfigError as exc:
            logger.warning("ttsplugin: request left without %s: %s", type(self).__name__, exc)
            return None

    @property
    @abstractmethod
    def active_np(self) -> np.ndarray:
        """[num_slots] host mask of slots this component handles."""

    @abstractmethod
    def admit(self, slots: Sequence[int], requests: Sequence[object], prompts: Sequence[Prompt]) -> None: ...

    @abstractmethod
    def release(self, slots: Sequence[int]) -> None: ...

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

    @abstractmethod
    def apply(
        self,
        logits: torch.Tensor,
        slots: torch.Tensor,
        slots_np: np.ndarray,
        out_len: torch.Tensor,
        rows: torch.Tensor | None,
    ) -> torch.Tensor: ...


def _stop_ids(params: Any) -> set[int]:
    ids = set(getattr(params, "stop_token_ids", None) or ())
    ids |= set(getattr(params, "_all_stop_token_ids", None) or ())
    return ids


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
        return resolve_thinking(config, vocab, SamplingView.from_params(params), _stop_ids(params))

    def __init__(self, num_slots: int, device: torch.device, vocab: TokenizerVocab | None, seed: int) -> None:
        self.control = ThinkingControl(num_slots, device)
        self.vocab = vocab
        # Seeds for requests without one: a private generator seeded from the engine seed, so unseeded runs are
        # reproducible like vLLM's own and the global RNG (which vLLM's sampler uses) is not disturbed.
        self._seeds = torch.Generator().manual_seed(int(seed or 0))

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
        width = self.control.required_start_width(specs)
        opens, tails, seeds = [], [], []
        for spec, prompt in zip(specs, prompts, strict=True):
            # Prompt embeddings (no token ids): nothing to scan, so thinking starts at the start delimiter.
            tokens = prompt if prompt is not None else torch.empty(0, dtype=torch.long)
            is_open, tail = scan_prompt(tokens, spec.start_ids, spec.end_ids, width)
            opens.append(is_open.to(self.control.device))
            tails.append(tail.to(self.control.device))
            seed = spec.sampling.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds).item())
            seeds.append(seed)
        self.control.admit(list(slots), specs, seeds, torch.stack(opens), torch.stack(tails))

    def release(self, slots: Sequence[int]) -> None:
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


# Components composed into TTSLogitsProcessor, in application order (later wins on a shared row).
COMPONENTS: list[type[SlotComponent]] = [ThinkingComponent]
