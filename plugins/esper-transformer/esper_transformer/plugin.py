"""The esper-transformer plugin module (entry point `transformer`): the `transformer` host, its sublayer surfaces and seven sequence seed families (one with a subtarget inventory)."""

from __future__ import annotations

from esper_core.hookspecs import HostRegistrar, SeedFamilyRegistrar, SurfaceRegistrar, hookimpl
from esper_core.registry import HostFamily, SeedFamily, SurfaceKind

from esper_transformer import seeds
from esper_transformer.head_groups import HEAD_GROUP_SUBTARGETS, HeadGroupAttentionConfig, build_head_group_attention
from esper_transformer.host import TOPOLOGY, TransformerHostConfig, build_transformer_host
from esper_transformer.surfaces import POST_ATTN, POST_MLP, SURFACE_CODES

HOST_FAMILY = "transformer"


@hookimpl
def esper_register_hosts(register: HostRegistrar) -> None:
    register(
        HostFamily(
            name=HOST_FAMILY,
            build=build_transformer_host,
            topology=TOPOLOGY,
            config_class=TransformerHostConfig,
            description="decoder-only pre-norm transformer; slots at segment boundaries, after every layer, "
            "or after every attention and MLP residual add (slot_layout)",
        )
    )


@hookimpl
def esper_register_surfaces(register: SurfaceRegistrar) -> None:
    register(
        SurfaceKind(
            name=POST_ATTN,
            code=SURFACE_CODES[POST_ATTN],
            host_families=(HOST_FAMILY,),
            description="after a transformer layer's attention residual add (roadmap A1)",
        )
    )
    register(
        SurfaceKind(
            name=POST_MLP,
            code=SURFACE_CODES[POST_MLP],
            host_families=(HOST_FAMILY,),
            description="after a transformer layer's MLP residual add, the layer's output (roadmap A1)",
        )
    )


@hookimpl
def esper_register_seed_families(register: SeedFamilyRegistrar) -> None:
    sequence = (seeds.TOPOLOGY,)
    register(
        SeedFamily(
            name="layer_norm",
            build=seeds.build_layer_norm,
            topologies=sequence,
            description="x + LayerNorm(x), affine weight and bias zero at birth",
        )
    )
    register(
        SeedFamily(
            name="lora",
            build=seeds.build_lora,
            topologies=sequence,
            config_class=seeds.LoraSeedConfig,
            description="low-rank adapter x + (alpha/rank) B(A(x)), rank 8, B zero at birth",
        )
    )
    register(
        SeedFamily(
            name="lora_large",
            build=seeds.build_lora_large,
            topologies=sequence,
            config_class=seeds.LoraLargeSeedConfig,
            description="low-rank adapter x + (alpha/rank) B(A(x)), rank 32, B zero at birth",
        )
    )
    register(
        SeedFamily(
            name="causal_attention",
            build=seeds.build_causal_attention,
            topologies=sequence,
            config_class=seeds.AttentionSeedConfig,
            description="pre-norm multi-head causal self-attention, output projection zero at birth, residual",
        )
    )
    register(
        SeedFamily(
            name="head_group_attention",
            build=build_head_group_attention,
            topologies=sequence,
            config_class=HeadGroupAttentionConfig,
            subtargets=HEAD_GROUP_SUBTARGETS,
            description="pre-norm causal self-attention, 8 heads in 4 groups of 2 by default; each head group is a "
            "subtarget (ENABLE/DISABLE_SUBTARGET) entering at zero; output projection zero at birth, residual",
        )
    )
    register(
        SeedFamily(
            name="mlp_small",
            build=seeds.build_mlp_small,
            topologies=sequence,
            description="pre-norm GELU MLP D -> D/2 -> D, output layer zero at birth, residual",
        )
    )
    register(
        SeedFamily(
            name="mlp",
            build=seeds.build_mlp,
            topologies=sequence,
            description="pre-norm GELU MLP D -> 4D -> D, output layer zero at birth, residual",
        )
    )
