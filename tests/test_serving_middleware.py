"""TTSMiddleware's ASGI plumbing without a server: what it forwards, what it answers itself, how it rewrites JSON
and SSE responses (events split across body chunks, keep-alive comments, error statuses, several prompts).

The downstream app stands in for vLLM's routes and answers with canned vLLM responses; validation uses vLLM's own
request models and `TTSLogitsProcessor.validate_params` with the tiny model's tokenizer. The real server is
exercised end to end in tests/test_ffs_serving.py and tests/test_server_load.py.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from vllm_ttsplugin.ffs import FFS_MARKER_TEXT, find_marker_token
from vllm_ttsplugin.serving import TTSMiddleware


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def marker(tokenizer) -> int:
    return find_marker_token(tokenizer)


def _state(tokenizer, api_key=None):
    engine = SimpleNamespace(
        get_tokenizer=lambda: tokenizer,
        model_config=SimpleNamespace(get_vocab_size=lambda: len(tokenizer)),
    )
    serving = SimpleNamespace(default_sampling_params={})
    return SimpleNamespace(
        engine_client=engine,
        openai_serving_completion=serving,
        openai_serving_chat=serving,
        args=SimpleNamespace(api_key=api_key),
    )


def _call(
    tokenizer,
    body: dict,
    chunks: list[bytes],
    status: int = 200,
    stream: bool = False,
    path="/v1/completions",
    api_key=None,
    authorization=None,
):
    """Run one request through the middleware; the downstream app records what it got and sends `chunks`."""
    seen = {}

    async def downstream(scope, receive, send):
        message = await receive()
        seen["body"] = json.loads(message["body"])
        seen["content-length"] = dict(scope["headers"]).get(b"content-length")
        kind = b"text/event-stream" if stream else b"application/json"
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        + ([(b"authorization", authorization.encode())] if authorization else []),
        "app": SimpleNamespace(state=_state(tokenizer, api_key)),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(TTSMiddleware(downstream)(scope, receive, send))
    start = sent[0]
    body_out = b"".join(m.get("body", b"") for m in sent[1:])
    return seen, start, body_out


def _choice(index, tokens, finish, stop_reason=None, text="x"):
    return dict(
        index=index,
        text=text,
        finish_reason=finish,
        stop_reason=stop_reason,
        token_ids=tokens,
        prompt_token_ids=[5],
    )


def test_requests_without_tts_keys_pass_through_byte_for_byte(tokenizer):
    body = {"model": "m", "prompt": "hi", "n": 2, "vllm_xargs": {"other": 1}}
    canned = json.dumps({"choices": [_choice(1, [7], "stop"), _choice(0, [7, 8], "length")]}).encode()
    seen, start, out = _call(tokenizer, body, [canned[:10], canned[10:]])
    assert seen["body"] == body and out == canned and start["status"] == 200


def test_ffs_json_response_winners_first_losers_abort_token_ids_hidden(tokenizer, marker):
    body = {
        "model": "m",
        "prompt": ["a", "b"],
        "n": 2,
        "max_tokens": 8,
        "vllm_xargs": {"tts_first_finish": 1},
    }
    choices = [
        _choice(0, [9, 9, marker], "stop", marker, text="ab" + FFS_MARKER_TEXT),  # include_stop_str_in_output
        _choice(1, [9, 2], "stop"),
        _choice(2, [9, 9, 9], "length"),
        _choice(3, [9, 9], "stop", "e"),  # a stop string: a natural finish
    ]
    seen, start, out = _call(tokenizer, body, [json.dumps({"choices": choices}).encode()])
    assert seen["body"]["return_token_ids"] is True  # asked for on the client's behalf ...
    data = json.loads(out)
    assert all(
        "token_ids" not in c and "prompt_token_ids" not in c for c in data["choices"]
    )  # ... and hidden
    assert [c["index"] for c in data["choices"]] == [1, 0, 3, 2]  # per prompt: winners first
    assert [c["finish_reason"] for c in data["choices"]] == ["stop", "abort", "stop", "length"]
    assert [c["tts"] for c in data["choices"]] == [
        {"first_finish": "winner", "rank": 0},
        {"first_finish": "stopped"},
        {"first_finish": "winner", "rank": 0},
        {"first_finish": "unfinished"},
    ]
    assert data["choices"][1]["text"] == "ab"  # the marker character is not part of an answer
    assert dict(start["headers"])[b"content-length"] == str(len(out)).encode()


def test_confidence_stopped_samples_are_reported_and_end_with_abort(tokenizer, marker):
    body = {"model": "m", "prompt": "a", "n": 3, "vllm_xargs": {"tts_confidence_threshold": 5.0}}
    choices = [
        _choice(0, [9, 9, marker], "stop", marker, text="ab" + FFS_MARKER_TEXT),
        _choice(1, [9, 2], "stop"),
        _choice(2, [9, 9, 9], "length"),
    ]
    _, _, out = _call(tokenizer, body, [json.dumps({"choices": choices}).encode()])
    data = json.loads(out)
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]  # no reordering without First Finish
    assert [c["finish_reason"] for c in data["choices"]] == ["abort", "stop", "length"]
    assert [c["tts"] for c in data["choices"]] == [{"confidence": c} for c in ("stopped", "kept", "kept")]
    assert data["choices"][0]["text"] == "ab"
    seen, start, out = _call(
        tokenizer, {**body, "vllm_xargs": {"tts_confidence_threshold": "x"}}, [b"never sent"]
    )
    assert seen == {} and start["status"] == 400
    assert json.loads(out)["error"]["param"] == "tts_confidence_threshold"


def test_sse_events_split_across_chunks_keep_alives_and_reports(tokenizer, marker):
    end = tokenizer.convert_tokens_to_ids("</think>")
    opens = tokenizer.encode("<think>", add_special_tokens=False)  # the prompt ends inside a think block
    body = {
        "model": "m",
        "prompt": "hi",
        "n": 2,
        "stream": True,
        "return_token_ids": True,
        "vllm_xargs": {"tts_first_finish": 1, "tts_max_think": 2},
    }
    events = [
        {
            "choices": [
                {"index": 0, "text": "a", "finish_reason": None, "token_ids": [9], "prompt_token_ids": opens}
            ]
        },
        {"choices": [{"index": 1, "text": "b", "finish_reason": None, "token_ids": [9]}]},
        {"choices": [{"index": 0, "text": "c", "finish_reason": None, "token_ids": [9, end]}]},
        {
            "choices": [
                {"index": 0, "text": "", "finish_reason": "stop", "stop_reason": None, "token_ids": [2]}
            ]
        },
        {
            "choices": [
                {
                    "index": 1,
                    "text": "",
                    "finish_reason": "stop",
                    "stop_reason": marker,
                    "token_ids": [marker],
                }
            ]
        },
    ]
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b": keep-alive\n\n"
    stream += b"data: [DONE]\n\n"
    chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)]  # events cut anywhere
    seen, start, out = _call(tokenizer, body, chunks, stream=True)
    parts = out.split(b"\n\n")
    assert parts[-3:] == [b": keep-alive", b"data: [DONE]", b""]
    finals = [json.loads(p[6:])["choices"][0] for p in parts[:-3]]
    assert [c.get("token_ids") for c in finals] == [
        e["choices"][0]["token_ids"] for e in events
    ]  # client asked
    winner, loser = finals[3], finals[4]
    assert winner["finish_reason"] == "stop" and winner["tts"]["first_finish"] == "winner"
    assert winner["tts"]["rank"] == 0
    assert winner["tts"]["thinking"]["thinking_tokens"] == 2 and winner["tts"]["thinking"]["end"] == "budget"
    assert loser["finish_reason"] == "abort" and loser["tts"]["first_finish"] == "stopped"
    assert loser["tts"]["thinking"]["thinking_tokens"] == 1  # the marker is not a token the model wrote


@pytest.mark.parametrize("stream", [False, True])
def test_invalid_keys_answered_400_before_vllm_sees_the_request(tokenizer, stream):
    body = {
        "model": "m",
        "prompt": "hi",
        "stream": stream,
        "vllm_xargs": {"tts_max_think": 4, "tts_min_think": 9},
    }
    seen, start, out = _call(tokenizer, body, [b"never sent"])
    assert seen == {} and start["status"] == 400
    error = json.loads(out)["error"]
    assert error["param"] == "tts_min_think" and error["code"] == 400
    # A malformed body is left to vLLM (its own 400), untouched.
    seen, start, out = _call(
        tokenizer, {"model": "m", "vllm_xargs": {"tts_max_think": 4}}, [b"{}"], status=400
    )
    assert seen["body"] == {"model": "m", "vllm_xargs": {"tts_max_think": 4}} and out == b"{}"


def test_error_statuses_from_vllm_are_untouched(tokenizer):
    body = {"model": "m", "prompt": "hi", "n": 2, "vllm_xargs": {"tts_first_finish": 1}}
    error = json.dumps({"error": {"message": "boom", "code": 500}}).encode()
    _, start, out = _call(tokenizer, body, [error], status=500)
    assert start["status"] == 500 and out == error


def test_unauthenticated_requests_learn_nothing_from_the_middleware(tokenizer):
    """`--middleware` wraps vLLM's `--api-key` check: a request without the key is passed on untouched (vLLM's
    authentication answers 401), never validated or answered here."""
    body = {"model": "m", "prompt": "hi", "vllm_xargs": {"tts_max_think": -1}}
    seen, start, out = _call(tokenizer, body, [b'{"error": "Unauthorized"}'], status=401, api_key=["k"])
    assert seen["body"] == body and start["status"] == 401
    seen, start, _ = _call(tokenizer, body, [b""], api_key=["k"], authorization="Bearer wrong")
    assert seen["body"] == body
    seen, start, out = _call(tokenizer, body, [b""], api_key=["k"], authorization="Bearer k")
    assert seen == {} and start["status"] == 400 and json.loads(out)["error"]["param"] == "tts_max_think"
