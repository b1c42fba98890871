"""The model card (`README.md` beside the weights), written from `training.json` and eval results."""

from __future__ import annotations

import json
from pathlib import Path

from vllm_ttsplugin.reasoner.task import CHECK_RATE, SLIP_RATE


def _pct(row: dict) -> str:
    lo, hi = row["ci95"]
    return f"{100 * row['accuracy']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] (n = {row['n']})"


def write_card(folder: str | Path, results: dict, *, train_command: str, eval_command: str) -> Path:
    """Write `folder/README.md` from `folder/training.json` and `results` (from `curves.evaluate`)."""
    folder = Path(folder)
    training = json.loads((folder / "training.json").read_text())
    config = training["config"]
    arms = results["arms"]
    greedy = next(r for r in arms["no_control"] if r["name"] == "greedy")
    sampled = next(r for r in arms["no_control"] if r["name"] == "T=0.6")
    quarter = next(
        r for r in arms["max_budget"] if r["settings"]["tts_max_think"] == results["quarter_budget"]
    )
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    by_steps = ", ".join(
        f"{k}: {100 * v['accuracy']:.0f} %" for k, v in results["accuracy_by_steps_greedy"].items()
    )
    text = f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags: [reasoning, tiny, test-time-scaling, ttsplugin]
---
# ttsplugin reasoner (tiny, trained here)

A {training["parameters"]:,}-parameter Qwen2-architecture causal LM that thinks before it answers, trained from
scratch on this repository's procedural task in {training["train_seconds"] / 60:.1f} minutes on a CPU. It exists
to make test-time scaling measurable in tests, demos and benchmarks: it runs in `vllm.LLM`, the OpenAI server and
transformers with no download, and its accuracy depends on how long it thinks.

**What it does.** Given a chain of additions and subtractions such as `57+8-3+9-6` (a start value 10..99, 2-8
single-digit operations, every intermediate value in 0..99), it writes one line per operation inside
`<think>...</think>` (`57+8=65`), sometimes notices a slip and writes `Wait, 57+8=65`, then answers `Answer: 71`
and ends with `<|im_end|>`. Use the chat template (one user turn whose content is the expression); it opens
`<think>` like Qwen3's thinking templates.

**What it is not.** Not a language model: it knows nothing beyond this task's format; other inputs give
meaningless output. Numbers outside 0..99, other operators or longer chains are out of distribution.

## Measured (test split, never seen in training; `{eval_command}`)

| setting | accuracy (95 % Wilson CI) | mean thinking tokens |
|---|---|---|
| greedy, no control | {_pct(greedy)} | {greedy["mean_thinking_tokens"]:.1f} |
| temperature 0.6, no control | {_pct(sampled)} | {sampled["mean_thinking_tokens"]:.1f} |
| greedy, `tts_max_think={results["quarter_budget"]}` (a quarter of the median natural {results["median_natural_thinking_tokens"]:g}) | {_pct(quarter)} | {quarter["mean_thinking_tokens"]:.1f} |

Greedy accuracy by number of operations: {by_steps}. Engine: {results["engine"]}. The full curves (budgets,
waits, TS, First Finish Search) are in the repository's README and BENCHMARKS.md.

## Files and format

Hugging Face folder: `config.json` (Qwen2ForCausalLM, {config["num_layers"]} layers, hidden {config["hidden_size"]},
{config["num_heads"]} heads / {config["num_kv_heads"]} KV heads, MLP {config["intermediate_size"]}, tied embeddings,
float32), `model.safetensors`, `tokenizer.json` (byte-level BPE trained with `tokenizers`, digits one per token;
`<think>`, `</think>`, `<|im_start|>`, `<|im_end|>` (EOS) and `<|endoftext|>` (pad) are special tokens),
`tokenizer_config.json`, `chat_template.jinja`, `training.json`, `eval_summary.json`, `SHA256SUMS` ({size / 1e6:.1f} MB in all).
`vllm_ttsplugin.reasoner.model_dir()` checks every file against `SHA256SUMS` and names a missing or corrupt one.
Load it in vLLM with `dtype="float32"` (vLLM would pick bf16, whose greedy outputs differ from transformers').

## Training (reproduce with `{train_command}`)

Seed {config["seed"]}; {config["steps"]} AdamW steps (lr {config["learning_rate"]}, warm-up {config["warmup_steps"]},
cosine to 5 %, weight decay {config["weight_decay"]}, batch {config["batch_size"]} problems, fresh problems every
step from the train split only); final training loss {training["final_loss"]}; {training["train_seconds"]:.0f} s
wall time with {config["threads"]} torch threads on {training["machine"]} (torch {training["torch"]}; the 2-core
machine was shared with other jobs while it ran). Splits are by a hash of the problem text (80/10/10), so no seed
can put a test problem into training. Traces slip on {100 * SLIP_RATE:g} % of lines (a wrong result, then `Wait, ...` with the
right one) and re-check {100 * CHECK_RATE:g} % of correct lines; the loss skips the wrong results, so the model learns to catch
slips, not to make them. Nothing in the data encodes ttsplugin's mechanics (no budgets, no forced tokens).
"""
    path = folder / "README.md"
    path.write_text(text)
    return path


def finalize_model_folder(
    folder: str | Path, results: dict, *, train_command: str, eval_command: str
) -> None:
    """After `ttsplugin eval`: the card, `eval_summary.json` (what the guard test checks) and `SHA256SUMS`."""
    from vllm_ttsplugin.reasoner.files import write_checksums

    folder = Path(folder)
    greedy = next(r for r in results["arms"]["no_control"] if r["name"] == "greedy")
    summary = {
        "num_problems": results["num_problems"],
        "seed": results["seed"],
        "split": results["split"],
        "greedy": {k: greedy[k] for k in ("n", "correct", "accuracy", "ci95")},
        "greedy_mean_thinking_tokens": greedy["mean_thinking_tokens"],
        "eval_command": eval_command,
    }
    (folder / "eval_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_card(folder, results, train_command=train_command, eval_command=eval_command)
    write_checksums(folder)
