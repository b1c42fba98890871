"""vllm_ttsplugin: test-time scaling for vLLM.

The public names load lazily, so ``import vllm_ttsplugin`` (and ``vllm_ttsplugin.testing``) does not import vLLM.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> defining module
_LAZY = {
    # First Finish Search, in-engine (logits processor) and output helpers
    "FFS_STOP_REASON": "vllm_ttsplugin.ffs",
    "FirstFinishLogitsProcessor": "vllm_ttsplugin.ffs",
    "FirstFinishLogitsProcessorV2": "vllm_ttsplugin.ffs",
    "first_finish_winners": "vllm_ttsplugin.ffs",
    "is_first_finish_stopped": "vllm_ttsplugin.ffs",
    # First Finish Search over the engine (offline / async), FFS-k@N voting
    "FirstFinishResult": "vllm_ttsplugin.search",
    "VoteResult": "vllm_ttsplugin.search",
    "first_finish": "vllm_ttsplugin.search",
    "first_finish_async": "vllm_ttsplugin.search",
    "first_finish_vote": "vllm_ttsplugin.search",
    "majority_vote_all": "vllm_ttsplugin.search",
    # answers
    "extract_answer": "vllm_ttsplugin.answers",
    "extract_boxed": "vllm_ttsplugin.answers",
    "extract_final_answer": "vllm_ttsplugin.answers",
    "majority_vote": "vllm_ttsplugin.answers",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vllm_ttsplugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
