"""The esper-cnn plugin module (entry point `cnn`): registers the `cnn` host and nine image seed families (two with a ladder, one with a subtarget inventory)."""

from __future__ import annotations

from esper_core.hookspecs import HostRegistrar, SeedFamilyRegistrar, SurfaceRegistrar, hookimpl
from esper_core.registry import HostFamily, SeedFamily, SurfaceKind

from esper_cnn import seeds
from esper_cnn.channel_ladder import CHANNEL_LADDER, CHANNEL_SUBTARGETS, ChannelLadderConfig, build_channel_ladder
from esper_cnn.ladder import CONV_LADDER, build_conv_ladder
from esper_cnn.host import HOST_FAMILY, POST_POOL, PRE_POOL, SURFACE_CODES, TOPOLOGY, CNNHostConfig, build_cnn_host


@hookimpl
def esper_register_hosts(register: HostRegistrar) -> None:
    register(
        HostFamily(
            name=HOST_FAMILY,
            build=build_cnn_host,
            topology=TOPOLOGY,
            config_class=CNNHostConfig,
            description="conv blocks (conv3x3-BN-ReLU, optional max-pool) with a slot after each block",
        )
    )


@hookimpl
def esper_register_surfaces(register: SurfaceRegistrar) -> None:
    register(
        SurfaceKind(
            name=PRE_POOL,
            code=SURFACE_CODES[PRE_POOL],
            host_families=(HOST_FAMILY,),
            description="after a conv block's body, before its pool: the full-resolution activation (roadmap A2)",
        )
    )
    register(
        SurfaceKind(
            name=POST_POOL,
            code=SURFACE_CODES[POST_POOL],
            host_families=(HOST_FAMILY,),
            description="after a conv block's 2x2 max-pool: the pooled activation (roadmap A2)",
        )
    )


@hookimpl
def esper_register_seed_families(register: SeedFamilyRegistrar) -> None:
    image = (seeds.TOPOLOGY,)
    register(
        SeedFamily(
            name="norm",
            build=seeds.build_norm,
            topologies=image,
            description="x + BatchNorm(x), affine weight and bias zero at birth",
        )
    )
    register(
        SeedFamily(
            name="attention",
            build=seeds.build_attention,
            topologies=image,
            config_class=seeds.AttentionSeedConfig,
            description="squeeze-excitation channel gain x * (1 + tanh(excite(pool(x)))), gain 1 at birth",
        )
    )
    register(
        SeedFamily(
            name="depthwise",
            build=seeds.build_depthwise,
            topologies=image,
            description="depthwise 3x3 conv-BN-ReLU + zero-initialised pointwise 1x1, residual",
        )
    )
    register(
        SeedFamily(
            name="bottleneck",
            build=seeds.build_bottleneck,
            topologies=image,
            config_class=seeds.BottleneckSeedConfig,
            description="1x1 reduce -> 3x3 -> zero-initialised 1x1 expand, residual",
        )
    )
    register(
        SeedFamily(
            name="conv_small",
            build=seeds.build_conv_small,
            topologies=image,
            config_class=seeds.ConvSmallSeedConfig,
            description="one narrow 3x3 conv-BN-ReLU + zero-initialised 1x1 projection, residual",
        )
    )
    register(
        SeedFamily(
            name="conv_light",
            build=seeds.build_conv_light,
            topologies=image,
            description="one full-width 3x3 conv-BN-ReLU + zero-initialised 1x1 projection, residual",
        )
    )
    register(
        SeedFamily(
            name="conv_heavy",
            build=seeds.build_conv_heavy,
            topologies=image,
            description="two full-width 3x3 conv-BN-ReLU stages + zero-initialised 1x1 projection, residual",
        )
    )
    register(
        SeedFamily(
            name="conv_ladder",
            build=build_conv_ladder,
            topologies=image,
            ladder=CONV_LADDER,
            description="1 to 4 full-width 3x3 conv-BN-ReLU stages chosen by the internal level (GROW/SHRINK_INTERNAL), "
            "each with a zero-initialised projection; level 1 ~ conv_light, level 2 ~ conv_heavy",
        )
    )
    register(
        SeedFamily(
            name="channel_ladder",
            build=build_channel_ladder,
            topologies=image,
            config_class=ChannelLadderConfig,
            ladder=CHANNEL_LADDER,
            subtargets=CHANNEL_SUBTARGETS,
            description="3x3 conv-BN-ReLU over 4 groups of hidden channels (group_size each) + zero-initialised "
            "projection, residual; the internal level is the number of groups that run (GROW/SHRINK_INTERNAL); "
            "each group is a subtarget (ENABLE/DISABLE_SUBTARGET)",
        )
    )
