"""Train the reasoner from a seed: `ttsplugin train-reasoner --out DIR` (CPU, one thread, ~8-15 min).

A Qwen2-architecture causal LM (~0.9M parameters) learns the task's traces: the loss covers everything the
assistant writes (thinking, `</think>`, the answer, EOS) except the wrong results of slips, so the model learns
to catch and correct slips without learning to make them. Problems are drawn from the train split only.
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vllm_ttsplugin.reasoner.task import answer_text, make_problems, trace
from vllm_ttsplugin.reasoner.tokenizer import IM_END, THINK_END, build_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (with the code)."""

    seed: int = 0
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    threads: int = 1


def build_model(tokenizer, config: TrainConfig):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=1024,
        initializer_range=0.02,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model_config.dtype = "float32"
    torch.manual_seed(config.seed)
    model = Qwen2ForCausalLM(model_config).to(torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


def encode_example(tokenizer, problem, rng: random.Random) -> tuple[list[int], list[int]]:
    """Token ids of prompt + trace and the labels (-100 where no loss: the prompt, slipped results)."""
    prompt = tokenizer.apply_chat_template(problem.messages, tokenize=False, add_generation_prompt=True)
    thinking, wrong_spans = trace(problem, rng)
    completion = f"{thinking}{THINK_END}\n{answer_text(problem)}{IM_END}"
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    encoded = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        masked = any(start < b and a < end for a, b in wrong_spans)
        labels.append(-100 if masked else token)
    return prompt_ids + encoded["input_ids"], [-100] * len(prompt_ids) + labels


def _batch(tokenizer, problems, rng):
    import torch

    examples = [encode_example(tokenizer, p, rng) for p in problems]
    width = max(len(ids) for ids, _ in examples)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in examples])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in examples])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in examples])
    return ids, labels, mask


def train(
    out: str | Path, config: TrainConfig = TrainConfig(), log=print, checkpoint_every: int | None = None
) -> dict:
    """Train and save the model folder `out` (weights, tokenizer, chat template, `training.json`).

    `checkpoint_every`: also save `out/checkpoint-STEP` folders while training (for development).
    """
    import torch

    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, config)
    params = sum(p.numel() for p in model.parameters())
    log(f"model: {params:,} parameters; {config}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    # One stream of training problems: a fresh set per step, drawn from the train split only.
    rng = random.Random(f"reasoner-train-{config.seed}")
    model.train()
    losses = []
    for step in range(config.steps):
        problems = make_problems(config.batch_size, seed=rng.getrandbits(32), split="train")
        ids, labels, mask = _batch(tokenizer, problems, rng)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step == 0:
            recent = losses[-100:]
            log(
                f"step {step + 1}/{config.steps} loss {sum(recent) / len(recent):.4f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
        if checkpoint_every and (step + 1) % checkpoint_every == 0:
            model.save_pretrained(Path(out) / f"checkpoint-{step + 1}", safe_serialization=True)
            tokenizer.save_pretrained(Path(out) / f"checkpoint-{step + 1}")
    seconds = time.perf_counter() - start
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    record = {
        "config": asdict(config),
        "parameters": params,
        "train_seconds": round(seconds, 1),
        "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {config.threads} torch threads",
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"saved {out} in {seconds:.0f} s")
    return record
