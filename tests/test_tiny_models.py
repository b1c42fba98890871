"""The locally built tiny models: tokenizer/delimiter shapes, determinism, and loading in transformers."""

from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vllm_ttsplugin.testing import IM_END, IM_START, build_tiny_reasoning_model, load_tiny_model_info


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_delimiters_are_single_added_tokens(tiny_model_dir):
    info = load_tiny_model_info(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert (info.think_start, info.think_end) == ("<think>", "</think>")
    assert len(info.think_start_ids) == 1 and len(info.think_end_ids) == 1
    assert tok.convert_ids_to_tokens(info.think_end_ids) == ["</think>"]
    # Ordinary added tokens: they survive skip_special_tokens (as Qwen3/R1 delimiters do).
    assert not tok.added_tokens_decoder[info.think_end_ids[0]].special
    assert tok.decode(info.think_end_ids, skip_special_tokens=True) == "</think>"
    # Encoding text containing the delimiter yields the delimiter id, not its characters.
    ids = tok.encode("a</think>b", add_special_tokens=False)
    assert info.think_end_ids[0] in ids
    assert info.eos_token_id == tok.convert_tokens_to_ids(IM_END) == tok.eos_token_id
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n<think>\n"
    assert info.vocab_size == len(tok)


def test_special_token_delimiters(tmp_path):
    info = build_tiny_reasoning_model(tmp_path, delimiters_as="special")
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(info.think_start_ids) == 1 and len(info.think_end_ids) == 1
    assert all(tok.added_tokens_decoder[i].special for i in info.think_start_ids + info.think_end_ids)
    assert tok.decode(info.think_start_ids + info.think_end_ids, skip_special_tokens=True) == ""


def test_multi_token_delimiters_s1_style(tmp_path):
    info = build_tiny_reasoning_model(
        tmp_path,
        think_start="<|im_start|>think",
        think_end="<|im_start|>answer",
        delimiters_as="text",
        template_opens_think=False,
    )
    tok = AutoTokenizer.from_pretrained(tmp_path)
    im_start = tok.convert_tokens_to_ids(IM_START)
    assert info.think_start_ids == [im_start, tok.convert_tokens_to_ids("think")]
    assert info.think_end_ids == [im_start, tok.convert_tokens_to_ids("answer")]
    assert tok.decode(info.think_end_ids) == "<|im_start|>answer"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith(f"{IM_START}assistant\n")


def test_same_seed_same_files_other_seed_other_weights(tmp_path):
    a = build_tiny_reasoning_model(tmp_path / "a", seed=3)
    b = build_tiny_reasoning_model(tmp_path / "b", seed=3)
    c = build_tiny_reasoning_model(tmp_path / "c", seed=4)
    assert a.think_end_ids == b.think_end_ids == c.think_end_ids
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(tmp_path / "a" / name) == _sha(tmp_path / "b" / name)
    assert _sha(tmp_path / "a" / "tokenizer.json") == _sha(tmp_path / "c" / "tokenizer.json")
    assert _sha(tmp_path / "a" / "model.safetensors") != _sha(tmp_path / "c" / "model.safetensors")


def test_bad_builder_arguments(tmp_path):
    with pytest.raises(ValueError, match="delimiters_as"):
        build_tiny_reasoning_model(tmp_path, delimiters_as="bytes")
    with pytest.raises(ValueError, match="think_start"):
        build_tiny_reasoning_model(tmp_path, think_start="", think_end="</think>")
    with pytest.raises(ValueError, match="think_start"):
        build_tiny_reasoning_model(tmp_path, think_start="<t>", think_end="<t>")


def test_transformers_loads_and_generates_varied_text(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = tok("What is 2 + 2?", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    assert len(new) == 24
    # initializer_range=0.1 keeps greedy decoding from repeating a single token.
    assert len(set(new)) > 4
