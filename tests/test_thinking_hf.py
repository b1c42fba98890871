"""Thinking control in transformers' generate(): budgets, seeded sampled decisions, per-row configs, stopping.

(Greedy token-identity with vLLM is tested in tests/test_thinking_vllm.py, next to the engine it compares with.)
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor

from vllm_ttsplugin import ThinkingConfig, ThinkingLogitsProcessor, ThinkingStoppingCriteria
from vllm_ttsplugin.report import report_tokens
from vllm_ttsplugin.vocab import vocab_for


class EndBias(LogitsProcessor):
    """A per-row bias on the end token (what vLLM's per-request `logit_bias` does)."""

    def __init__(self, token: int, values: list[float]) -> None:
        self.token, self.values = token, torch.tensor(values)

    def __call__(self, input_ids, scores):
        scores[:, self.token] += self.values.to(scores.dtype)
        return scores


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, tokenizer


def _inputs(tokenizer, questions):
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _completions(out, inputs):
    return [row[inputs.input_ids.shape[1] :].tolist() for row in out]


def test_sampled_budgets_are_exact_seeded_and_per_row(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    end = tokenizer.convert_tokens_to_ids("</think>")
    inputs = _inputs(tokenizer, ["What is 2 + 2?", "Is 17 prime?", "Area of a circle?"])
    configs = [
        ThinkingConfig(tts_max_think=5, tts_answer_prefix="\nFinal Answer:"),
        ThinkingConfig(tts_min_think=12),
        ThinkingConfig(),  # an uncontrolled row in the same batch
    ]
    vocab = vocab_for(tokenizer)

    def run(seed):
        processor = ThinkingLogitsProcessor(configs, tokenizer, do_sample=True, temperature=1.0, seed=seed)
        torch.manual_seed(seed)
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=1.0,
            max_new_tokens=20,
            logits_processor=[EndBias(end, [0.0, 7.0, 7.0]), processor],
            eos_token_id=None,
            pad_token_id=tokenizer.pad_token_id,
        )
        return _completions(out, inputs)

    a, b, c = run(0), run(0), run(1)
    assert a == b and a != c
    prefix = tokenizer.encode("\nFinal Answer:", add_special_tokens=False)
    for rows in (a, c):
        assert rows[0][5] == end and rows[0][6 : 6 + len(prefix)] == prefix
        report = report_tokens(rows[1], inputs.input_ids[1].tolist(), configs[1], vocab)
        assert report.waits >= 1 and (report.end == "open" or report.thinking_tokens >= 12)
    assert end in a[2] or end in c[2]  # the uncontrolled row ends thinking freely under the bias


def test_stopping_criteria_stops_each_row_after_thinking(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    inputs = _inputs(tokenizer, ["What is 2 + 2?", "Is 17 prime?"])
    config = ThinkingConfig(tts_max_think=4, tts_answer_prefix="\nFinal Answer:")
    processor = ThinkingLogitsProcessor(config, tokenizer)
    out = model.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=30,
        logits_processor=[processor],
        stopping_criteria=[ThinkingStoppingCriteria(processor)],
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    prefix = tokenizer.encode("\nFinal Answer:", add_special_tokens=False)
    for row in _completions(out, inputs):
        assert len(row) == 4 + 1 + len(prefix)  # stopped right after the forced tail
        assert row[5:] == prefix
    # The same processor serves a second generate() call (a new generation is detected and the state reset).
    again = model.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=8,
        logits_processor=[processor],
        eos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert [r[4] for r in _completions(again, inputs)] == [tokenizer.convert_tokens_to_ids("</think>")] * 2


def test_config_errors_surface_at_construction(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    from vllm_ttsplugin import ThinkingConfigError

    with pytest.raises(ThinkingConfigError, match="tts_think_end"):
        ThinkingLogitsProcessor(ThinkingConfig(tts_max_think=3, tts_think_end="<|im_end|>"), tokenizer)
    with pytest.raises(ThinkingConfigError, match="tts_min_think"):
        ThinkingConfig(tts_min_think=-3)


def test_a_new_generate_call_starts_afresh_whatever_its_length(model_and_tokenizer):
    """The processor follows one sequence; a later call is recognised as new even when its prompt is exactly as long
    as the sequence it saw last (or one token longer), which once made it continue the old state."""
    model, tokenizer = model_and_tokenizer
    end = tokenizer.convert_tokens_to_ids("</think>")
    config = ThinkingConfig(tts_max_think=4)
    processor = ThinkingLogitsProcessor(config, tokenizer)
    first = _inputs(tokenizer, ["What is 2 + 2?"])
    kwargs = dict(do_sample=False, logits_processor=[processor], eos_token_id=None, pad_token_id=0)
    model.generate(**first, max_new_tokens=12, **kwargs)
    seen = processor.seen_len
    base = first.input_ids[0].tolist()
    filler = tokenizer.encode(" the", add_special_tokens=False)
    vocab = vocab_for(tokenizer)
    for length in (seen, seen + 1):
        prompt = filler * (length - len(base)) + base  # still ends inside the open think block
        ids = torch.tensor([prompt])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, **kwargs)
        completion = out[0, ids.shape[1] :].tolist()
        report = report_tokens(completion, prompt, config, vocab)
        assert (report.thinking_tokens, report.end) == (4, "budget") and completion[4] == end


def test_sampled_rows_it_does_not_control_are_unchanged_and_runs_reproducible(model_and_tokenizer):
    """Without a seed the processor keys its decisions on `torch.initial_seed()` and never draws from torch's
    random state: the rows it does not control sample exactly as without it, and `torch.manual_seed` makes runs
    repeat."""
    model, tokenizer = model_and_tokenizer
    end = tokenizer.convert_tokens_to_ids("</think>")
    inputs = _inputs(tokenizer, ["What is 2 + 2?", "Is 17 prime?"])
    kwargs = dict(do_sample=True, temperature=1.0, max_new_tokens=16, eos_token_id=None, pad_token_id=0)

    def run(seed, with_processor):
        processors = [EndBias(end, [6.0, 6.0])]
        if with_processor:
            processors.append(
                ThinkingLogitsProcessor(
                    [ThinkingConfig(tts_min_think=10), ThinkingConfig()], tokenizer, do_sample=True
                )
            )
        torch.manual_seed(seed)
        return _completions(model.generate(**inputs, logits_processor=processors, **kwargs), inputs)

    a, b, plain = run(3, True), run(3, True), run(3, False)
    assert a == b and a[1] == plain[1]  # the uncontrolled row is untouched
    assert a[0] != plain[0] and tokenizer.convert_tokens_to_ids("Wait") in a[0]
    assert run(4, True)[0] != a[0]
