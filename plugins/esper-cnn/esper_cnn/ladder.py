"""The ``conv_ladder`` seed: up to four full-width conv stages whose count is the seed's internal level."""

from __future__ import annotations

from torch import nn

from esper_core.leyline import InternalKind
from esper_core.registry import LadderSpec, NoOptions
from esper_cnn.seeds import _check_request, conv_bn_relu, zero_projection

#: Levels 0..4: level k runs k conv stages (level 1 ~ conv_light, level 2 ~ conv_heavy).
CONV_LADDER = LadderSpec(kind=InternalKind.CONV_STAGES, max_level=4, initial_level=1)


class ConvLadderSeed(nn.Module):
    """``y = x + sum_{i < level} proj_i(h_i)``, ``h_i = stage_i(h_{i-1})``, ``h_{-1} = x``.

    Every stage and projection is built up front (level changes allocate nothing; there are
    ``max_level + 1`` forward graphs). Each stage has its own zero-initialised 1x1 projection, so a
    newly enabled stage contributes exactly 0 when it is switched on: growing re-zeroes the projections
    of the stages it enables, whatever they learned before a shrink. Stages above the level never run.
    """

    internal_kind = CONV_LADDER.kind
    internal_max_level = CONV_LADDER.max_level

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in range(self.internal_max_level))
        self.projections = nn.ModuleList(zero_projection(channels, channels) for _ in range(self.internal_max_level))
        self._level = CONV_LADDER.initial_level
        self._params_per_level = [
            sum(p.numel() for p in stage.parameters()) + sum(p.numel() for p in projection.parameters())
            for stage, projection in zip(self.stages, self.projections)
        ]

    @property
    def internal_level(self) -> int:
        return self._level

    def set_internal_level(self, level: int) -> None:
        if not 0 <= level <= self.internal_max_level:
            raise ValueError(f"conv_ladder level {level} is outside 0..{self.internal_max_level}")
        for index in range(self._level, level):
            nn.init.zeros_(self.projections[index].weight)
            nn.init.zeros_(self.projections[index].bias)
        self._level = level

    def internal_effective_params(self, level: int) -> int:
        return sum(self._params_per_level[:level])

    def forward(self, x):
        out = x
        hidden = x
        for index in range(self._level):
            hidden = self.stages[index](hidden)
            out = out + self.projections[index](hidden)
        return out

    def extra_repr(self) -> str:
        return f"level={self._level}/{self.internal_max_level}"


def build_conv_ladder(channels: int, topology: str, config: NoOptions) -> ConvLadderSeed:
    _check_request("conv_ladder", channels, topology)
    return ConvLadderSeed(channels)
