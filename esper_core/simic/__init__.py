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
from esper_core.simic.frontier import MARGIN_TERMS, FrontierReward, FrontierRewardConfig, uncommitted
from esper_core.simic.shaped import (
    STAGE_POTENTIAL,
    ShapedReward,
    ShapedRewardConfig,
    SimplifiedReward,
    SimplifiedRewardConfig,
    alpha_shock,
    bounded_attribution,
    internal_reversals,
    potential_shaping,
    removed_seeds,
)

__all__ = [
    "MARGIN_TERMS",
    "FrontierReward",
    "FrontierRewardConfig",
    "uncommitted",
    "STAGE_POTENTIAL",
    "ShapedReward",
    "ShapedRewardConfig",
    "SimplifiedReward",
    "SimplifiedRewardConfig",
    "alpha_shock",
    "bounded_attribution",
    "internal_reversals",
    "potential_shaping",
    "removed_seeds",
    "BasicReward",
    "BasicRewardConfig",
    "RewardBreakdown",
    "RewardContext",
    "RewardFunction",
    "RewardSignals",
    "parameter_rent",
]
