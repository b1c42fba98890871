"""First Finish Search under vLLM data parallelism, without engines (light: no engine starts).

vLLM 0.32's load-balancing client (`DPLBAsyncMPClient`) routes each of the n samples of a request to an engine core
on its own, where a race cannot see its siblings. Admission therefore refuses an FFS request that the frontend
would spread over several engines unless it was sent to one engine (`data_parallel_rank`, which the samples copy),
and `TTSMiddleware` sends every FFS request to one engine. Measured with real engines (a `--data-parallel-size 2`
server) in the README's parallelism section; here the decisions, through vLLM's real `InputProcessor` class and
`TTSLogitsProcessor.validate_params`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_ttsplugin import TTSLogitsProcessor
from vllm_ttsplugin.ffs import RACE_ID_KEY, first_finish_scope
from vllm_ttsplugin.processor import load_balanced_engines
from vllm_ttsplugin.serving import DP_RANK_HEADER, TTSMiddleware


def parallel(size=1, external_lb=False, rank_local=None, local_only=False, size_local=None):
    return SimpleNamespace(
        data_parallel_size=size,
        data_parallel_external_lb=external_lb,
        data_parallel_rank_local=rank_local,
        local_engines_only=local_only,
        data_parallel_size_local=size_local if size_local is not None else size,
    )


def test_engines_one_frontend_balances_over():
    assert load_balanced_engines(parallel(1)) == 1
    assert load_balanced_engines(None) == 1
    assert load_balanced_engines(parallel(4)) == 4  # internal load balancing (one server, 4 engines)
    assert load_balanced_engines(parallel(4, external_lb=True)) == 1  # one server per engine
    assert load_balanced_engines(parallel(4, rank_local=2)) == 1  # offline: one LLM per rank
    assert (
        load_balanced_engines(parallel(8, local_only=True, size_local=2)) == 2
    )  # hybrid: the node's engines


@pytest.fixture(scope="module")
def frontend_class():
    """vLLM's real InputProcessor class, with a stand-in constructor: admission finds it on the call stack and reads
    its config and the `data_parallel_rank` argument of `process_inputs`, as in vLLM."""
    from vllm.v1.engine.input_processor import InputProcessor

    class Frontend(InputProcessor):
        tokenizer = None  # FFS needs none (losers are then stopped with EOS)

        def __init__(self, parallel_config):  # noqa: D107 - vLLM's constructor needs a whole engine
            self.vllm_config = SimpleNamespace(parallel_config=parallel_config)

        def process_inputs(self, params, data_parallel_rank=None):
            self._validate_params(params)

        def _validate_params(self, params):
            TTSLogitsProcessor.validate_params(params)

    return Frontend


def ffs_params(n=4, **extra):
    from vllm import SamplingParams

    return SamplingParams(n=n, max_tokens=8, extra_args={"tts_first_finish": 1, **extra})


def test_spread_race_is_refused(frontend_class):
    from vllm.exceptions import VLLMValidationError

    frontend = frontend_class(parallel(2))
    with pytest.raises(VLLMValidationError, match="data parallelism") as info:
        frontend.process_inputs(ffs_params())
    assert info.value.parameter == "tts_first_finish"
    with first_finish_scope(), pytest.raises(VLLMValidationError, match="data parallelism") as info:
        frontend.process_inputs(ffs_params(n=1, tts_group="g"))
    assert info.value.parameter == "tts_group"


def test_race_sent_to_one_engine_is_admitted(frontend_class):
    params = ffs_params()
    frontend_class(parallel(2)).process_inputs(params, data_parallel_rank=1)
    assert isinstance(params.extra_args[RACE_ID_KEY], str)
    # One engine per frontend (external load balancing) or no data parallelism: nothing to route.
    for config in (parallel(2, external_lb=True), parallel(1)):
        frontend_class(config).process_inputs(ffs_params())
    # Requests without FFS keys are not concerned (thinking control has no state shared between samples).
    from vllm import SamplingParams

    frontend_class(parallel(2)).process_inputs(SamplingParams(n=4))


def test_group_must_stay_on_one_engine(frontend_class):
    from vllm.exceptions import VLLMValidationError

    frontend = frontend_class(parallel(2))
    with first_finish_scope():
        first, second = ffs_params(n=1, tts_group="g"), ffs_params(n=1, tts_group="g")
        frontend.process_inputs(first, data_parallel_rank=0)
        frontend.process_inputs(second, data_parallel_rank=0)
        assert first.extra_args[RACE_ID_KEY] == second.extra_args[RACE_ID_KEY]
        with pytest.raises(VLLMValidationError, match="different data-parallel engines") as info:
            frontend.process_inputs(ffs_params(n=1, tts_group="g"), data_parallel_rank=1)
        assert info.value.parameter == "tts_group"
        frontend.process_inputs(ffs_params(n=1, tts_group="other"), data_parallel_rank=1)  # its own race


def test_middleware_sends_each_race_to_one_engine():
    middleware = TTSMiddleware(app=None)
    state = SimpleNamespace(vllm_config=SimpleNamespace(parallel_config=parallel(3)))
    base = [(b"content-type", b"application/json")]
    ranks = [dict(middleware._with_engine(base, state))[DP_RANK_HEADER] for _ in range(4)]
    assert ranks == [b"0", b"1", b"2", b"0"]  # round robin over the engines
    own = [*base, (b"X-Data-Parallel-Rank", b"2")]
    assert middleware._with_engine(own, state) == own  # the client's (or a router's) choice stands
    single = SimpleNamespace(vllm_config=SimpleNamespace(parallel_config=parallel(1)))
    assert middleware._with_engine(base, single) == base
