"""First Finish Search where vLLM serves: the async API over `AsyncLLM`, and the OpenAI server on loopback."""

from __future__ import annotations

import asyncio

import pytest

from vllm_ttsplugin.ffs import FFS_STOP_REASON, is_first_finish_stopped

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
    marker = tokenizer.encode(FFS_STOP_REASON, add_special_tokens=False)[0]
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
    ffs = complete(vllm_xargs={"tts_first_finish": 1})  # no client-side group key: n=4 samples are the race
    assert ffs.status_code == 200, ffs.text
    choices = ffs.json()["choices"]

    # The server sends the n samples to the engine core one by one, so they may start a step apart: the race is
    # decided by time, and a loser can be one token longer or shorter than in lockstep (tests/test_ffs_engine.py
    # checks exact lockstep positions). Here: one natural winner, every other sample cut short by the marker.
    winners = [c for c in choices if not is_first_finish_stopped(c)]
    assert len(winners) == 1
    winner = winners[0]
    assert winner["finish_reason"] == "stop" and winner["token_ids"] == ref[winner["index"]]["token_ids"]
    for choice in choices:
        full = ref[choice["index"]]["token_ids"]
        if choice is not winner:
            assert choice["finish_reason"] == "stop" and choice["stop_reason"] == FFS_STOP_REASON
            assert (
                choice["token_ids"][-1] == marker
                and choice["token_ids"][:-1] == full[: len(choice["token_ids"]) - 1]
            )
            assert len(choice["token_ids"]) <= len(full)  # stopped before its own natural end
            assert abs(len(choice["token_ids"]) - len(winner["token_ids"]) - 1) <= 1
        assert FFS_STOP_REASON not in choice["text"]

    for xargs, n, parameter in [
        ({"tts_first_finish": 0}, 4, "tts_first_finish"),
        ({"tts_first_finish": 5}, 4, "tts_first_finish"),
        ({"tts_first_finish": 1}, 1, "tts_first_finish"),
        ({"tts_first_finish": 1, "tts_group": 5}, 4, "tts_group"),
        ({"tts_first_finish": "x"}, 4, "tts_first_finish"),
        ({"tts_first_finish": 1.5}, 4, "tts_first_finish"),
    ]:
        bad = complete(n=n, vllm_xargs=xargs)
        assert bad.status_code == 400, (xargs, bad.text)
        assert parameter in bad.text
    again = complete(vllm_xargs={"tts_first_finish": 1})  # the engine keeps serving
    assert again.status_code == 200
    assert sum(not is_first_finish_stopped(c) for c in again.json()["choices"]) == 1
