"""The ``conv_ladder`` seed: up to four full-width conv stages whose count is the seed's internal level."""

from __future__ import annotations

import torch
from torch import nn

from esper_core.registry import LadderSpec, NoOptions
from esper_cnn.seeds import _check_request, conv_bn_relu, zero_projection

#: Levels 0..4: level k runs k conv stages (level 1 ~ conv_light, level 2 ~ conv_heavy).
CONV_LADDER = LadderSpec(kind="conv_stages", max_level=4, initial_level=1)


def _count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def conv_relu_bn(channels: int) -> nn.Sequential:
    """A deepening stage: 3x3 conv -> ReLU -> BatchNorm, whose BatchNorm affine is the stage's gate."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(channels))


class ConvLadderSeed(nn.Module):
    """``y = x + proj(h_level)`` with ``h_1 = stage_1(x)`` and ``h_k = h_{k-1} + stage_k(h_{k-1})`` for
    ``k >= 2``; level 0 is ``y = x``.

    Stage 1 is a full-width 3x3 conv-BN-ReLU, so level 1 holds exactly ``conv_light``'s parameters and
    runs its computation. Stages 2..L are 3x3 conv-ReLU-BN residual steps, so level 2 holds exactly
    ``conv_heavy``'s parameter count. One zero-initialised 1x1 projection serves every level.

    Growing never makes the output jump: 0 -> 1 re-zeroes the projection, and enabling stage ``k >= 2``
    re-zeroes its final BatchNorm's weight and bias (the stage's gate, as in zero-initialised residual
    BatchNorm), so ``h_k = h_{k-1}`` at that moment; the BatchNorm weight still gets gradient at zero, so
    the new stage starts learning at once, and the gate costs no extra operation. Shrinking removes the
    top stage's contribution (what it learned is kept, and re-gated to zero if it is enabled again).
    Every stage is built up front: level changes allocate nothing and there are ``max_level + 1``
    forward graphs. Stages above the level never run.
    """

    internal_kind = CONV_LADDER.kind
    internal_max_level = CONV_LADDER.max_level

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [conv_bn_relu(channels, channels, 3)] + [conv_relu_bn(channels) for _ in range(self.internal_max_level - 1)]
        )
        self.projection = zero_projection(channels, channels)
        self._level = CONV_LADDER.initial_level
        self._params_at_level = [0, _count(self.stages[0]) + _count(self.projection)]
        for stage in self.stages[1:]:
            self._params_at_level.append(self._params_at_level[-1] + _count(stage))

    @property
    def internal_level(self) -> int:
        return self._level

    def gate(self, level: int) -> nn.BatchNorm2d:
        """The BatchNorm whose affine gates stage ``level`` (2..L)."""
        return self.stages[level - 1][2]

    def set_internal_level(self, level: int) -> None:
        if not 0 <= level <= self.internal_max_level:
            raise ValueError(f"conv_ladder level {level} is outside 0..{self.internal_max_level}")
        with torch.no_grad():
            for enabled in range(self._level + 1, level + 1):  # levels switched on by this change
                gated = self.projection if enabled == 1 else self.gate(enabled)
                gated.weight.zero_()
                gated.bias.zero_()
        self._level = level

    def internal_effective_params(self, level: int) -> int:
        return self._params_at_level[level]

    def forward(self, x):
        if self._level == 0:
            return x
        hidden = self.stages[0](x)
        for index in range(1, self._level):
            hidden = hidden + self.stages[index](hidden)
        return x + self.projection(hidden)

    def extra_repr(self) -> str:
        return f"level={self._level}/{self.internal_max_level}"


def build_conv_ladder(channels: int, topology: str, config: NoOptions) -> ConvLadderSeed:
    _check_request("conv_ladder", channels, topology)
    return ConvLadderSeed(channels)
