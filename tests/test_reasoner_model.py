"""Guards the shipped reasoner: its files, its accuracy on a fixed test slice, and vLLM == transformers greedily.

The model card (`model/README.md`, from `model/eval_summary.json`) states greedy accuracy on 500 test problems
(seed 0). The first 50 of those problems are the slice here: greedy decoding is deterministic, so this is a
regression check, with a margin of 15 points for the slice being 50 problems rather than 500 (about 2.6 standard
errors of a 50-problem mean at 75 %).
"""

from __future__ import annotations

import gc
import json
import os

import pytest

from vllm_ttsplugin.reasoner import grade, make_problems, model_dir
from vllm_ttsplugin.reasoner.files import REQUIRED_FILES

SLICE = 50
MARGIN = 0.15
MAX_NEW_TOKENS = 300


def card_accuracy() -> float:
    summary = json.loads((model_dir() / "eval_summary.json").read_text())
    return summary["greedy"]["accuracy"]


def test_the_shipped_folder_is_complete_small_and_described():
    folder = model_dir()  # checks every file against SHA256SUMS
    assert all((folder / name).is_file() for name in REQUIRED_FILES)
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 25 * 2**20
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    card = (folder / "README.md").read_text()
    assert "ttsplugin train-reasoner" in card and f"{100 * card_accuracy():.1f} %" in card
    assert 0.5 <= card_accuracy() <= 0.95  # the target: thinking matters, the task is not solved


@pytest.fixture(scope="module")
def slice_problems():
    return make_problems(SLICE, seed=0, split="test")


@pytest.fixture(scope="module")
def hf_greedy(slice_problems):
    """transformers greedy completions (token ids) of the slice, one problem at a time (no padding)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    model = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=torch.float32).eval()
    outputs = []
    for problem in slice_problems:
        prompt = tokenizer.apply_chat_template(problem.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
        outputs.append(out[0, ids.shape[1] :].tolist())
    return tokenizer, outputs


def test_transformers_greedy_accuracy_holds_the_card_figure(hf_greedy, slice_problems):
    tokenizer, outputs = hf_greedy
    correct = sum(
        grade(tokenizer.decode(ids, skip_special_tokens=False), p)
        for ids, p in zip(outputs, slice_problems, strict=True)
    )
    assert correct / SLICE >= card_accuracy() - MARGIN, (correct, card_accuracy())


@pytest.mark.vllm
def test_vllm_greedy_matches_transformers_token_for_token_and_the_accuracy(hf_greedy, slice_problems):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm_ttsplugin.reasoner.harness import engine_kwargs, load_llm, prompts_for, sampling_params

    _, hf_outputs = hf_greedy
    llm = load_llm(**engine_kwargs(max_model_len=512, kv_cache_mib=64, max_num_seqs=64))
    try:
        params = sampling_params()
        params.max_tokens = MAX_NEW_TOKENS
        outputs = llm.generate(prompts_for(llm, slice_problems), params, use_tqdm=False)
    finally:
        del llm
        gc.collect()
    vllm_ids = [list(o.outputs[0].token_ids) for o in outputs]
    # Both stop on EOS and keep it in the completion's ids.
    assert vllm_ids == hf_outputs, [
        i for i, (a, b) in enumerate(zip(vllm_ids, hf_outputs, strict=True)) if a != b
    ]
    correct = sum(grade(o.outputs[0].text, p) for o, p in zip(outputs, slice_problems, strict=True))
    assert correct / SLICE >= card_accuracy() - MARGIN


@pytest.mark.vllm
def test_eval_command_writes_results_with_intervals_and_plots(tmp_path):
    """`ttsplugin eval --quick` end to end in its own process (its own engine): JSON, CIs, plots."""
    import subprocess
    import sys

    out = tmp_path / "eval"
    argv = [sys.executable, "-m", "ttsplugin", "eval", "--quick", "--problems", "6", "--out", str(out)]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num_problems"] == 6 and results["split"] == "test"
    rows = [r for group in results["arms"].values() for r in group] + results["search"]["rows"]
    assert {"no_control", "max_budget", "forced_waits", "min_budget", "ts_end_bias"} <= set(results["arms"])
    for row in rows:
        lo, hi = row["ci95"]
        assert row["n"] >= 6 and 0 <= lo <= row["accuracy"] <= hi <= 1
    budgets = {r["settings"]["tts_max_think"]: r for r in results["arms"]["max_budget"]}
    for budget, row in budgets.items():  # the max budget is exact: no completion thinks longer
        assert row["mean_thinking_tokens"] <= budget
    waits = results["arms"]["forced_waits"]
    assert [r["mean_waits"] for r in waits][:2] == [0.0, 1.0]  # every greedy completion tries to end once
    for name in ("thinking_control.png", "forced_waits.png", "first_finish.png", "length_vs_correctness.png"):
        assert (out / name).stat().st_size > 1000
