"""The reasoner's task, tokenizer, statistics and file checks (no engine)."""

from __future__ import annotations

import random

import pytest

from vllm_ttsplugin.reasoner import ReasonerFilesError, grade, make_problems, verify_model_dir
from vllm_ttsplugin.reasoner.files import write_checksums
from vllm_ttsplugin.reasoner.stats import accuracy, mean_sem, wilson
from vllm_ttsplugin.reasoner.task import MAX_STEPS, MIN_STEPS, extract_answer, split_of, trace


@pytest.mark.parametrize("split", ["train", "validation", "test"])
@pytest.mark.parametrize("seed", [0, 1, -7, 2**40])
def test_any_seed_gives_valid_distinct_problems_of_the_split(split, seed):
    problems = make_problems(64, seed=seed, split=split)
    assert len(problems) == 64 and len({p.question for p in problems}) == 64
    for p in problems:
        assert split_of(p.question) == split
        assert MIN_STEPS <= p.steps <= MAX_STEPS == 8 and len(p.operations) == p.steps
        assert all(0 <= v <= 99 for v in p.values()) and p.values()[-1] == p.answer
        assert eval(p.question) == p.answer  # the question is the plain arithmetic expression
        assert p.messages == [{"role": "user", "content": p.question}]
    assert make_problems(64, seed=seed, split=split) == problems  # deterministic


def test_the_test_split_never_appears_in_training_streams():
    test = {p.question for p in make_problems(2000, seed=0, split="test")}
    for seed in range(20):
        assert not test & {p.question for p in make_problems(500, seed=seed, split="train")}


def test_difficulty_varies_uniformly_over_the_step_range():
    steps = [p.steps for p in make_problems(1400, seed=3)]
    counts = [steps.count(k) for k in range(MIN_STEPS, MAX_STEPS + 1)]
    assert min(counts) > 150  # 200 expected each


@pytest.mark.parametrize(
    "bad", [dict(split="dev"), dict(n=-1), dict(min_steps=0), dict(min_steps=5, max_steps=4)]
)
def test_garbage_arguments_are_refused_naming_them(bad):
    kwargs = dict(n=3, seed=0) | bad
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name.split("_")[0]):
        make_problems(**kwargs)


def test_clean_trace_computes_every_step_and_slips_are_corrected():
    (problem,) = make_problems(1, seed=5)
    text, spans = trace(problem)
    assert spans == [] and "Wait" not in text
    assert text.count("\n") == problem.steps and text.endswith(f"={problem.answer}\n")
    rng = random.Random(0)
    slipped = 0
    for p in make_problems(300, seed=1, split="train"):
        text, spans = trace(p, rng)
        for start, end in spans:
            slipped += 1
            line_end = text.index("\n", start)
            correction = text[line_end + 1 : text.index("\n", line_end + 1)]
            assert correction.startswith("Wait, ") and text[start:end] != correction.split("=")[-1]
        assert text.endswith(f"={p.answer}\n")  # the last line is always right
    assert 0.08 * 300 * 5 < slipped < 0.16 * 300 * 5  # SLIP_RATE 12 % of ~5 lines per trace


def test_grade_reads_the_answer_after_thinking():
    (p,) = make_problems(1, seed=2)
    assert grade(f"whatever</think>\nAnswer: {p.answer}", p)
    assert grade(f"x=1\n\nAnswer: {p.answer}", p)  # special tokens skipped
    assert not grade(f"Answer: {p.answer}</think>\nAnswer: {p.answer + 1}", p)
    assert not grade("</think>\nno answer", p) and not grade("", p)
    assert extract_answer("Answer: 3 ... Answer: -4") == -4


def test_wilson_interval_and_accuracy_summary():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(3, 2)
    summary = accuracy([True, False, True, True])
    assert summary["n"] == 4 and summary["correct"] == 3 and summary["accuracy"] == 0.75
    assert mean_sem([1.0, 3.0]) == (2.0, 1.0)


def test_tokenizer_spells_digits_and_keeps_delimiters_special():
    from vllm_ttsplugin.reasoner.tokenizer import SPECIAL_TOKENS, build_tokenizer

    tokenizer = build_tokenizer()
    assert len(tokenizer) <= 320
    ids = tokenizer.encode("57+8=65\nWait, 57+8=65\n", add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces[:7] == ["5", "7", "+", "8", "=", "6", "5"] and "Wait" in pieces
    for token in SPECIAL_TOKENS:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    assert special == set(SPECIAL_TOKENS)  # skip_special_tokens drops them from decoded text
    assert tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+2"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n<think>\n"


def test_loader_names_a_missing_or_corrupt_file(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(ReasonerFilesError, match="SHA256SUMS"):
        verify_model_dir(folder)
    for name in ("chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):  # fmt: skip
        (folder / name).write_text(name)
    write_checksums(folder)
    assert verify_model_dir(folder) == folder
    (folder / "model.safetensors").write_text("flipped")
    with pytest.raises(ReasonerFilesError, match=r"model\.safetensors is corrupt"):
        verify_model_dir(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ReasonerFilesError, match=r"model\.safetensors is missing"):
        verify_model_dir(folder)
    with pytest.raises(ReasonerFilesError, match="does not exist"):
        verify_model_dir(tmp_path / "nowhere")


def test_training_is_a_function_of_the_seed(tmp_path):
    """Two short runs with one seed write byte-identical weights; another seed differs. (Reproducing the shipped
    weights themselves takes the full run: `ttsplugin train-reasoner --out DIR`, ~10 min.)"""
    from vllm_ttsplugin.reasoner.train import TrainConfig, train

    def weights(name: str, seed: int) -> bytes:
        config = TrainConfig(seed=seed, steps=2, batch_size=4, warmup_steps=1)
        record = train(tmp_path / name, config, log=lambda line: None)
        assert record["config"]["seed"] == seed and record["parameters"] > 800_000
        return (tmp_path / name / "model.safetensors").read_bytes()

    assert weights("a", 0) == weights("b", 0) != weights("c", 1)
