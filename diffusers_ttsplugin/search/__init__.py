"""Particle search for flow pipelines: BoN, SoP, SMC, CoDe, SVDD and Rollover Budget Forcing.

Public entry points: [`InferenceScaler`] (search with a reward under an exact NFE budget), [`SMCCallback`]
(zero-code SMC as a pipeline `callback_on_step_end`), the adapters (FLUX, SD3, any velocity function), traces and
the reward-vs-NFE plot.
"""

from .adapters import (
    DiffusersFlowAdapter,
    FlowAdapter,
    FluxAdapter,
    SD3Adapter,
    VelocityAdapter,
    adapter_for,
    register_adapter,
)
from .budget import NFELedger
from .callback import SMCCallback
from .planning import METHODS, SearchPlan, plan_search
from .plot import plot_reward_vs_nfe
from .rbf import RBFDecision, RolloverBudgetForcing
from .scaler import InferenceScaler, SearchResult
from .smc import SMCConfig, SMCState, effective_sample_size, resample, update_log_weights
from .trace import SearchTrace, StepRecord

__all__ = [
    "METHODS",
    "DiffusersFlowAdapter",
    "FlowAdapter",
    "FluxAdapter",
    "InferenceScaler",
    "NFELedger",
    "RBFDecision",
    "RolloverBudgetForcing",
    "SD3Adapter",
    "SMCCallback",
    "SMCConfig",
    "SMCState",
    "SearchPlan",
    "SearchResult",
    "SearchTrace",
    "StepRecord",
    "VelocityAdapter",
    "adapter_for",
    "effective_sample_size",
    "plan_search",
    "plot_reward_vs_nfe",
    "register_adapter",
    "resample",
    "update_log_weights",
]
