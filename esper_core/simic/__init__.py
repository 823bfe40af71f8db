"""Simic: learning pressure (the reward contract, rent accounting and the built-in rewards)."""

from esper_core.simic.rewards import (
    BasicReward,
    BasicRewardConfig,
    RewardBreakdown,
    RewardContext,
    RewardFunction,
    RewardSignals,
    parameter_rent,
)

__all__ = [
    "BasicReward",
    "BasicRewardConfig",
    "RewardBreakdown",
    "RewardContext",
    "RewardFunction",
    "RewardSignals",
    "parameter_rent",
]
