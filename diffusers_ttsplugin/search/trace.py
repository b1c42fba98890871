"""What a search did, step by step: records, anytime reward-vs-NFE curves, JSON round-trip."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    # JSON has no inf/nan: write them as strings, read them back in `_unclean`.
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _unclean(value: Any) -> Any:
    if value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, list):
        return [_unclean(v) for v in value]
    if isinstance(value, dict):
        return {k: _unclean(v) for k, v in value.items()}
    return value


@dataclass
class StepRecord:
    """One event of a search for one prompt.

    Attributes:
        prompt: Index of the prompt.
        step: Grid index the proposals were scored at (0 = initial noise, num_steps − 1 = last non-zero time;
            `num_steps` = the integrated final sample).
        time: Linear time t of that grid index (1 = noise).
        nfe: NFE this prompt had used after the event.
        kind: "init", "propose", "select", "resample", "final" (what happened).
        rewards: Rewards of the proposals scored in this event (draw order).
        selected: Indices (into `rewards`, or particles) kept / moved on from.
        chain: Chain index for chain-based methods (SVDD, CoDe, SoP, RBF).
        quota, used, rollover, action: Rollover Budget Forcing's bookkeeping (see `RBFDecision`).
        ess: Effective sample size before resampling (SMC); resampled: whether it resampled; ancestors: the
            ancestor of each particle after resampling.
        best_reward: Best proposal reward this prompt has seen so far (the anytime curve).
    """

    prompt: int
    step: int
    time: float
    nfe: int
    kind: str
    rewards: list[float] = field(default_factory=list)
    selected: list[int] | None = None
    chain: int | None = None
    quota: int | None = None
    used: int | None = None
    rollover: int | None = None
    action: str | None = None
    ess: float | None = None
    resampled: bool | None = None
    ancestors: list[int] | None = None
    best_reward: float = -math.inf

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class SearchTrace:
    """Everything a search recorded: its settings, the NFE budget and what it used, and the step records.

    Attributes:
        method: "bon", "sop", "smc", "code", "svdd" or "rbf".
        settings: The resolved knobs (particles, chains, λ, ...), after scaling to the budget.
        nfe_budget: NFE each prompt could use.
        nfe: NFE each prompt used.
        prompts: The prompts.
        records: [`StepRecord`]s in the order they happened.
        final_rewards: Reward of the returned sample of each prompt.
    """

    method: str
    settings: dict
    nfe_budget: int
    nfe: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    records: list[StepRecord] = field(default_factory=list)
    final_rewards: list[float] = field(default_factory=list)

    def for_prompt(self, prompt: int = 0) -> list[StepRecord]:
        return [r for r in self.records if r.prompt == prompt]

    def curve(self, prompt: int = 0) -> tuple[list[int], list[float]]:
        """Anytime curve of one prompt: (NFE used, best proposal reward so far) after each event."""
        nfe, best = [], []
        for record in self.for_prompt(prompt):
            if record.kind == "final" or not math.isfinite(record.best_reward):
                continue
            if nfe and nfe[-1] == record.nfe:
                best[-1] = record.best_reward
            else:
                nfe.append(record.nfe)
                best.append(record.best_reward)
        return nfe, best

    def resampling_events(self, prompt: int | None = None) -> list[StepRecord]:
        return [r for r in self.records if r.resampled and (prompt is None or r.prompt == prompt)]

    def to_dict(self) -> dict:
        return _clean(
            {
                "method": self.method,
                "settings": self.settings,
                "nfe_budget": self.nfe_budget,
                "nfe": self.nfe,
                "prompts": self.prompts,
                "final_rewards": self.final_rewards,
                "records": [r.to_dict() for r in self.records],
            }
        )

    def to_json(self, path: str | Path | None = None, indent: int | None = 1) -> str:
        """The trace as JSON text (non-finite floats as the strings "inf", "-inf", "nan"); written to `path`
        when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> SearchTrace:
        data = _unclean(data)
        records = [StepRecord(**r) for r in data.get("records", [])]
        return cls(
            method=data["method"],
            settings=data.get("settings", {}),
            nfe_budget=data["nfe_budget"],
            nfe=data.get("nfe", []),
            prompts=data.get("prompts", []),
            records=records,
            final_rewards=data.get("final_rewards", []),
        )

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> SearchTrace:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))
