"""Sequence seed families: residual modules over (B, T, D) that are exactly the identity at birth.

Every seed computes ``x + f(x)`` where the last layer of ``f`` is zero-initialised, so a newborn
seed changes nothing while the gradient already reaches that last layer. The attention and MLP
branches read a LayerNorm of their input (pre-norm, like the host's own sublayers); the LoRA
branch is a pure low-rank linear map. No seed uses dropout or mixes information across the batch,
and the attention seed is causal: the output at position t depends on positions <= t only.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from esper_core.registry import NoOptions
from esper_core.validators import positive, positive_int

#: The only activation layout these seeds accept.
TOPOLOGY = "sequence"

# -- configs -----------------------------------------------------------------------------------------


@attrs.frozen
class LoraSeedConfig:
    """``lora``: ``x + (alpha / rank) * B(A(x))`` with ``A: D -> rank``, ``B: rank -> D`` (B zero at birth)."""

    rank: int = attrs.field(default=8, validator=positive_int())
    alpha: float = attrs.field(default=8.0, validator=positive())


@attrs.frozen
class LoraLargeSeedConfig:
    """``lora_large``: the ``lora`` seed at a larger default rank (32, scale ``alpha / rank`` = 1)."""

    rank: int = attrs.field(default=32, validator=positive_int())
    alpha: float = attrs.field(default=32.0, validator=positive())


@attrs.frozen
class AttentionSeedConfig:
    """``causal_attention``: ``n_head`` heads, which must divide the slot's channels."""

    n_head: int = attrs.field(default=4, validator=positive_int())


# -- modules -----------------------------------------------------------------------------------------


def zero_linear(in_features: int, out_features: int, *, bias: bool = True) -> nn.Linear:
    """A linear layer with zero weight (and bias): the last layer that makes a residual seed the identity."""
    linear = nn.Linear(in_features, out_features, bias=bias)
    nn.init.zeros_(linear.weight)
    if bias:
        nn.init.zeros_(linear.bias)
    return linear


class ResidualSeed(nn.Module):
    """``x + branch(x)``; the branch's last layer starts at zero."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class LoraSeed(nn.Module):
    """``x + scale * up(down(x))``, ``scale = alpha / rank``: ``down`` keeps nn.Linear's init, ``up`` starts at zero."""

    def __init__(self, channels: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.down = nn.Linear(channels, rank, bias=False)
        self.up = zero_linear(rank, channels, bias=False)
        self.scale = float(alpha) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.up(self.down(x))


class CausalAttentionSeed(nn.Module):
    """``x + proj(attn(LayerNorm(x)))``: multi-head causal self-attention, output projection zero at birth."""

    def __init__(self, channels: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, time, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        return x + self.proj(out.transpose(1, 2).reshape(batch, time, width))


def mlp_branch(channels: int, hidden: int) -> nn.Sequential:
    """``LayerNorm -> Linear(D, hidden) -> GELU -> Linear(hidden, D)``, the last linear zero at birth."""
    return nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.GELU(), zero_linear(hidden, channels))


# -- builders (SeedFamily.build: channels, topology, config) -----------------------------------------


def _check_request(family: str, channels: int, topology: str) -> None:
    if topology != TOPOLOGY:
        raise ValueError(f"seed family '{family}' supports topology '{TOPOLOGY}', not '{topology}'")
    if channels < 1:
        raise ValueError(f"seed family '{family}' needs at least one channel, got {channels}")


def build_layer_norm(channels: int, topology: str, config: NoOptions) -> ResidualSeed:
    """``layer_norm``: ``x + LayerNorm(x)`` with the LayerNorm's affine weight and bias at zero (2D params)."""
    _check_request("layer_norm", channels, topology)
    norm = nn.LayerNorm(channels)
    nn.init.zeros_(norm.weight)
    nn.init.zeros_(norm.bias)
    return ResidualSeed(norm)


def build_lora(channels: int, topology: str, config: LoraSeedConfig) -> LoraSeed:
    """``lora``: a rank-``rank`` adapter ``x + (alpha / rank) B(A(x))`` (2 * D * rank params)."""
    _check_request("lora", channels, topology)
    return LoraSeed(channels, config.rank, config.alpha)


def build_lora_large(channels: int, topology: str, config: LoraLargeSeedConfig) -> LoraSeed:
    """``lora_large``: the same adapter at rank 32 by default."""
    _check_request("lora_large", channels, topology)
    return LoraSeed(channels, config.rank, config.alpha)


def build_causal_attention(channels: int, topology: str, config: AttentionSeedConfig) -> CausalAttentionSeed:
    """``causal_attention``: pre-norm causal self-attention; ``ValueError`` when ``n_head`` does not divide D."""
    _check_request("causal_attention", channels, topology)
    if channels % config.n_head != 0:
        divisors = [n for n in range(1, min(channels, 16) + 1) if channels % n == 0]
        raise ValueError(
            f"seed family 'causal_attention': n_head {config.n_head} does not divide the slot's {channels} channels; "
            f"set [seed_families.causal_attention] n_head to a divisor of {channels} (e.g. {', '.join(map(str, divisors))})"
        )
    return CausalAttentionSeed(channels, config.n_head)


def build_mlp_small(channels: int, topology: str, config: NoOptions) -> ResidualSeed:
    """``mlp_small``: pre-norm ``D -> max(1, D // 2) -> D`` GELU MLP, zero-initialised output layer."""
    _check_request("mlp_small", channels, topology)
    return ResidualSeed(mlp_branch(channels, max(1, channels // 2)))


def build_mlp(channels: int, topology: str, config: NoOptions) -> ResidualSeed:
    """``mlp``: pre-norm ``D -> 4D -> D`` GELU MLP, zero-initialised output layer."""
    _check_request("mlp", channels, topology)
    return ResidualSeed(mlp_branch(channels, 4 * channels))
