"""A toy plugin with subtarget-inventory seed families (K channel groups), small enough for tests of ENABLE/DISABLE_SUBTARGET.

Load it beside the toy plugin: ``esper_core.testing.toy_plugin_manager(toy_inventory)`` (or
``PluginManager(extra=[toy_plugin, toy_inventory])``) and name its families in ``[morphogenesis]
seed_families``. ``toy_groups`` is an inventory only; ``toy_group_ladder`` is also a ``channel_groups``
ladder whose level is the enabled count. Neither is in the toy plugin itself, so the toy plugin's runs
keep their two seed families.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import nn

from esper_core import hookimpl
from esper_core.hookspecs import SeedFamilyRegistrar
from esper_core.registry import LadderSpec, SeedFamily, SubtargetSpec

__all__ = [
    "TOY_GROUPS",
    "TOY_GROUP_LADDER",
    "ToyGroupLadder",
    "ToyGroups",
    "ToyGroupsConfig",
    "build_toy_group_ladder",
    "build_toy_groups",
    "esper_register_seed_families",
]

#: The inventory both toy families declare.
TOY_GROUPS = SubtargetSpec(kind="cnn_channel_group", max_count=4)
#: The ladder ``toy_group_ladder`` declares (level == enabled groups).
TOY_GROUP_LADDER = LadderSpec(kind="channel_groups", max_level=4, initial_level=2)


@attrs.frozen
class ToyGroupsConfig:
    groups: int = attrs.field(default=4, validator=attrs.validators.and_(attrs.validators.ge(1), attrs.validators.le(4)))
    group_size: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    #: the first ``initial_active`` groups are enabled at birth
    initial_active: int = attrs.field(default=2, validator=attrs.validators.ge(0))


class ToyGroups(nn.Module):
    """``y = x + out(mask * relu(inner(x)))``: hidden channels in K contiguous groups of ``group_size``.

    Group ``k`` owns its ``group_size`` hidden channels of ``inner`` (weights and biases) and the matching
    input columns of ``out`` (no bias, zero at birth); the mask multiplies the hidden channels, so a
    disabled group contributes nothing and gets zero gradient. Enabling a group re-zeroes its ``out``
    columns (it enters at zero) with a tensor write; nothing is read back to the host.
    """

    subtarget_kind = TOY_GROUPS.kind

    def __init__(self, channels: int, config: ToyGroupsConfig = ToyGroupsConfig()) -> None:
        super().__init__()
        self.subtarget_count = config.groups
        self.group_size = config.group_size
        hidden = config.groups * config.group_size
        self.inner = nn.Conv2d(channels, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, channels, 1, bias=False)
        nn.init.zeros_(self.out.weight)
        mask = torch.zeros(config.groups, dtype=torch.bool)
        mask[: min(config.initial_active, config.groups)] = True
        self.register_buffer("mask", mask)
        self.register_buffer("importance", torch.zeros(config.groups))
        self.importance_decay = 0.9

    @property
    def subtarget_mask(self) -> torch.Tensor:
        return self.mask

    def set_subtarget(self, index: int, enabled: bool) -> None:
        if not 0 <= index < self.subtarget_count:
            raise IndexError(f"subtarget {index} is outside 0..{self.subtarget_count - 1}")
        with torch.no_grad():
            if enabled:  # a group that is off enters at zero; one already on keeps its weights
                columns = self.out.weight[:, index * self.group_size : (index + 1) * self.group_size]
                columns.copy_(torch.where(self.mask[index], columns, torch.zeros_like(columns)))
            self.mask[index] = bool(enabled)

    def _group_params(self) -> int:
        channels = self.inner.in_channels
        return self.group_size * (channels * 9 + 1 + channels)

    def subtarget_effective_params(self, mask: Sequence[bool]) -> int:
        if len(mask) != self.subtarget_count:
            raise ValueError(f"a mask of {len(mask)} entries for {self.subtarget_count} subtargets")
        return self._group_params() * sum(1 for enabled in mask if enabled)

    def subtarget_importance(self) -> torch.Tensor:
        return self.importance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.inner(x))
        gate = self.mask.repeat_interleave(self.group_size).to(hidden.dtype).view(1, -1, 1, 1)
        hidden = hidden * gate
        if self.training:
            self._measure(hidden.detach())
        return x + self.out(hidden)

    def _measure(self, hidden: torch.Tensor) -> None:
        """EMA of each group's output contribution norm (per element), on device."""
        with torch.no_grad():
            batch, _, height, width = hidden.shape
            groups = hidden.view(batch, self.subtarget_count, self.group_size, height, width)
            weight = self.out.weight.view(self.out.out_channels, self.subtarget_count, self.group_size)
            contribution = torch.einsum("ckg,bkghw->kbchw", weight, groups)
            norms = contribution.flatten(1).norm(dim=1) / max(contribution[0].numel(), 1) ** 0.5
            self.importance.mul_(self.importance_decay).add_((1 - self.importance_decay) * norms)


class ToyGroupLadder(ToyGroups):
    """``ToyGroups`` that is also a ``channel_groups`` ladder: the level is the enabled count; raising it
    enables the lowest disabled group, lowering it disables the highest enabled one."""

    internal_kind = TOY_GROUP_LADDER.kind
    internal_max_level = TOY_GROUP_LADDER.max_level

    def __init__(self, channels: int, config: ToyGroupsConfig | None = None) -> None:
        config = config or ToyGroupsConfig(groups=4, initial_active=TOY_GROUP_LADDER.initial_level)
        super().__init__(channels, config)
        self.internal_group_size = self.group_size

    @property
    def internal_level(self) -> int:
        return int(self.mask.sum())

    def set_internal_level(self, level: int) -> None:
        mask = [bool(value) for value in self.mask.tolist()]
        while sum(mask) < level:
            index = mask.index(False)
            self.set_subtarget(index, True)
            mask[index] = True
        while sum(mask) > level:
            index = len(mask) - 1 - mask[::-1].index(True)
            self.set_subtarget(index, False)
            mask[index] = False

    def internal_effective_params(self, level: int) -> int:
        return self._group_params() * level


def build_toy_groups(channels: int, topology: str, config: ToyGroupsConfig) -> nn.Module:
    return ToyGroups(channels, config)


def build_toy_group_ladder(channels: int, topology: str, config: Any) -> nn.Module:
    return ToyGroupLadder(channels)


@hookimpl
def esper_register_seed_families(register: SeedFamilyRegistrar) -> None:
    register(SeedFamily(name="toy_groups", build=build_toy_groups, topologies=("image",),
                        config_class=ToyGroupsConfig, subtargets=TOY_GROUPS,
                        description="test seed: K channel groups switched by ENABLE/DISABLE_SUBTARGET"))
    register(SeedFamily(name="toy_group_ladder", build=build_toy_group_ladder, topologies=("image",),
                        ladder=TOY_GROUP_LADDER, subtargets=TOY_GROUPS,
                        description="test seed: channel groups that are also a channel_groups ladder"))
