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
from vllm_ttsplugin.prompts import scan_prompt
from vllm_ttsplugin.sampling import int64_seed
from vllm_ttsplugin.thinking import ThinkingControl
from vllm_ttsplugin.vocab import SamplingView, ThinkingSpec, resolve_thinking, vocab_for

_TOKENIZER_EOS = object()


class ThinkingLogitsProcessor(LogitsProcessor):
    """s1 budget forcing and TS for `model.generate()`.

    Args:
        config (`ThinkingConfig` or a list of them): One config for every row, or one per batch row.
        tokenizer: The model's tokenizer (delimiters are detected from it, texts are encoded with it).
        do_sample (`bool`, defaults to `False`): Same as `generate(do_sample=...)`.
        temperature, top_k, top_p, min_p: Same as `generate(...)` (only read when `do_sample`).
        seed (`int`, *optional*): Seeds the min-budget decisions of sampled rows (row i uses `seed + i`). By
            default each `generate()` call derives one from `torch.initial_seed()` (so `torch.manual_seed(s)`
            makes runs reproducible) and a per-processor call counter; torch's random state is never consumed,
            so the sampled tokens of rows the processor does not control are the same as without it.
        vocab_size (`int`, *optional*): Number of logits the model produces (defaults to `len(tokenizer)`).
        eos_token_id (`int` or list of `int`, *optional*): The tokens that end generation, as passed to
            `generate()`; inside thinking they are end attempts (`tts_eos_in_thinking`). Defaults to the
            tokenizer's EOS; pass `None` when `generate()` runs without one.

    One processor follows one `generate()` call at a time: a call whose input is not the sequence it has been
    following (prompt + the tokens it observed, plus one) starts afresh. Reusing it for a new call whose prompt is
    exactly the previous output plus one token is indistinguishable from continuing; call `reset()` first.
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
        eos_token_id: Any = _TOKENIZER_EOS,
    ) -> None:
        self.vocab = vocab_for(tokenizer, vocab_size)
        sampling = SamplingView(
            temperature=float(temperature) if do_sample else 0.0,
            top_k=int(top_k or 0) if do_sample else 0,
            top_p=float(top_p if top_p is not None else 1.0) if do_sample else 1.0,
            min_p=float(min_p or 0.0) if do_sample else 0.0,
            seed=None,
        )
        if eos_token_id is _TOKENIZER_EOS:
            stops = tuple(sorted(self.vocab.eos_ids))
        elif eos_token_id is None:
            stops = ()
        else:
            stops = (
                (int(eos_token_id),) if isinstance(eos_token_id, int) else tuple(int(t) for t in eos_token_id)
            )
        configs = [config] if isinstance(config, ThinkingConfig) else list(config)
        self.specs: list[ThinkingSpec | None] = [
            resolve_thinking(c.validate(), self.vocab, sampling, stops) if c.is_active else None
            for c in configs
        ]
        self.seed = seed
        self.control: ThinkingControl | None = None
        self.prompt_len = 0
        self._calls = 0
        self._last: torch.Tensor | None = None  # the input_ids of the last step seen

    @property
    def seen_len(self) -> int:
        return 0 if self._last is None else self._last.shape[1]

    def reset(self) -> None:
        """Forget the current generation (a new `generate()` call is also detected automatically)."""
        self.control = None
        self._last = None

    def _start(self, input_ids: torch.Tensor) -> None:
        batch, length = input_ids.shape
        specs = self.specs * batch if len(self.specs) == 1 else self.specs
        if len(specs) != batch:
            raise ValueError(f"got {len(self.specs)} configs for a batch of {batch} rows")
        self.control = ThinkingControl(batch, input_ids.device)
        seed = self.seed
        if seed is None:
            seed = int64_seed(torch.initial_seed() * 0x9E3779B97F4A7C15 + self._calls)
        self._calls += 1
        chosen = [i for i, s in enumerate(specs) if s is not None]
        if chosen:
            width = self.control.required_window_width([specs[i] for i in chosen])
            scans = [scan_prompt(input_ids[i], specs[i].start_ids, specs[i].end_ids, width) for i in chosen]
            self.control.admit(
                chosen,
                [specs[i] for i in chosen],
                [seed + i for i in chosen],
                torch.stack([s[0] for s in scans]),
                torch.stack([s[1] for s in scans]),
            )
        self.prompt_len = length
        self._slots = torch.arange(batch, device=input_ids.device)
        self._slots_np = np.arange(batch)

    def _continues(self, input_ids: torch.Tensor) -> bool:
        """Whether `input_ids` is the sequence being followed, or it plus one token (one sync, like the stopping
        checks `generate()` does every step)."""
        last = self._last
        if self.control is None or last is None or input_ids.shape[0] != last.shape[0]:
            return False
        if input_ids.shape[1] == last.shape[1]:
            return torch.equal(input_ids, last)
        return input_ids.shape[1] == last.shape[1] + 1 and torch.equal(input_ids[:, :-1], last)

    def sync(self, input_ids: torch.Tensor) -> None:
        """Observe the newest token of every row (idempotent within a step)."""
        if input_ids is self._last:
            return
        if not self._continues(input_ids):
            self._start(input_ids)
        elif input_ids.shape[1] == self.seen_len + 1:
            positions = torch.full(
                (input_ids.shape[0],), self.seen_len - self.prompt_len, device=input_ids.device
            )
            self.control.observe(self._slots, input_ids[:, -1].long(), positions)
        self._last = input_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.sync(input_ids)
        out_len = torch.full((input_ids.shape[0],), self.seen_len - self.prompt_len, device=scores.device)
        return self.control.apply(scores, self._slots, self._slots_np, out_len)

    def is_thinking_done(self) -> torch.Tensor:
        """[batch] bool: the think block is closed and its forced tail (delimiter, answer prefix) is written."""
        return self.control.thinking_done()


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
