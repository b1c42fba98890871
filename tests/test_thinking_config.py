"""The thinking config: one validation place, same names everywhere, tokenizer checks, admission lookup."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from vllm_ttsplugin.config import RESERVED_KEYS, ThinkingConfig, ThinkingConfigError
from vllm_ttsplugin.vocab import SamplingView, TokenizerVocab, resolve_thinking


def test_round_trip_through_extra_args():
    config = ThinkingConfig(
        tts_min_think=10, tts_max_think=100, tts_answer_prefix="\nFinal Answer:", tts_end_bias=1
    )
    extra = config.to_extra_args()
    assert extra == {
        "tts_min_think": 10,
        "tts_max_think": 100,
        "tts_answer_prefix": "\nFinal Answer:",
        "tts_end_bias": 1.0,
    }
    assert ThinkingConfig.from_extra_args(extra) == config
    assert ThinkingConfig(**extra) == config
    assert (
        ThinkingConfig.from_extra_args({"other": 1}) is None and ThinkingConfig.from_extra_args(None) is None
    )
    params = config.sampling_params(max_tokens=5, extra_args={"mine": 2})
    assert params.extra_args == {"mine": 2, **extra} and params.max_tokens == 5
    assert set(ThinkingConfig.keys()) == {
        "tts_min_think",
        "tts_max_think",
        "tts_wait",
        "tts_max_waits",
        "tts_answer_prefix",
        "tts_think_end",
        "tts_think_start",
        "tts_end_temperature",
        "tts_end_bias",
        "tts_eos_in_thinking",
    }


def test_only_budgets_or_scaling_activate_control():
    assert not ThinkingConfig().is_active
    assert not ThinkingConfig(tts_wait="Hmm", tts_answer_prefix="x", tts_min_think=0).is_active
    assert ThinkingConfig(tts_min_think=1).is_active and ThinkingConfig(tts_max_think=1).is_active
    assert ThinkingConfig(tts_end_temperature=0.5).is_active


GARBAGE = [
    ({"tts_unknown": 1}, "tts_unknown"),
    ({"tts_min_think": "3"}, "tts_min_think"),
    ({"tts_min_think": 3.0}, "tts_min_think"),
    ({"tts_min_think": False}, "tts_min_think"),
    ({"tts_min_think": -1}, "tts_min_think"),
    ({"tts_max_think": 0}, "tts_max_think"),
    ({"tts_max_think": [5]}, "tts_max_think"),
    ({"tts_min_think": 6, "tts_max_think": 5}, "tts_min_think"),
    ({"tts_max_waits": -1}, "tts_max_waits"),
    ({"tts_wait": ""}, "tts_wait"),
    ({"tts_wait": None}, "tts_wait"),
    ({"tts_answer_prefix": 3}, "tts_answer_prefix"),
    ({"tts_think_end": ""}, "tts_think_end"),
    ({"tts_think_start": 1}, "tts_think_start"),
    ({"tts_think_start": "<t>", "tts_think_end": "<t>"}, "tts_think_end"),
    ({"tts_end_temperature": 0}, "tts_end_temperature"),
    ({"tts_end_temperature": -2}, "tts_end_temperature"),
    ({"tts_end_temperature": math.nan}, "tts_end_temperature"),
    ({"tts_end_temperature": math.inf}, "tts_end_temperature"),
    ({"tts_end_temperature": "0.5"}, "tts_end_temperature"),
    ({"tts_end_bias": -math.inf}, "tts_end_bias"),
    ({"tts_end_bias": math.nan}, "tts_end_bias"),
    ({"tts_end_bias": 1.0, "tts_end_temperature": 2.0}, "tts_end_bias"),
    ({"tts_eos_in_thinking": "never"}, "tts_eos_in_thinking"),
    ({"tts_eos_in_thinking": 1}, "tts_eos_in_thinking"),
    ({"tts_eos_in_thinking": ""}, "tts_eos_in_thinking"),
    ({"tts_eos_in_thinking": None}, "tts_eos_in_thinking"),
    ({"tts_first_finish": 2}, "tts_first_finish"),
    ({"tts_group": "a"}, "tts_group"),
]


@pytest.mark.parametrize("extra,name", GARBAGE, ids=[f"{name}-{i}" for i, (_, name) in enumerate(GARBAGE)])
def test_garbage_is_rejected_naming_the_parameter(extra, name):
    with pytest.raises(ThinkingConfigError, match=name) as err:
        ThinkingConfig.from_extra_args(extra)
    assert err.value.parameter == name
    assert isinstance(err.value, ValueError)


def test_reserved_keys_are_accepted_when_a_component_owns_them():
    assert set(RESERVED_KEYS) == {"tts_first_finish", "tts_group"}
    config = ThinkingConfig.from_extra_args(
        {"tts_first_finish": 1, "tts_group": "g", "tts_max_think": 4},
        known_keys=("tts_first_finish", "tts_group"),
    )
    assert config == ThinkingConfig(tts_max_think=4)


# -- tokenizer-dependent checks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_default_delimiters_are_detected(tokenizer):
    vocab = TokenizerVocab(tokenizer)
    assert vocab.default_delimiters == ("<think>", "</think>")
    spec = resolve_thinking(ThinkingConfig(tts_max_think=3), vocab)
    assert spec.end_ids == tuple(tokenizer.encode("</think>", add_special_tokens=False))
    assert spec.start_ids == tuple(tokenizer.encode("<think>", add_special_tokens=False))
    # A custom end delimiter without a start: thinking is open from the first generated token.
    custom = resolve_thinking(ThinkingConfig(tts_max_think=3, tts_think_end="<|im_start|>answer"), vocab)
    assert custom.start_ids == () and len(custom.end_ids) > 1


class _FakeTokenizer:
    """A tokenizer whose quirks we choose: unknown tokens, lossy decoding, texts that vanish."""

    eos_token_id = 0
    unk_token_id = 1

    def __init__(self, table):
        self.table = table

    def __len__(self):
        return 100

    def encode(self, text, add_special_tokens=False):
        return list(self.table.get(text, [5]))

    def decode(self, ids, skip_special_tokens=False):
        inverse = {tuple(v): k for k, v in reversed(self.table.items())}  # first text wins
        return inverse.get(tuple(ids), "?")


@pytest.mark.parametrize(
    "table,config,name",
    [
        (
            {"</x>": [1]},
            dict(tts_think_end="</x>"),
            "tts_think_end",
        ),  # the unknown token: not in the vocabulary
        ({"</x>": [150]}, dict(tts_think_end="</x>"), "tts_think_end"),  # beyond the model's 100 logits
        ({"</x>": []}, dict(tts_think_end="</x>"), "tts_think_end"),  # tokenizes to nothing
        ({}, dict(tts_think_end="</x>"), "tts_think_end"),  # decodes to something else: lossy
        (
            {"</x>": [7], "Hmm": []},
            dict(tts_think_end="</x>", tts_wait="Hmm"),
            "tts_wait",
        ),  # empty after tokenization
        (
            {"</x>": [7], "Wait": [7]},
            dict(tts_think_end="</x>", tts_wait="Wait"),
            "tts_wait",
        ),  # contains the end token
        ({"</x>": [0]}, dict(tts_think_end="</x>"), "tts_think_end"),  # the EOS token
        ({"</x>": [7], "F": [3, 0]}, dict(tts_think_end="</x>", tts_answer_prefix="F"), "tts_answer_prefix"),
        ({"</x>": [7], "<s>": [7]}, dict(tts_think_end="</x>", tts_think_start="<s>"), "tts_think_start"),
        (
            {"</x>": [7], "Wait": [9] * 300},
            dict(tts_think_end="</x>", tts_wait="Wait"),
            "tts_wait",
        ),  # too long
    ],
)
def test_tokenizer_dependent_garbage(table, config, name):
    vocab = TokenizerVocab(_FakeTokenizer(table), vocab_size=100)
    with pytest.raises(ThinkingConfigError, match=name) as err:
        resolve_thinking(ThinkingConfig(tts_max_think=4, **config), vocab)
    assert err.value.parameter == name


def test_the_engines_reasoning_configuration_comes_before_the_built_in_list(tokenizer):
    """With `--reasoning-parser` / `--reasoning-config`, the engine's start and (natural) end markers are the
    default delimiters, even where the tokenizer has one of the built-in ones."""
    from vllm_ttsplugin.vocab import reasoning_delimiters, vocab_for

    s1 = (tuple(tokenizer.encode("<|im_start|>think")), tuple(tokenizer.encode("<|im_start|>answer")))
    spec = resolve_thinking(ThinkingConfig(tts_max_think=3), vocab_for(tokenizer, None, s1))
    assert (spec.start_ids, spec.end_ids) == s1
    plain = resolve_thinking(ThinkingConfig(tts_max_think=3), vocab_for(tokenizer))
    assert plain.end_ids == tuple(tokenizer.encode("</think>"))
    # The request's own keys still win; ids outside the vocabulary are refused naming the key.
    own = resolve_thinking(
        ThinkingConfig(tts_max_think=3, tts_think_end="</think>"), vocab_for(tokenizer, None, s1)
    )
    assert own.end_ids == plain.end_ids and own.start_ids == ()
    with pytest.raises(ThinkingConfigError, match="reasoning configuration") as err:
        resolve_thinking(ThinkingConfig(tts_max_think=3), vocab_for(tokenizer, 10, s1))
    assert err.value.parameter == "tts_think_end"
    # What vLLM's ReasoningConfig holds once enabled: its start ids and the parser's natural end ids.
    config = SimpleNamespace(
        reasoning_config=SimpleNamespace(
            enabled=True,
            reasoning_start_token_ids=list(s1[0]),
            reasoning_end_token_ids=[9, 9, *s1[1]],  # vLLM forces a transition phrase + the end marker
            natural_reasoning_end_token_ids=list(s1[1]),
        )
    )
    assert reasoning_delimiters(config) == s1
    assert reasoning_delimiters(SimpleNamespace(reasoning_config=None)) is None


def test_undetectable_default_delimiter():
    vocab = TokenizerVocab(_FakeTokenizer({}), vocab_size=100)
    with pytest.raises(ThinkingConfigError, match="tts_think_end"):
        resolve_thinking(ThinkingConfig(tts_max_think=4), vocab)


def test_stop_token_ids_of_the_request_are_refused_in_forced_text(tokenizer):
    vocab = TokenizerVocab(tokenizer)
    wait = tuple(tokenizer.encode("Wait", add_special_tokens=False))
    with pytest.raises(ThinkingConfigError, match="tts_wait"):
        resolve_thinking(ThinkingConfig(tts_min_think=4), vocab, SamplingView(), stop_token_ids={wait[0]})


# -- admission: where validate_params finds the tokenizer -------------------------------------------------------


def test_validate_params_uses_the_frontend_input_processor(tokenizer):
    """vLLM calls validate_params from InputProcessor._validate_params in the frontend process; the processor
    finds that InputProcessor on the stack and validates against its tokenizer and vocabulary size."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.input_processor import InputProcessor

    from vllm_ttsplugin import TTSLogitsProcessor

    frontend = InputProcessor.__new__(InputProcessor)
    frontend.renderer = SimpleNamespace(tokenizer=tokenizer)
    frontend.model_config = SimpleNamespace(get_vocab_size=lambda: len(tokenizer))

    def _validate_params(self, params):  # stands in for InputProcessor._validate_params
        TTSLogitsProcessor.validate_params(params)

    bad = SamplingParams(extra_args={"tts_max_think": 4, "tts_think_end": "<|im_end|>"})  # the EOS token
    with pytest.raises(VLLMValidationError, match="tts_think_end"):
        _validate_params(frontend, bad)
    _validate_params(frontend, SamplingParams(extra_args={"tts_max_think": 4}))
    # A frontend without a tokenizer (skip_tokenizer_init) cannot serve tts_* requests.
    frontend.renderer = SimpleNamespace(tokenizer=None)
    with pytest.raises(VLLMValidationError, match="tokenizer"):
        _validate_params(frontend, SamplingParams(extra_args={"tts_max_think": 4}))
    # First Finish Search needs no tokenizer (losers are then stopped with EOS, unmarked).
    _validate_params(frontend, SamplingParams(n=2, extra_args={"tts_first_finish": 1}))
    # Speculative decoding: the engine's processor is inert, so controlled requests are refused at admission.
    frontend.renderer = SimpleNamespace(tokenizer=tokenizer)
    frontend.speculative_config = object()
    for extra, name in (
        ({"tts_max_think": 4}, "tts_max_think"),
        ({"tts_first_finish": 1}, "tts_first_finish"),
    ):
        with pytest.raises(VLLMValidationError, match="speculative decoding") as err:
            _validate_params(frontend, SamplingParams(n=2, extra_args=extra))
        assert err.value.parameter == name
    # Outside any admission path only tokenizer-free checks run (the engine re-checks and skips safely).
    TTSLogitsProcessor.validate_params(bad)
    with pytest.raises(VLLMValidationError, match="tts_max_think"):
        TTSLogitsProcessor.validate_params(SamplingParams(extra_args={"tts_max_think": -4}))
    TTSLogitsProcessor.validate_params(SamplingParams())  # no tts_* keys: nothing to do


def test_readme_key_table_lists_exactly_the_config_fields():
    """The README's key table is the user's reference: one row per `ThinkingConfig` field, no more, no less."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Keys", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {key for row in rows for key in re.findall(r"`(tts_\w+)`", row.split("|")[1])}
    assert documented == set(ThinkingConfig.keys())
