"""ttsplugin's LLM side: thinking control (s1 budget forcing, temperature-scaled end-of-think) for vLLM and
transformers, and First Finish Search.

Imports are lazy, so `import vllm_ttsplugin` needs neither vLLM nor transformers; `vllm_ttsplugin:TTSLogitsProcessor`
resolves through the module `__getattr__` (vLLM's loader does `getattr(module, "TTSLogitsProcessor")`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "TTSLogitsProcessor",
    "ThinkingConfig",
    "ThinkingConfigError",
    "ThinkingReport",
    "thinking_report",
    "ThinkingLogitsProcessor",
    "ThinkingStoppingCriteria",
]

_LAZY = {
    "TTSLogitsProcessor": "vllm_ttsplugin.processor",
    "ThinkingConfig": "vllm_ttsplugin.config",
    "ThinkingConfigError": "vllm_ttsplugin.config",
    "ThinkingReport": "vllm_ttsplugin.report",
    "thinking_report": "vllm_ttsplugin.report",
    "ThinkingLogitsProcessor": "vllm_ttsplugin.hf",
    "ThinkingStoppingCriteria": "vllm_ttsplugin.hf",
}

if TYPE_CHECKING:
    from vllm_ttsplugin.config import ThinkingConfig, ThinkingConfigError
    from vllm_ttsplugin.hf import ThinkingLogitsProcessor, ThinkingStoppingCriteria
    from vllm_ttsplugin.processor import TTSLogitsProcessor
    from vllm_ttsplugin.report import ThinkingReport, thinking_report


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vllm_ttsplugin' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
