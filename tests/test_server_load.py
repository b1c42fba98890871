"""The OpenAI server under load: hundreds of mixed requests at concurrency 32 on a KV cache small enough that
vLLM preempts requests (its preemption counter must rise).

The mix: greedy requests with budgets (max, max + answer prefix, min with waits, max waits), plain greedy
requests, First Finish requests with n=4, streams the client cuts after a few events, and invalid `tts_*`
values (streamed and not). Checked exactly: every greedy answer is token-identical to the same request sent alone
(and so is its thinking report), budgets hold at the exact token position, every invalid request gets HTTP 400
naming the parameter, every FFS response has its first finisher in ``choices[0]`` and only stopped losers besides
(plain OpenAI fields), the server answers afterwards, and its log has no traceback and no ERROR line.
"""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from vllm_ttsplugin.testing import load_tiny_model_info

pytestmark = [pytest.mark.server, pytest.mark.vllm]

CONCURRENCY = 32
REPEATS = 4  # each greedy request is sent this many times under load
QUESTIONS = [
    "What is 2 + 2?",
    "Is 17 a prime number?",
    "A train travels 60 miles per hour for 2 hours. How far does it go?",
    "What is the square root of 25?",
    "Compute 12 times 12.",
    "How many sides does a triangle have?",
]
PREFIX = "\nFinal Answer:"
# How thinking tokens are counted (README, Semantics): injected wait tokens are not the model's own tokens and do
# not count (s1's rule).
WAITS_COUNT_AS_THINKING = False
INVALID = [  # (vllm_xargs, extra body, the parameter the 400 must name)
    ({"tts_max_think": -3}, {}, "tts_max_think"),
    ({"tts_min_think": 9, "tts_max_think": 4}, {}, "tts_min_think"),
    ({"tts_wait": ""}, {}, "tts_wait"),
    ({"tts_bogus": 1}, {}, "tts_bogus"),
    ({"tts_max_think": 5, "tts_think_end": "<|im_end|>"}, {}, "tts_think_end"),
    ({"tts_first_finish": 5}, {"n": 4}, "tts_first_finish"),
    ({"tts_first_finish": 1, "tts_group": 7}, {"n": 4}, "tts_group"),
    ({"tts_first_finish": "x"}, {"n": 2}, "tts_first_finish"),
]


def _metric(base: str, name: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=30).text
    values = [
        float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    ]
    assert values, f"{name} not in /metrics"
    return sum(values)


@pytest.fixture(scope="module")
def workload(tiny_model_dir):
    """The distinct greedy request bodies, the FFS body, and the shuffled load (kind, body) of ~230 requests."""
    from transformers import AutoTokenizer

    info = load_tiny_model_info(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    end = info.think_end_ids[0]
    model = str(tiny_model_dir)

    def prompt(question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    shapes = [
        {},  # no tts_* keys
        {"vllm_xargs": {"tts_max_think": 5, "tts_answer_prefix": PREFIX}},
        {"vllm_xargs": {"tts_max_think": 13}},
        {"vllm_xargs": {"tts_min_think": 8, "tts_max_think": 20}, "logit_bias": {str(end): 8.0}},
        {"vllm_xargs": {"tts_min_think": 12, "tts_max_waits": 2}, "logit_bias": {str(end): 8.0}},
    ]
    greedy = [
        dict(model=model, prompt=prompt(q), max_tokens=40, temperature=0, return_token_ids=True, **shape)
        for q in QUESTIONS
        for shape in shapes
    ]
    ffs = [
        dict(
            model=model,
            prompt=prompt(q),
            n=4,
            max_tokens=64,
            temperature=1.0,
            logit_bias={str(tokenizer.eos_token_id): 4.0},
            vllm_xargs={"tts_first_finish": 1, "tts_max_think": 6},
        )
        for q in QUESTIONS
    ]
    load = [("greedy", i) for i in range(len(greedy)) for _ in range(REPEATS)]
    load += [("ffs", i % len(ffs)) for i in range(48)]
    load += [("cut", i % len(QUESTIONS)) for i in range(32)]
    load += [("invalid", i % (2 * len(INVALID))) for i in range(32)]
    random.Random(0).shuffle(load)
    return dict(
        info=info,
        prefix_ids=tokenizer.encode(PREFIX, add_special_tokens=False),
        wait_ids=tokenizer.encode("Wait", add_special_tokens=False),
        greedy=greedy,
        ffs=ffs,
        cut=[dict(model=model, prompt=prompt(q), max_tokens=300, stream=True) for q in QUESTIONS],
        load=load,
        model=model,
    )


def _send(base: str, session: requests.Session, kind: str, index: int, w: dict):
    url = f"{base}/v1/completions"
    if kind == "greedy":
        r = session.post(url, json=w["greedy"][index], timeout=300)
        return r.status_code, r.json()
    if kind == "ffs":
        r = session.post(url, json=w["ffs"][index], timeout=300)
        return r.status_code, r.json()
    if kind == "cut":  # read two events, then hang up in the middle of the stream
        with session.post(url, json=w["cut"][index], stream=True, timeout=300) as r:
            events = 0
            for line in r.iter_lines():
                events += line.startswith(b"data: ")
                if events == 2:
                    break
            return r.status_code, events
    xargs, extra, _ = INVALID[index % len(INVALID)]
    body = dict(model=w["model"], prompt="Let me think", max_tokens=8, vllm_xargs=xargs, **extra)
    body["stream"] = index >= len(INVALID)
    r = session.post(url, json=body, timeout=300)
    return r.status_code, r.text


def _check_budget(body: dict, choice: dict, w: dict) -> None:
    """Budgets at their exact positions (the template opens thinking, so thinking starts at token 0)."""
    xargs = body.get("vllm_xargs")
    if not xargs:
        assert "tts" not in choice  # untouched by the middleware
        return
    report = choice["tts"]["thinking"]
    tokens, end_id, think_end = choice["token_ids"], w["info"].think_end_ids[0], report["think_end"]
    high, low = xargs.get("tts_max_think"), xargs.get("tts_min_think", 0)
    injected = 0 if WAITS_COUNT_AS_THINKING else report["waits"] * len(w["wait_ids"])
    if report["end"] in ("budget", "natural"):
        assert tokens[think_end] == end_id and think_end == report["thinking_tokens"] + injected
    if report["end"] == "budget":
        assert report["thinking_tokens"] == high
        prefix = w["prefix_ids"] if xargs.get("tts_answer_prefix") else []
        assert tokens[think_end + 1 : think_end + 1 + len(prefix)] == prefix[: len(tokens) - think_end - 1]
    elif report["end"] == "natural" and report["waits"] < xargs.get("tts_max_waits", 10**9):
        assert report["thinking_tokens"] >= low
    if low:
        assert report["waits"] >= 1  # the end token is biased: the minimum was enforced by waits


def test_mixed_load_is_exact_rejects_bad_input_and_leaves_the_server_healthy(tts_server, workload):
    base, w = tts_server, workload
    log_start = tts_server.log.stat().st_size
    # The same greedy requests, each alone on an idle server: the reference.
    with requests.Session() as session:
        alone = [session.post(f"{base}/v1/completions", json=b, timeout=300).json() for b in w["greedy"]]
    for body, ref in zip(w["greedy"], alone, strict=True):
        _check_budget(body, ref["choices"][0], w)
    preemptions = _metric(base, "vllm:num_preemptions_total")

    sessions = [requests.Session() for _ in range(CONCURRENCY)]
    for session in sessions:
        # A new connection per request: a pooled keep-alive connection that the server closes as idle (uvicorn's
        # 5 s keep-alive) while a request is being sent on it fails client-side with "Remote end closed
        # connection without response" (seen on a loaded CPU); the server never saw that request.
        session.headers["Connection"] = "close"
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(
                pool.map(
                    lambda job: _send(base, sessions[job[0] % CONCURRENCY], *job[1], w),
                    enumerate(w["load"]),
                )
            )
    finally:
        for s in sessions:
            s.close()

    assert _metric(base, "vllm:num_preemptions_total") > preemptions  # the KV cache was oversubscribed
    counts = {"greedy": 0, "ffs": 0, "cut": 0, "invalid": 0}
    for (kind, index), (status, data) in zip(w["load"], results, strict=True):
        counts[kind] += 1
        if kind == "greedy":
            assert status == 200, data
            got, ref = data["choices"][0], alone[index]["choices"][0]
            assert got["token_ids"] == ref["token_ids"], (index, w["greedy"][index].get("vllm_xargs"))
            assert got.get("tts") == ref.get("tts") and got["finish_reason"] == ref["finish_reason"]
        elif kind == "ffs":
            assert status == 200, data
            choices = data["choices"]
            assert sorted(c["index"] for c in choices) == [0, 1, 2, 3]
            status_of = [c["tts"]["first_finish"] for c in choices]
            if "winner" in status_of:  # the first finisher comes first, every other sample was stopped
                assert status_of[0] == "winner" and choices[0]["tts"]["rank"] == 0
                assert choices[0]["finish_reason"] == "stop"
                for c in choices[1:]:
                    assert (c["tts"]["first_finish"], c["finish_reason"]) in {
                        ("winner", "stop"),
                        ("stopped", "abort"),
                    }
                assert status_of.count("stopped") >= 1
            else:  # nobody finished within max_tokens: all cut, none stopped
                assert all(c["finish_reason"] == "length" for c in choices)
            assert all(c["tts"]["thinking"]["thinking_tokens"] <= 6 for c in choices)
        elif kind == "cut":
            assert status == 200 and data == 2
        else:
            xargs, _, parameter = INVALID[index % len(INVALID)]
            assert status == 400, (xargs, data)
            assert json.loads(data)["error"]["param"] == parameter
    assert counts == {"greedy": REPEATS * len(w["greedy"]), "ffs": 48, "cut": 32, "invalid": 32}

    # Alive and still exact after the load; the log has no traceback and no error.
    assert requests.get(f"{base}/health", timeout=30).status_code == 200
    again = requests.post(f"{base}/v1/completions", json=w["greedy"][1], timeout=300).json()
    assert again["choices"][0]["token_ids"] == alone[1]["choices"][0]["token_ids"]
    with open(tts_server.log, errors="replace") as f:
        f.seek(log_start)
        log = f.read()
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]
