"""Image seed families: residual modules over (B, C, H, W) that are exactly the identity at birth.

Every seed computes ``x + f(x)`` where the last layer of ``f`` is zero-initialised, so a newborn
seed changes nothing while the gradient already reaches that last layer. Convolutions followed by
BatchNorm carry no bias; the zero-initialised final projection does.

Reduction ratios (``attention``, ``bottleneck``, ``conv_small``) give a hidden width of
``max(1, channels // reduction)``: a seed on an 8-channel slot with ``reduction = 16`` still has
one hidden channel rather than none.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from esper_core.registry import NoOptions
from esper_core.validators import int_in_range, positive_int

#: The only activation layout these seeds accept.
TOPOLOGY = "image"


# -- configs -----------------------------------------------------------------------------------------

@attrs.frozen
class AttentionSeedConfig:
    """``attention``: squeeze-excitation hidden width is ``max(1, channels // reduction)``."""

    reduction: int = attrs.field(default=4, validator=positive_int())


@attrs.frozen
class BottleneckSeedConfig:
    """``bottleneck``: the 3x3 conv runs at ``max(1, channels // reduction)`` channels."""

    reduction: int = attrs.field(default=4, validator=positive_int())


@attrs.frozen
class ConvSmallSeedConfig:
    """``conv_small``: the narrow 3x3 conv has ``max(1, channels // reduction)`` output channels.

    ``reduction`` is at least 2 (at 1 the seed would be ``conv_light``), so from 2 channels up
    ``conv_small`` has strictly fewer parameters than ``conv_light``.
    """

    reduction: int = attrs.field(default=4, validator=int_in_range(2))


# -- modules -----------------------------------------------------------------------------------------


def hidden_width(channels: int, reduction: int) -> int:
    """The reduced width of a seed's inner layer, never below one channel."""
    return max(1, channels // reduction)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, *, groups: int = 1) -> nn.Sequential:
    """One conv -> BatchNorm -> ReLU stage (same padding, no conv bias, Kaiming fan-out init)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


def zero_projection(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 conv with zero weight and bias: the final layer that makes a residual seed the identity."""
    projection = nn.Conv2d(in_channels, out_channels, 1, bias=True)
    nn.init.zeros_(projection.weight)
    nn.init.zeros_(projection.bias)
    return projection


class ResidualSeed(nn.Module):
    """``x + branch(x)``; the branch's last layer starts at zero."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class SqueezeExcitationSeed(nn.Module):
    """Channel attention ``x * (1 + tanh(excite(squeeze(x))))``: a per-sample, per-channel gain in (0, 2).

    The excitation's last linear layer starts at zero, so the gain is exactly 1 at birth.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Linear(channels, hidden)
        self.activation = nn.ReLU()
        self.expand = nn.Linear(hidden, channels)
        nn.init.kaiming_normal_(self.reduce.weight, nonlinearity="relu")
        nn.init.zeros_(self.reduce.bias)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.squeeze(x).flatten(1)
        gain = torch.tanh(self.expand(self.activation(self.reduce(pooled))))
        return x + x * gain[:, :, None, None]


# -- builders (SeedFamily.build: channels, topology, config) -----------------------------------------


def _check_request(family: str, channels: int, topology: str) -> None:
    if topology != TOPOLOGY:
        raise ValueError(f"seed family '{family}' supports topology '{TOPOLOGY}', not '{topology}'")
    if channels < 1:
        raise ValueError(f"seed family '{family}' needs at least one channel, got {channels}")


def build_norm(channels: int, topology: str, config: NoOptions) -> ResidualSeed:
    """``norm``: ``x + BatchNorm(x)`` with the BatchNorm's affine weight and bias at zero (2C params)."""
    _check_request("norm", channels, topology)
    norm = nn.BatchNorm2d(channels)
    nn.init.zeros_(norm.weight)
    nn.init.zeros_(norm.bias)
    return ResidualSeed(norm)


def build_attention(channels: int, topology: str, config: AttentionSeedConfig) -> SqueezeExcitationSeed:
    """``attention``: squeeze-excitation channel gain, exactly 1 at birth."""
    _check_request("attention", channels, topology)
    return SqueezeExcitationSeed(channels, hidden_width(channels, config.reduction))


def build_depthwise(channels: int, topology: str, config: NoOptions) -> ResidualSeed:
    """``depthwise``: depthwise 3x3 conv-BN-ReLU, then a zero-initialised pointwise 1x1 conv."""
    _check_request("depthwise", channels, topology)
    return ResidualSeed(
        nn.Sequential(
            conv_bn_relu(channels, channels, 3, groups=channels),
            zero_projection(channels, channels),
        )
    )


def build_bottleneck(channels: int, topology: str, config: BottleneckSeedConfig) -> ResidualSeed:
    """``bottleneck``: 1x1 reduce -> 3x3 -> zero-initialised 1x1 expand (BN-ReLU after the first two)."""
    _check_request("bottleneck", channels, topology)
    hidden = hidden_width(channels, config.reduction)
    return ResidualSeed(
        nn.Sequential(
            conv_bn_relu(channels, hidden, 1),
            conv_bn_relu(hidden, hidden, 3),
            zero_projection(hidden, channels),
        )
    )


def build_conv_small(channels: int, topology: str, config: ConvSmallSeedConfig) -> ResidualSeed:
    """``conv_small``: one narrow 3x3 conv-BN-ReLU (C -> C/reduction), zero-initialised 1x1 back to C."""
    _check_request("conv_small", channels, topology)
    hidden = hidden_width(channels, config.reduction)
    return ResidualSeed(
        nn.Sequential(
            conv_bn_relu(channels, hidden, 3),
            zero_projection(hidden, channels),
        )
    )


def build_conv_light(channels: int, topology: str, config: NoOptions) -> ResidualSeed:
    """``conv_light``: one full-width 3x3 conv-BN-ReLU stage, then a zero-initialised 1x1 projection."""
    _check_request("conv_light", channels, topology)
    return ResidualSeed(
        nn.Sequential(
            conv_bn_relu(channels, channels, 3),
            zero_projection(channels, channels),
        )
    )


def build_conv_heavy(channels: int, topology: str, config: NoOptions) -> ResidualSeed:
    """``conv_heavy``: two full-width 3x3 conv-BN-ReLU stages, then a zero-initialised 1x1 projection."""
    _check_request("conv_heavy", channels, topology)
    return ResidualSeed(
        nn.Sequential(
            conv_bn_relu(channels, channels, 3),
            conv_bn_relu(channels, channels, 3),
            zero_projection(channels, channels),
        )
    )
