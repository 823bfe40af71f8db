"""The core's own plugin: the segment-boundary surface and the built-in rewards, registered like any other."""

from __future__ import annotations

from esper_core.hookspecs import Register, hookimpl
from esper_core.leyline import SEGMENT_BOUNDARY
from esper_core.registry import RewardKind, SurfaceKind
from esper_core.simic import (
    BasicReward,
    BasicRewardConfig,
    FrontierReward,
    FrontierRewardConfig,
    ShapedReward,
    ShapedRewardConfig,
    SimplifiedReward,
    SimplifiedRewardConfig,
)


@hookimpl
def esper_register_surfaces(register: Register) -> None:
    register(
        SurfaceKind(
            name=SEGMENT_BOUNDARY,
            code=0,
            description="between two host segments (roadmap A0); every host exposes it",
        )
    )


@hookimpl
def esper_register_rewards(register: Register) -> None:
    register(
        RewardKind(
            name="basic",
            build=BasicReward,
            config_class=BasicRewardConfig,
            description="metric improvement minus parameter rent minus small action costs",
        )
    )
    register(
        RewardKind(
            name="shaped",
            build=ShapedReward,
            config_class=ShapedRewardConfig,
            description="bounded counterfactual attribution, metric gain, stage shaping, rent, alpha shock, "
            "action costs, churn price, terminal metric",
        )
    )
    register(
        RewardKind(
            name="simplified",
            build=SimplifiedReward,
            config_class=SimplifiedRewardConfig,
            description="stage shaping, a cost per action, terminal metric, a bonus per contributing fossil",
        )
    )
    register(
        RewardKind(
            name="frontier",
            build=FrontierReward,
            config_class=FrontierRewardConfig,
            description="lead over a paired static control minus a price per parameter in use; the episode's "
            "product is the host plus its fossils (recommended for learning: its return's sign says whether "
            "growth beat the static host at the user's price)",
            needs_control=True,
        )
    )
