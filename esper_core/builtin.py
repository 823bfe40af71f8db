"""The core's own plugin: the segment-boundary surface and the ``basic`` reward, registered like any other."""

from __future__ import annotations

from esper_core.hookspecs import Register, hookimpl
from esper_core.leyline import SEGMENT_BOUNDARY
from esper_core.registry import RewardKind, SurfaceKind
from esper_core.simic import (
    BasicReward,
    BasicRewardConfig,
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
