"""`ttsplugin generate`: flags -> per-request keys, validation before the engine starts, reports on a real engine."""

from __future__ import annotations

import gc
import json

import pytest

from ttsplugin.cli import build_parser, main
from ttsplugin.generate_command import generate, request_extra_args


def parse(*argv: str):
    return build_parser().parse_args(["generate", *argv])


def test_flags_map_onto_the_per_request_keys():
    args = parse(
        "--min-think", "8", "--max-think", "16", "--wait", r"\nHmm,", "--max-waits", "2",
        "--answer-prefix", r"\nFinal Answer:", "--think-end", "</think>", "--end-bias", "-1.5",
        "--n", "4", "--first-finish", "2",
    )  # fmt: skip
    assert request_extra_args(args) == {
        "tts_min_think": 8,
        "tts_max_think": 16,
        "tts_wait": "\nHmm,",
        "tts_max_waits": 2,
        "tts_answer_prefix": "\nFinal Answer:",
        "tts_think_end": "</think>",
        "tts_end_bias": -1.5,
        "tts_first_finish": 2,
    }
    assert request_extra_args(parse()) == {}  # no flags: an untouched request
    assert request_extra_args(parse("--max-think", "4", "--eos-in-thinking", "stop")) == {
        "tts_max_think": 4,
        "tts_eos_in_thinking": "stop",
    }
    assert request_extra_args(parse("--wait", r"a\\nb"))["tts_wait"] == "a\\nb"  # an escaped backslash stays
    assert request_extra_args(
        parse("--confidence-threshold", "4.5", "--confidence-window", "16", "--confidence-top-k", "5")
    ) == {"tts_confidence_threshold": 4.5, "tts_confidence_window": 16, "tts_confidence_top_k": 5}


def test_every_config_field_is_a_flag_with_its_help_and_choices():
    """The thinking flags are derived from `ThinkingConfig`'s fields, so a new key cannot be left out."""
    from dataclasses import fields

    from vllm_ttsplugin.config import ThinkingConfig

    generate_parser = build_parser()._subparsers._group_actions[0].choices["generate"]
    actions = {a.dest: a for a in generate_parser._actions}
    for f in fields(ThinkingConfig):
        action = actions[f.name.removeprefix("tts_")]
        assert action.option_strings == ["--" + f.name.removeprefix("tts_").replace("_", "-")]
        assert action.help.startswith(f.name) and f.metadata["help"] in action.help
        assert tuple(action.choices or ()) == f.metadata["choices"]


def test_engine_sizing_is_small_for_the_tiny_model_and_vllms_own_for_a_user_model():
    from ttsplugin.demo import engine_kwargs

    tiny = engine_kwargs(parse())
    assert (
        tiny["kv_cache_memory_bytes"] == 256 * 2**20
        and tiny["enforce_eager"]
        and tiny["max_model_len"] == 2048
    )
    assert engine_kwargs(parse("--model", "/m", "--max-model-len", "8192")) == {"max_model_len": 8192}
    sized = engine_kwargs(parse("--model", "/m", "--kv-cache-mib", "512"))
    assert sized == {"max_model_len": 2048, "kv_cache_memory_bytes": 512 * 2**20}
    demo = build_parser().parse_args(["demo", "--model", "/m", "--kv-cache-mib", "64"])
    assert engine_kwargs(demo)["kv_cache_memory_bytes"] == 64 * 2**20


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--min-think", "-1"], "--min-think"),
        (["--max-think", "0"], "--max-think"),
        (["--min-think", "5", "--max-think", "3"], "--min-think"),
        (["--wait", ""], "--wait"),
        (["--max-waits", "-2"], "--max-waits"),
        (["--end-temperature", "0"], "--end-temperature"),
        (["--end-temperature", "nan"], "--end-temperature"),
        (["--end-bias", "inf"], "--end-bias"),
        (["--end-temperature", "1", "--end-bias", "1"], "--end-bias"),
        (["--think-start", "<t>", "--think-end", "<t>"], "--think-end"),
        (["--first-finish", "0", "--n", "4"], "--first-finish"),
        (["--first-finish", "5", "--n", "4"], "--first-finish"),
        (["--first-finish", "1"], "--first-finish"),
        (["--confidence-threshold", "nan"], "--confidence-threshold"),
        (["--confidence-threshold", "1", "--confidence-window", "0"], "--confidence-window"),
        (["--confidence-threshold", "1", "--confidence-top-k", "0"], "--confidence-top-k"),
        (["--confidence-window", "8"], "--confidence-window"),
    ],
)
def test_garbage_is_refused_naming_the_flag_before_any_engine_starts(argv, flag, capsys, monkeypatch):
    import ttsplugin.generate_command

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be built for an invalid request")

    monkeypatch.setattr(ttsplugin.generate_command, "ensure_tiny_model", no_model)
    assert main(["generate", *argv]) == 2
    assert capsys.readouterr().err.startswith(f"error: {flag}: ")


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["generate", "--max-think", "many"], "--max-think"),
        (["generate", "--eos-in-thinking", "never"], "--eos-in-thinking"),
        (["generate", "--n", "0"], "--n"),
        (["generate", "--max-tokens", "-3"], "--max-tokens"),
        (["generate", "--max-model-len", "0"], "--max-model-len"),
        (["generate", "--kv-cache-mib", "-1"], "--kv-cache-mib"),
        (["generate", "--kv-cache-mib", "lots"], "--kv-cache-mib"),
        (["demo", "--kv-cache-mib", "0"], "--kv-cache-mib"),
        (["demo", "--max-model-len", "-5"], "--max-model-len"),
    ],
)
def test_unparsable_or_non_positive_values_are_argparse_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tts_llm(tiny_model_dir):
    from vllm import LLM

    from vllm_ttsplugin import TTSLogitsProcessor
    from vllm_ttsplugin.testing import small_engine_kwargs

    llm = LLM(
        str(tiny_model_dir),
        seed=0,
        dtype="float32",
        logits_processors=[TTSLogitsProcessor],
        **small_engine_kwargs(max_model_len=512),
    )
    yield llm
    del llm
    gc.collect()


@pytest.mark.vllm
def test_budgets_are_reported_exactly(tts_llm):
    prefix = r"\nFinal Answer:"
    args = parse("--max-think", "12", "--answer-prefix", prefix, "--max-tokens", "30", "--prompt", "2+2?")
    (entry,) = generate(tts_llm, args)["prompts"]
    (c,) = entry["completions"]
    assert (c["thinking_tokens"], c["thinking_end"], c["waits"], c["tokens"]) == (12, "budget", 0, 30)
    tokenizer = tts_llm.get_tokenizer()
    forced = tokenizer.encode("</think>\nFinal Answer:", add_special_tokens=False)
    ids = tokenizer.encode(c["text"], add_special_tokens=False)
    assert c["answer_tokens"] == 30 - 12 - 1 and "</think>\nFinal Answer:" in c["text"]
    assert len(forced) >= 2 and any(ids[i : i + len(forced)] == forced for i in range(len(ids)))

    # min budget under sampling with the end token made likely: every sample thinks at least 20 tokens.
    args = parse(
        "--n",
        "4",
        "--temperature",
        "1",
        "--min-think",
        "20",
        "--logit-bias",
        "</think>=4",
        "--max-tokens",
        "40",
    )
    (entry,) = generate(tts_llm, args)["prompts"]
    assert all(c["thinking_tokens"] >= 20 or c["thinking_end"] == "open" for c in entry["completions"])
    assert sum(c["waits"] for c in entry["completions"]) > 0


@pytest.mark.vllm
def test_first_finish_marks_winners_and_stopped_samples(tts_llm, capsys):
    args = parse(
        "--n", "6", "--temperature", "1", "--first-finish", "2", "--logit-bias", "<|im_end|>=3",
        "--max-tokens", "80", "--seed", "1", "--prompt", "What is 17 + 25?",  # the random tiny model's premise
    )  # fmt: skip
    record = generate(tts_llm, args)
    (entry,) = record["prompts"]
    marks = [c["first_finish"] for c in entry["completions"]]
    assert marks.count("winner") == 2
    longest_winner = max(c["tokens"] for c in entry["completions"] if c["first_finish"] == "winner")
    for c in entry["completions"]:
        if c["first_finish"] != "winner":
            assert c["tokens"] <= longest_winner + 1
    assert record["total_tokens"] == sum(c["tokens"] for c in entry["completions"])
    json.dumps(record)  # --json prints it as is


@pytest.mark.vllm
def test_confidence_stop_marks_the_samples_it_stopped(tts_llm):
    base = ["--n", "6", "--temperature", "1", "--max-tokens", "40", "--seed", "1", "--confidence-window", "4"]
    kept = generate(tts_llm, parse(*base, "--confidence-threshold", "-1000"))
    stopped = generate(tts_llm, parse(*base, "--confidence-threshold", "1000"))
    assert [c["confidence"] for c in kept["prompts"][0]["completions"]] == ["kept"] * 6
    # Every window is below 1000: each sample is stopped at its first chance, the token after a full window.
    for c in stopped["prompts"][0]["completions"]:
        assert c["confidence"] == "stopped" and c["tokens"] == 4 + 1 and c["finish_reason"] == "stop"


@pytest.mark.vllm
def test_logit_bias_flag_garbage(tts_llm):
    for spec, message in (("abc", "TEXT=BIAS"), ("</think>=x", "number"), ("hello world=1", "not one")):
        with pytest.raises(ValueError, match=message):
            generate(tts_llm, parse("--logit-bias", spec, "--max-tokens", "2"))


@pytest.mark.vllm
def test_the_command_end_to_end_prints_pure_json(tiny_model_dir, tmp_path):
    """`ttsplugin generate --json` in its own process: the engine it builds, and stdout that is the record alone."""
    import os
    import subprocess
    import sys

    (tmp_path / "tiny-reasoning-model-seed0").symlink_to(tiny_model_dir)  # what ensure_tiny_model would build
    argv = ["generate", "--tiny-random", "--workdir", str(tmp_path), "--max-think", "5", "--max-tokens", "9"]
    argv.append("--json")
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    out = subprocess.run(
        [sys.executable, "-m", "ttsplugin", *argv], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads(out.stdout)
    (c,) = record["prompts"][0]["completions"]
    assert record["extra_args"] == {"tts_max_think": 5}
    assert (c["thinking_tokens"], c["thinking_end"], c["tokens"]) == (5, "budget", 9)
    bad = subprocess.run(
        [sys.executable, "-m", "ttsplugin", *argv, "--think-end", "</think>", "--think-start", "</think>"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert bad.returncode == 2 and "--think-end" in bad.stderr and bad.stdout == ""
