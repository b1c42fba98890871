"""The OpenAI-compatible server on loopback, with ttsplugin installed (its processor comes from the entry point).

One server process (multiprocess engine core, as deployed): `vllm_xargs` on /v1/completions and
/v1/chat/completions, HTTP 400 naming the parameter for invalid values (validated in the API-server process
against the model's tokenizer), and the server keeps serving afterwards.
"""

from __future__ import annotations

import pytest
import requests

from vllm_ttsplugin.testing import load_tiny_model_info

pytestmark = [pytest.mark.server, pytest.mark.vllm]


@pytest.fixture(scope="module")
def info(tiny_model_dir):
    return load_tiny_model_info(tiny_model_dir)


def _post(server, path, body):
    return requests.post(f"{server}{path}", json=body, timeout=120)


def test_completions_with_vllm_xargs(tts_server, info, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    prefix = tokenizer.encode("\nFinal Answer:", add_special_tokens=False)
    body = {
        "model": str(tiny_model_dir),
        "prompt": prompt,
        "max_tokens": 20,
        "temperature": 0,
        "return_token_ids": True,
        "vllm_xargs": {"tts_max_think": 5, "tts_answer_prefix": "\nFinal Answer:"},
    }
    r = _post(tts_server, "/v1/completions", body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["token_ids"][5:6] == info.think_end_ids
    assert choice["token_ids"][6 : 6 + len(prefix)] == prefix
    assert "</think>\nFinal Answer:" in choice["text"]


def test_chat_completions_with_vllm_xargs(tts_server, info, tiny_model_dir):
    from vllm_ttsplugin import ThinkingConfig
    from vllm_ttsplugin.report import report_tokens
    from vllm_ttsplugin.vocab import TokenizerVocab

    end = info.think_end_ids[0]
    xargs = {"tts_min_think": 16, "tts_max_think": 24}
    body = {
        "model": str(tiny_model_dir),
        "messages": [{"role": "user", "content": "Is 17 a prime number?"}],
        "max_tokens": 32,
        "temperature": 1.0,
        "seed": 4,
        "n": 2,
        "logit_bias": {str(end): 6.0},  # the model tries to end often
        "return_token_ids": True,
        "vllm_xargs": xargs,
    }
    r = _post(tts_server, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    data = r.json()
    from transformers import AutoTokenizer

    vocab = TokenizerVocab(AutoTokenizer.from_pretrained(tiny_model_dir))
    reports = [
        report_tokens(choice["token_ids"], data["prompt_token_ids"], ThinkingConfig(**xargs), vocab)
        for choice in data["choices"]
    ]
    assert len(reports) == 2 and all(16 <= r.thinking_tokens <= 24 for r in reports)
    assert sum(r.waits for r in reports) >= 1


@pytest.mark.parametrize(
    "xargs,name",
    [
        ({"tts_max_think": -3}, "tts_max_think"),
        ({"tts_min_think": 9, "tts_max_think": 4}, "tts_min_think"),
        ({"tts_bogus": 1}, "tts_bogus"),
        ({"tts_wait": ""}, "tts_wait"),
        ({"tts_end_temperature": 0}, "tts_end_temperature"),
        ({"tts_max_think": "ten"}, "tts_max_think"),
        ({"tts_max_think": 5, "tts_think_end": "<|im_end|>"}, "tts_think_end"),  # needs the tokenizer
    ],
)
def test_invalid_values_get_400_naming_the_parameter(tts_server, tiny_model_dir, xargs, name):
    for path, body in (
        ("/v1/completions", {"prompt": "Let me think"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ):
        r = _post(
            tts_server, path, {"model": str(tiny_model_dir), "max_tokens": 4, "vllm_xargs": xargs, **body}
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert name in error["message"] and error.get("param") == name
    # The server keeps serving.
    ok = _post(
        tts_server,
        "/v1/completions",
        {"model": str(tiny_model_dir), "prompt": "Let me think", "max_tokens": 3},
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"]
