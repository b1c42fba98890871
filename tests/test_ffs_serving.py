"""First Finish Search where vLLM serves: the async API over `AsyncLLM`, and the OpenAI server on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from vllm_ttsplugin.ffs import FFS_MARKER_TEXT, find_marker_token, is_first_finish_stopped

PROMPTS = ["What is 2 + 2?", "A train travels 60 miles per hour for 2 hours.", "Let me think"]


def _params(eos: int, **overrides):
    from vllm import SamplingParams

    kwargs = dict(n=8, max_tokens=64, temperature=1.0, seed=0, logit_bias={eos: 4.0})
    kwargs.update(overrides)
    return SamplingParams(**kwargs)


@pytest.mark.vllm
def test_async_api_aborts_the_losers_and_returns_the_in_engine_winners(tiny_model_dir):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from vllm_ttsplugin import first_finish_async
    from vllm_ttsplugin.testing import small_engine_kwargs

    async def reference(engine, eos):
        from vllm.sampling_params import RequestOutputKind

        async def one(p: int):
            params = _params(eos, output_kind=RequestOutputKind.FINAL_ONLY)
            async for out in engine.generate(PROMPTS[p], params, f"ref-{p}"):
                final = out
            return final

        return await asyncio.gather(*(one(p) for p in range(len(PROMPTS))))

    async def main():
        engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(model=str(tiny_model_dir), seed=0, **small_engine_kwargs(max_model_len=512))
        )
        try:
            eos = engine.get_tokenizer().eos_token_id
            refs = await reference(engine, eos)
            for k in (1, 3):
                results = await first_finish_async(
                    engine, PROMPTS, n=8, k=k, sampling_params=_params(eos, n=1)
                )
                assert engine.output_processor.get_num_unfinished_requests() == 0  # losers aborted
                for result, ref in zip(results, refs, strict=True):
                    # The in-engine winners are the k shortest natural finishers of the reference
                    # (tests/test_ffs_engine.py). The async path picks the same samples; their order may differ
                    # only if samples entered the engine steps apart (each is its own request), so compare sets.
                    natural = sorted(
                        (len(c.token_ids), c.index) for c in ref.outputs if c.finish_reason == "stop"
                    )
                    assert {c.index for c in result.winners} == {i for _, i in natural[:k]}
                    assert len(result.winners) == k
                    for c in result.winners:
                        assert list(c.token_ids) == list(ref.outputs[c.index].token_ids)
                        assert c.finish_reason == "stop"
                    for c in result.completions:  # losers may run a few steps past the decision
                        full = list(ref.outputs[c.index].token_ids)
                        assert list(c.token_ids) == full[: len(c.token_ids)]
                        assert c.finish_reason in ("abort", "stop", "length")
                    assert result.num_tokens == sum(len(c.token_ids) for c in result.completions)
                    assert result.num_tokens < sum(len(c.token_ids) for c in ref.outputs)
            # The engine keeps serving after the aborts.
            async for out in engine.generate(PROMPTS[0], _params(eos, n=1), "after"):
                last = out
            assert last.finished and last.outputs[0].finish_reason is not None
            assert engine.output_processor.get_num_unfinished_requests() == 0
        finally:
            engine.shutdown()

    asyncio.run(main())


@pytest.mark.server
def test_server_first_finish_with_n4_and_vllm_xargs_and_bad_input_gets_400(tts_server, tiny_model_dir):
    import requests
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    marker = find_marker_token(tokenizer)
    body = dict(
        model=str(tiny_model_dir),
        prompt=PROMPTS[2],
        n=4,
        max_tokens=64,
        temperature=1.0,
        seed=0,
        logit_bias={str(tokenizer.eos_token_id): 4.0},
        return_token_ids=True,
    )

    def complete(**extra):
        return requests.post(f"{tts_server}/v1/completions", json={**body, **extra}, timeout=120)

    plain = complete()
    assert plain.status_code == 200, plain.text
    ref = plain.json()["choices"]
    assert all("tts" not in c for c in ref)  # requests without tts_* keys pass the middleware untouched
    ffs = complete(vllm_xargs={"tts_first_finish": 1})  # no client-side group key: n=4 samples are the race
    assert ffs.status_code == 200, ffs.text
    choices = ffs.json()["choices"]

    # The server sends the n samples to the engine core one by one, so they may start a step apart: the race is
    # decided by time, and a loser can be one token longer or shorter than in lockstep (tests/test_ffs_engine.py
    # checks exact lockstep positions). Here: the winner first, every other sample cut short by the marker.
    winner, *losers = choices
    assert winner["finish_reason"] == "stop" and winner["tts"] == {"first_finish": "winner", "rank": 0}
    assert winner["token_ids"] == ref[winner["index"]]["token_ids"] and winner["stop_reason"] is None
    assert sorted(c["index"] for c in choices) == [0, 1, 2, 3]
    for choice in losers:
        full = ref[choice["index"]]["token_ids"]
        assert choice["finish_reason"] == "abort" and choice["tts"] == {"first_finish": "stopped"}
        assert choice["stop_reason"] == marker and is_first_finish_stopped(choice)
        assert choice["token_ids"][-1] == marker
        assert choice["token_ids"][:-1] == full[: len(choice["token_ids"]) - 1]
        assert len(choice["token_ids"]) <= len(full)  # stopped before its own natural end
        assert abs(len(choice["token_ids"]) - len(winner["token_ids"]) - 1) <= 1
        assert FFS_MARKER_TEXT not in choice["text"]

    for xargs, n, parameter in [
        ({"tts_first_finish": 0}, 4, "tts_first_finish"),
        ({"tts_first_finish": 5}, 4, "tts_first_finish"),
        ({"tts_first_finish": 1}, 1, "tts_first_finish"),
        ({"tts_first_finish": 1, "tts_group": 5}, 4, "tts_group"),
        ({"tts_first_finish": "x"}, 4, "tts_first_finish"),
        ({"tts_first_finish": 1.5}, 4, "tts_first_finish"),
    ]:
        for stream in (False, True):  # a stream is refused before it starts, like any request
            bad = complete(n=n, vllm_xargs=xargs, stream=stream)
            assert bad.status_code == 400, (xargs, bad.text)
            assert bad.json()["error"]["param"] == parameter
    again = complete(vllm_xargs={"tts_first_finish": 1})  # the engine keeps serving
    assert again.status_code == 200
    assert [c["tts"]["first_finish"] for c in again.json()["choices"]][0] == "winner"


@pytest.mark.server
def test_two_clients_using_one_group_name_never_share_a_race(tts_server, tiny_model_dir):
    """`tts_group` on the server ties the prompts of one HTTP request, nothing else: two clients sending the same
    name at the same time each get their own race (each has its own first finisher), and a request reusing the
    name after them is not stopped by their finished race."""
    from concurrent.futures import ThreadPoolExecutor

    import requests
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    body = dict(
        model=str(tiny_model_dir),
        n=4,
        max_tokens=64,
        temperature=1.0,
        seed=0,
        logit_bias={str(tokenizer.eos_token_id): 4.0},
        vllm_xargs={"tts_first_finish": 1, "tts_group": "team"},
    )

    def complete(prompt, **extra):
        r = requests.post(
            f"{tts_server}/v1/completions", json={**body, "prompt": prompt, **extra}, timeout=120
        )
        assert r.status_code == 200, r.text
        return r.json()["choices"]

    # Seeded: without FFS, every request below has natural finishers (so each race has a first finisher).
    for prompt, n in ((PROMPTS[0], 4), (PROMPTS[1], 4), (PROMPTS[2], 4), (PROMPTS[:2], 2)):
        plain = complete(prompt, n=n, vllm_xargs={})
        assert any(c["finish_reason"] == "stop" for c in plain)

    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(complete, PROMPTS[:2]))
    later = complete(PROMPTS[2])
    for choices in [*both, later]:
        assert choices[0]["tts"]["first_finish"] == "winner" and choices[0]["finish_reason"] == "stop"
        assert len(choices[0]["text"]) > 0  # a natural answer, not a sample stopped at its first token
        assert all(c["tts"]["first_finish"] in ("winner", "stopped") for c in choices)

    # One HTTP request with several prompts: the group ties them into one race of 2 x 2 samples.
    r = requests.post(
        f"{tts_server}/v1/completions",
        json={**body, "n": 2, "prompt": PROMPTS[:2], "return_token_ids": True},
        timeout=120,
    )
    choices = r.json()["choices"]
    status = {c["index"]: c["tts"]["first_finish"] for c in choices}
    winners = [c for c in choices if status[c["index"]] == "winner"]
    assert len(choices) == 4 and len(winners) >= 1
    first = min(len(c["token_ids"]) for c in winners)
    for c in choices:  # every sample of both prompts ended by the first finish of the joint race
        assert status[c["index"]] == "winner" or len(c["token_ids"]) <= first + 2
    assert [c["index"] // 2 for c in choices] == [0, 0, 1, 1]  # choices stay grouped by prompt


@pytest.mark.server
def test_plain_openai_sdk_client_reads_winners_and_thinking_reports(tts_server, tiny_model_dir):
    """The official `openai` SDK, reading only OpenAI fields: `choices[0]` is the first finisher, losers do not
    say "stop"; each choice carries its thinking report (`tts`), equal to the report of its own tokens."""
    from openai import OpenAI
    from transformers import AutoTokenizer

    from vllm_ttsplugin import ThinkingConfig
    from vllm_ttsplugin.report import report_tokens
    from vllm_ttsplugin.vocab import TokenizerVocab

    client = OpenAI(base_url=f"{tts_server}/v1", api_key="-", max_retries=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    end = tokenizer.convert_tokens_to_ids("</think>")
    xargs = {
        "tts_first_finish": 1,
        "tts_min_think": 6,
        "tts_max_think": 12,
        "tts_answer_prefix": "\nFinal Answer:",
    }
    kwargs = dict(
        model=str(tiny_model_dir),
        messages=[{"role": "user", "content": "Is 17 a prime number?"}],
        n=4,
        max_tokens=40,
        temperature=1.0,
        seed=3,
        logit_bias={str(end): 3.0, str(tokenizer.eos_token_id): 3.0},
    )
    response = client.chat.completions.create(**kwargs, extra_body={"vllm_xargs": xargs})
    first, *rest = response.choices
    assert first.finish_reason == "stop" and first.tts["first_finish"] == "winner" and first.tts["rank"] == 0
    assert all(c.finish_reason in ("stop", "abort") for c in rest)
    assert all((c.finish_reason == "abort") == (c.tts["first_finish"] == "stopped") for c in rest)
    assert (
        not hasattr(first, "token_ids") or first.token_ids is None
    )  # asked for by the middleware, not by us

    # The reports are those of the tokens (asked for explicitly this time). Seeded: the same samples, but which
    # ones are stopped when depends on timing (the server starts the n samples one by one).
    with_ids = client.chat.completions.create(
        **kwargs, extra_body={"vllm_xargs": xargs, "return_token_ids": True}
    )
    vocab = TokenizerVocab(tokenizer)
    config = ThinkingConfig(**{k: v for k, v in xargs.items() if k != "tts_first_finish"})
    by_index = {c.index: c for c in response.choices}
    for c in with_ids.choices:
        tokens = c.token_ids[:-1] if c.tts["first_finish"] == "stopped" else c.token_ids
        expected = report_tokens(tokens, with_ids.prompt_token_ids, config, vocab)
        assert c.tts["thinking"] == json.loads(json.dumps(dataclasses.asdict(expected)))
        same = by_index[c.index]  # a natural finisher of both runs is the same seeded sample
        if c.tts["first_finish"] == same.tts["first_finish"] == "winner":
            assert same.tts["thinking"] == c.tts["thinking"] and same.message.content == c.message.content
        assert 6 <= c.tts["thinking"]["thinking_tokens"] <= 12 or c.tts["thinking"]["end"] == "open"

    # Streamed: each choice's last chunk says how it ended (winner: "stop", loser: "abort") and carries its report.
    finals = {}
    for chunk in client.chat.completions.create(**kwargs, stream=True, extra_body={"vllm_xargs": xargs}):
        for c in chunk.choices:
            if c.finish_reason is not None:
                finals[c.index] = (c.finish_reason, c.tts)
    assert sorted(finals) == [0, 1, 2, 3]
    reasons = {"winner": "stop", "stopped": "abort", "unfinished": "length"}
    assert all(reason == reasons[tts["first_finish"]] for reason, tts in finals.values())
    ranks = sorted(tts["rank"] for _, tts in finals.values() if tts["first_finish"] == "winner")
    assert ranks == list(range(len(ranks))) and ranks
    for (
        _,
        tts,
    ) in finals.values():  # the prompt opens thinking (chat template): the stream's prompt ids were read
        assert tts["thinking"]["think_start"] == 0 and tts["thinking"]["thinking_tokens"] <= 12


@pytest.mark.server
def test_server_confidence_stop_with_n4_in_engine_and_bad_input_gets_400(tts_server, tiny_model_dir):
    """DeepConf's confidence stop on the OpenAI server, in-engine for an n=4 request: every sample is checked on
    its own (no race), so the stops are at exact positions: with a threshold above every window, right after the
    first full window."""
    import requests
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    marker = find_marker_token(tokenizer)
    body = dict(
        model=str(tiny_model_dir), prompt=PROMPTS[0], n=4, max_tokens=24, temperature=1.0, seed=3,
        return_token_ids=True,
    )  # fmt: skip

    def complete(**extra):
        return requests.post(f"{tts_server}/v1/completions", json={**body, **extra}, timeout=120)

    plain = complete().json()["choices"]
    kept = complete(vllm_xargs={"tts_confidence_threshold": -1000.0, "tts_confidence_window": 4}).json()
    assert [c["tts"] for c in kept["choices"]] == [{"confidence": "kept"}] * 4
    assert [c["token_ids"] for c in kept["choices"]] == [c["token_ids"] for c in plain]
    stopped = complete(vllm_xargs={"tts_confidence_threshold": 1000.0, "tts_confidence_window": 4}).json()
    for choice in stopped["choices"]:
        full = plain[choice["index"]]["token_ids"]
        if len(full) <= 4:
            continue  # ended before its first full window
        assert choice["tts"] == {"confidence": "stopped"} and choice["finish_reason"] == "abort"
        assert choice["token_ids"] == full[:4] + [marker] and FFS_MARKER_TEXT not in choice["text"]
    bad = complete(vllm_xargs={"tts_confidence_threshold": 1.0, "tts_confidence_top_k": 0}, stream=True)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tts_confidence_top_k"
