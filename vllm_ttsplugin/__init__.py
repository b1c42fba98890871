"""ttsplugin's LLM side: thinking control (s1 budget forcing, temperature-scaled end-of-think) for vLLM and
transformers, First Finish Search and DeepConf (confidence-guided parallel thinking).

Imports are lazy, so `import vllm_ttsplugin` (and `vllm_ttsplugin.testing`) needs neither vLLM nor transformers;
`vllm_ttsplugin:TTSLogitsProcessor` resolves through the module `__getattr__` (vLLM's loader does
`getattr(module, "TTSLogitsProcessor")`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> defining module
_LAZY = {
    # Thinking control: one logits processor for every control, its config and the per-completion report
    "TTSLogitsProcessor": "vllm_ttsplugin.processor",
    "ThinkingConfig": "vllm_ttsplugin.config",
    "ThinkingConfigError": "vllm_ttsplugin.config",
    "TTSParamsError": "vllm_ttsplugin.config",
    "ThinkingReport": "vllm_ttsplugin.report",
    "thinking_report": "vllm_ttsplugin.report",
    # transformers generate()
    "ThinkingLogitsProcessor": "vllm_ttsplugin.hf",
    "ThinkingStoppingCriteria": "vllm_ttsplugin.hf",
    # First Finish Search, in-engine output helpers
    "FFS_MARKER_TEXT": "vllm_ttsplugin.ffs",
    "FirstFinishParamsError": "vllm_ttsplugin.ffs",
    "first_finish_marker": "vllm_ttsplugin.ffs",
    "first_finish_scope": "vllm_ttsplugin.ffs",
    "first_finish_winners": "vllm_ttsplugin.ffs",
    "is_first_finish_stopped": "vllm_ttsplugin.ffs",
    # First Finish Search over the engine (offline / async), FFS-k@N voting
    "FirstFinishResult": "vllm_ttsplugin.first_finish_search",
    "VoteResult": "vllm_ttsplugin.first_finish_search",
    "first_finish": "vllm_ttsplugin.first_finish_search",
    "first_finish_async": "vllm_ttsplugin.first_finish_search",
    "first_finish_vote": "vllm_ttsplugin.first_finish_search",
    "majority_vote_all": "vllm_ttsplugin.first_finish_search",
    # DeepConf: confidence-guided parallel thinking
    "DeepConfResult": "vllm_ttsplugin.deepconf",
    "DeepConfTrace": "vllm_ttsplugin.deepconf",
    "deep_conf": "vllm_ttsplugin.deepconf",
    # answers
    "extract_answer": "vllm_ttsplugin.answers",
    "extract_boxed": "vllm_ttsplugin.answers",
    "extract_final_answer": "vllm_ttsplugin.answers",
    "majority_vote": "vllm_ttsplugin.answers",
}

__all__ = [
    "DeepConfResult",
    "DeepConfTrace",
    "FFS_MARKER_TEXT",
    "FirstFinishParamsError",
    "FirstFinishResult",
    "TTSLogitsProcessor",
    "TTSParamsError",
    "ThinkingConfig",
    "ThinkingConfigError",
    "ThinkingLogitsProcessor",
    "ThinkingReport",
    "ThinkingStoppingCriteria",
    "VoteResult",
    "deep_conf",
    "extract_answer",
    "extract_boxed",
    "extract_final_answer",
    "first_finish",
    "first_finish_async",
    "first_finish_marker",
    "first_finish_scope",
    "first_finish_vote",
    "first_finish_winners",
    "is_first_finish_stopped",
    "majority_vote",
    "majority_vote_all",
    "thinking_report",
]

if TYPE_CHECKING:
    from vllm_ttsplugin.answers import extract_answer, extract_boxed, extract_final_answer, majority_vote
    from vllm_ttsplugin.config import ThinkingConfig, ThinkingConfigError, TTSParamsError
    from vllm_ttsplugin.deepconf import DeepConfResult, DeepConfTrace, deep_conf
    from vllm_ttsplugin.ffs import (
        FFS_MARKER_TEXT,
        FirstFinishParamsError,
        first_finish_marker,
        first_finish_scope,
        first_finish_winners,
        is_first_finish_stopped,
    )
    from vllm_ttsplugin.first_finish_search import (
        FirstFinishResult,
        VoteResult,
        first_finish,
        first_finish_async,
        first_finish_vote,
        majority_vote_all,
    )
    from vllm_ttsplugin.hf import ThinkingLogitsProcessor, ThinkingStoppingCriteria
    from vllm_ttsplugin.processor import TTSLogitsProcessor
    from vllm_ttsplugin.report import ThinkingReport, thinking_report


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vllm_ttsplugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
