"""The core's own plugin: the built-in topologies, ladder and subtarget kinds, segment-boundary surface and rewards, registered like any other."""

from __future__ import annotations

from esper_core.hookspecs import (
    LadderKindRegistrar,
    RewardRegistrar,
    SubtargetKindRegistrar,
    SurfaceRegistrar,
    TopologyRegistrar,
    hookimpl,
)
from esper_core.leyline import SEGMENT_BOUNDARY
from esper_core.registry import LadderKind, RewardKind, SubtargetKind, SurfaceKind, TopologyKind
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


def image_example_shape(batch: int, channels: int) -> tuple[int, ...]:
    """An ``image`` activation: (batch, channels, height, width)."""
    return (batch, channels, 6, 6)


def sequence_example_shape(batch: int, channels: int) -> tuple[int, ...]:
    """A ``sequence`` activation: (batch, time, channels)."""
    return (batch, 5, channels)


@hookimpl
def esper_register_topologies(register: TopologyRegistrar) -> None:
    register(
        TopologyKind(
            name="image",
            code=0,
            channel_dim=1,
            gate_pool_dims=(2, 3),
            example_shape=image_example_shape,
            description="(batch, channels, height, width) feature maps; a blend gate pools over height and width",
        )
    )
    register(
        TopologyKind(
            name="sequence",
            code=1,
            channel_dim=2,
            gate_pool_dims=(),
            example_shape=sequence_example_shape,
            description="(batch, time, channels) token activations; a blend gate acts per position",
        )
    )


@hookimpl
def esper_register_ladder_kinds(register: LadderKindRegistrar) -> None:
    register(LadderKind(name="conv_stages", code=1, description="the number of conv stages in use"))
    register(LadderKind(name="lora_rank", code=2, description="the rank of a low-rank adapter"))
    register(LadderKind(name="channel_groups", code=3, description="the number of channel groups in use"))


@hookimpl
def esper_register_subtarget_kinds(register: SubtargetKindRegistrar) -> None:
    register(SubtargetKind(name="lora_rank_block", code=1, description="a block of ranks of a low-rank adapter"))
    register(SubtargetKind(name="cnn_channel_group", code=2, description="a group of hidden channels of a conv seed"))
    register(SubtargetKind(name="attn_head_group", code=3, description="a group of attention heads"))


@hookimpl
def esper_register_surfaces(register: SurfaceRegistrar) -> None:
    register(
        SurfaceKind(
            name=SEGMENT_BOUNDARY,
            code=0,
            description="between two host segments (roadmap A0); every host exposes it",
        )
    )


@hookimpl
def esper_register_rewards(register: RewardRegistrar) -> None:
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
