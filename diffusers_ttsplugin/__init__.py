"""Diffusion side of ttsplugin: a flow SDE scheduler for diffusers, particle search (InferenceScaler, SMCCallback),
rewards, interpolant math and an analytic test flow.

`FlowSDEScheduler` imports diffusers, so it is loaded on first access; `diffusers_ttsplugin.interpolants` and
`diffusers_ttsplugin.toy` need only torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduling_flow_sde import FlowSDEScheduler, FlowSDESchedulerOutput
    from .search import InferenceScaler, SearchResult, SMCCallback

_LAZY = {
    "FlowSDEScheduler": "scheduling_flow_sde",
    "FlowSDESchedulerOutput": "scheduling_flow_sde",
    "InferenceScaler": "search",
    "SearchResult": "search",
    "SMCCallback": "search",
}

_SUBMODULES = ("interpolants", "toy", "testing", "scheduling_flow_sde", "rewards", "search")

__all__ = ["FlowSDEScheduler", "FlowSDESchedulerOutput", "InferenceScaler", "SMCCallback", "SearchResult"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
