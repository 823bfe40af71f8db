"""The reward contract (signals in, a total with named components out), rent, and the built-in reward."""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import attrs

from esper_core.leyline import FactoredAction, LifecycleOp, SeedStateReport
from esper_core.validators import non_negative


@attrs.frozen
class RewardContext:
    """Handed to a reward's ``build``."""

    episode_length: int
    host_params: int
    metric_name: str


@attrs.frozen
class RewardSignals:
    """Everything a reward may use for one environment for one decision.

    The decision was taken after epoch t; the reward is computed after epoch t + 1's validation.
    ``previous_metric`` and ``previous_slots`` describe the state the decision was taken in (epoch t);
    ``metric`` and ``slots`` the state after it took effect (epoch t + 1). ``metric`` is the task's score:
    the validation metric, or minus the validation loss for a loss-based task; higher is better.
    ``terminal`` marks the episode's last reward. ``control_metric`` and ``control_previous_metric`` are
    the paired control environment's scores at the same two epochs (the same host, initial weights and
    data order, never growing), present only when the run's reward kind declares ``needs_control``.
    """

    env_id: int
    epoch: int
    episode_length: int
    action: FactoredAction
    action_success: bool
    metric: float
    previous_metric: float
    host_params: int
    effective_seed_params: float
    slots: tuple[SeedStateReport, ...]
    previous_slots: tuple[SeedStateReport, ...]
    terminal: bool
    rolled_back: bool
    control_metric: float | None
    control_previous_metric: float | None


@attrs.frozen
class RewardBreakdown:
    """A reward and the named terms that sum to it (emitted as telemetry every step)."""

    total: float
    components: dict[str, float]

    @classmethod
    def from_components(cls, components: dict[str, float]) -> RewardBreakdown:
        return cls(total=float(sum(components.values())), components=dict(components))


@runtime_checkable
class RewardFunction(Protocol):
    def compute(self, signals: RewardSignals) -> RewardBreakdown: ...


def parameter_rent(effective_params: float, host_params: int, *, weight: float, cap: float) -> float:
    """Rent charged per step: ``weight * log(1 + effective / host)``, capped at ``cap`` (>= 0)."""
    if host_params <= 0:
        raise ValueError(f"host_params must be positive, got {host_params}")
    return min(weight * math.log1p(max(effective_params, 0.0) / host_params), cap)


@attrs.frozen
class BasicRewardConfig:
    """Options of the built-in ``basic`` reward."""

    metric_weight: float = attrs.field(default=10.0, validator=non_negative())
    rent_weight: float = attrs.field(default=0.5, validator=non_negative())
    rent_cap: float = attrs.field(default=1.0, validator=non_negative())
    action_cost: float = attrs.field(default=0.01, validator=non_negative())
    invalid_action_cost: float = attrs.field(default=0.05, validator=non_negative())


class BasicReward:
    """Metric improvement minus parameter rent minus small action costs.

    ``metric_gain = metric_weight * (metric - previous_metric)``,
    ``rent = -parameter_rent(...)``, ``action = -action_cost`` for any non-WAIT op and
    ``-invalid_action_cost`` more when the op failed.
    """

    def __init__(self, config: BasicRewardConfig, context: RewardContext) -> None:
        self.config = config
        self.context = context

    def compute(self, signals: RewardSignals) -> RewardBreakdown:
        config = self.config
        gain = signals.metric - signals.previous_metric
        action_cost = 0.0
        if signals.action.op is not LifecycleOp.WAIT:
            action_cost -= config.action_cost
            if not signals.action_success:
                action_cost -= config.invalid_action_cost
        return RewardBreakdown.from_components(
            {
                "metric_gain": config.metric_weight * gain,
                "rent": -parameter_rent(
                    signals.effective_seed_params, signals.host_params,
                    weight=config.rent_weight, cap=config.rent_cap,
                ),
                "action_cost": action_cost,
            }
        )
