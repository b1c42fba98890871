"""Thinking control for Hugging Face transformers' `generate()`: the same config, the same core as in vLLM.

```python
from vllm_ttsplugin import ThinkingConfig, ThinkingLogitsProcessor, ThinkingStoppingCriteria

config = ThinkingConfig(tts_min_think=64, tts_max_think=512, tts_answer_prefix="\\nFinal Answer:")
processor = ThinkingLogitsProcessor(config, tokenizer)
out = model.generate(**inputs, logits_processor=[processor], do_sample=False, max_new_tokens=1024)
```

transformers runs custom logits processors after its own ones (e.g. `sequence_bias`, repetition penalty) and
before temperature, top-k, top-p and min-p, like vLLM. Since the processor cannot see `generate()`'s sampling
arguments, pass the same `do_sample`, `temperature`, `top_k`, `top_p`, `min_p` to it (they decide what "the
model tries to end" means for the min budget); `seed` keys its decisions (the row index is added per row, like
vLLM's `n > 1` children). Beam search is not supported (rows are reordered between steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, StoppingCriteria

from vllm_ttsplugin.config import ThinkingConfig
from vllm_ttsplugin.thinking import D_PHASE, D_SEQ, PHASE_ANSWER, SEQ_NONE, ThinkingControl, scan_prompt
from vllm_ttsplugin.vocab import SamplingView, ThinkingSpec, resolve_thinking, vocab_for


class ThinkingLogitsProcessor(LogitsProcessor):
    """s1 budget forcing and TS for `model.generate()`.

    Args:
        config (`ThinkingConfig` or a list of them): One config for every row, or one per batch row.
        tokenizer: The model's tokenizer (delimiters are detected from it, texts are encoded with it).
        do_sample (`bool`, defaults to `False`): Same as `generate(do_sample=...)`.
        temperature, top_k, top_p, min_p: Same as `generate(...)` (only read when `do_sample`).
        seed (`int`, *optional*): Seeds the min-budget decisions of sampled rows (row i uses `seed + i`). By
            default one is drawn from torch's global generator at the first step.
        vocab_size (`int`, *optional*): Number of logits the model produces (defaults to `len(tokenizer)`).
    """

    def __init__(
        self,
        config: ThinkingConfig | Sequence[ThinkingConfig],
        tokenizer: Any,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        seed: int | None = None,
        vocab_size: int | None = None,
    ) -> None:
        self.vocab = vocab_for(tokenizer, vocab_size)
        sampling = SamplingView(
            temperature=float(temperature) if do_sample else 0.0,
            top_k=int(top_k or 0) if do_sample else 0,
            top_p=float(top_p if top_p is not None else 1.0) if do_sample else 1.0,
            min_p=float(min_p or 0.0) if do_sample else 0.0,
            seed=None,
        )
        configs = [config] if isinstance(config, ThinkingConfig) else list(config)
        stops = set(self.vocab.eos_ids)
        self.specs: list[ThinkingSpec | None] = [
            resolve_thinking(c.validate(), self.vocab, sampling, stops) if c.is_active else None
            for c in configs
        ]
        self.seed = seed
        self.control: ThinkingControl | None = None
        self.prompt_len = 0
        self.seen_len = 0

    def reset(self) -> None:
        """Forget the current generation (a new `generate()` call is also detected automatically)."""
        self.control = None

    def _start(self, input_ids: torch.Tensor) -> None:
        batch, length = input_ids.shape
        specs = self.specs * batch if len(self.specs) == 1 else self.specs
        if len(specs) != batch:
            raise ValueError(f"got {len(self.specs)} configs for a batch of {batch} rows")
        self.control = ThinkingControl(batch, input_ids.device)
        seed = self.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        chosen = [i for i, s in enumerate(specs) if s is not None]
        if chosen:
            width = self.control.required_start_width([specs[i] for i in chosen])
            scans = [scan_prompt(input_ids[i], specs[i].start_ids, specs[i].end_ids, width) for i in chosen]
            self.control.admit(
                chosen,
                [specs[i] for i in chosen],
                [seed + i for i in chosen],
                torch.stack([s[0] for s in scans]),
                torch.stack([s[1] for s in scans]),
            )
        self.prompt_len = self.seen_len = length
        self._slots = torch.arange(batch, device=input_ids.device)
        self._slots_np = np.arange(batch)

    def sync(self, input_ids: torch.Tensor) -> None:
        """Observe the newest token of every row (idempotent within a step)."""
        batch, length = input_ids.shape
        fresh = (
            self.control is None
            or batch != self.control.num_slots
            or length < self.seen_len
            or length > self.seen_len + 1
        )
        if fresh:
            self._start(input_ids)
        elif length == self.seen_len + 1:
            positions = torch.full((batch,), length - 1 - self.prompt_len, device=input_ids.device)
            self.control.observe(self._slots, input_ids[:, -1].long(), positions)
            self.seen_len = length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.sync(input_ids)
        out_len = torch.full((input_ids.shape[0],), self.seen_len - self.prompt_len, device=scores.device)
        return self.control.apply(scores, self._slots, self._slots_np, out_len)

    def is_thinking_done(self) -> torch.Tensor:
        """[batch] bool: the think block is closed and its forced tail (delimiter, answer prefix) is written."""
        d = self.control.dyn
        return (d[:, D_PHASE] == PHASE_ANSWER) & (d[:, D_SEQ] == SEQ_NONE)


class ThinkingStoppingCriteria(StoppingCriteria):
    """Stop each row once its thinking has ended (after the end delimiter and any forced answer prefix).

    For generating reasoning only (e.g. s1's thinking phase, or handing the answer to another model). Pass the
    same `ThinkingLogitsProcessor` that controls the generation.
    """

    def __init__(self, processor: ThinkingLogitsProcessor) -> None:
        self.processor = processor

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        self.processor.sync(input_ids)
        return self.processor.is_thinking_done()
