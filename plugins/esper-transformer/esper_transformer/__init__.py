"""esper-transformer: a decoder-only transformer host family and sequence seed families for Esper, registered as a plugin."""

from esper_transformer.host import (
    SLOT_LAYOUTS,
    TransformerBlock,
    TransformerHost,
    TransformerHostConfig,
    build_transformer_host,
)
from esper_transformer.seeds import (
    AttentionSeedConfig,
    CausalAttentionSeed,
    LoraLargeSeedConfig,
    LoraSeed,
    LoraSeedConfig,
    ResidualSeed,
    build_causal_attention,
    build_layer_norm,
    build_lora,
    build_lora_large,
    build_mlp,
    build_mlp_small,
)
from esper_transformer.surfaces import POST_ATTN, POST_MLP, SURFACE_CODES

__version__ = "0.1.0"

__all__ = [
    "POST_ATTN",
    "POST_MLP",
    "SLOT_LAYOUTS",
    "SURFACE_CODES",
    "AttentionSeedConfig",
    "CausalAttentionSeed",
    "LoraLargeSeedConfig",
    "LoraSeed",
    "LoraSeedConfig",
    "ResidualSeed",
    "TransformerBlock",
    "TransformerHost",
    "TransformerHostConfig",
    "__version__",
    "build_causal_attention",
    "build_layer_norm",
    "build_lora",
    "build_lora_large",
    "build_mlp",
    "build_mlp_small",
    "build_transformer_host",
]
