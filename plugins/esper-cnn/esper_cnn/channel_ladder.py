"""The ``channel_ladder`` seed: a 3x3 conv branch whose hidden channels run in groups; the internal level counts the groups."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from esper_core.registry import LadderSpec
from esper_core.validators import InvalidValue, optional, positive_int
from esper_cnn.seeds import _check_request, zero_projection

#: Levels 0..4: level k runs the first k channel groups of the hidden layer (roadmap C2).
CHANNEL_LADDER = LadderSpec(kind="channel_groups", max_level=4, initial_level=1)


def channel_group_bounds(total: int, group_size: int) -> tuple[tuple[int, int], ...]:
    """The one grouping rule: ``total`` channels split into contiguous ``[start, stop)`` groups of
    ``group_size`` in channel order; when ``group_size`` does not divide ``total`` the last group holds
    the remainder (e.g. 40 channels in groups of 16: ``(0, 16), (16, 32), (32, 40)``). Pure arithmetic,
    so every host, run and rank gets the same groups."""
    if total < 1:
        raise ValueError(f"channel groups need at least one channel, got {total}")
    if group_size < 1:
        raise ValueError(f"channel group size must be >= 1, got {group_size}")
    return tuple((start, min(start + group_size, total)) for start in range(0, total, group_size))


def _first(tensor: torch.Tensor, width: int, dim: int = 0) -> torch.Tensor:
    """The first ``width`` entries of ``tensor`` along ``dim``: a view (writes reach the tensor), or the
    tensor itself when that is all of it (the top level then runs on the parameters, with no slice in
    the autograd graph)."""
    return tensor if tensor.shape[dim] == width else tensor.narrow(dim, 0, width)


def _hidden_channels_in_range(instance: ChannelLadderConfig, attribute: attrs.Attribute, value: int | None) -> None:
    if value is None:
        return
    low, high = (CHANNEL_LADDER.max_level - 1) * instance.group_size + 1, CHANNEL_LADDER.max_level * instance.group_size
    if not low <= value <= high:
        raise InvalidValue(
            attribute.name,
            f"must be between {low} and {high} so that group_size {instance.group_size} gives exactly "
            f"{CHANNEL_LADDER.max_level} groups, got {value}",
            value,
        )


@attrs.frozen
class ChannelLadderConfig:
    """``channel_ladder``: ``group_size`` hidden channels per group; the hidden width is
    ``hidden_channels``, by default ``4 * group_size`` (four equal groups). A ``hidden_channels`` that
    ``group_size`` does not divide gives a smaller last group; it must still make exactly four groups
    (``3 * group_size + 1 .. 4 * group_size``)."""

    group_size: int = attrs.field(default=16, validator=positive_int())
    hidden_channels: int | None = attrs.field(default=None, validator=[optional(positive_int()), _hidden_channels_in_range])

    @property
    def hidden_width(self) -> int:
        return CHANNEL_LADDER.max_level * self.group_size if self.hidden_channels is None else self.hidden_channels


class ChannelLadderSeed(nn.Module):
    """``y = x + proj(relu(bn(conv3x3(x))))`` over ``hidden`` channels, of which level ``k`` runs the
    first ``k`` groups (``channel_group_bounds(hidden, group_size)``); level 0 is ``y = x``.

    Every group is built up front in one conv, one BatchNorm and one 1x1 projection; level ``k`` slices
    them to the first ``h_k`` hidden channels (conv weight ``[:h_k]``, the BatchNorm's affine and running
    statistics ``[:h_k]``, which are views, so training updates the running statistics in place, and the
    projection's weight ``[:, :h_k]``; the top level uses them whole). A level change moves one integer:
    it allocates nothing, syncs nothing with the device, and there are ``max_level + 1`` forward graphs.
    Channels of inactive groups are never computed, so they are inert.

    Growing never makes the output jump: enabling a group zeroes the projection columns that read it
    (and 0 -> 1 also the projection bias), so its contribution starts at zero while the columns get
    gradient at once; the group's conv and BatchNorm keep what they learned. Shrinking removes the top
    group's contribution (what it learned is kept, and its projection re-zeroed if it is enabled again).
    """

    internal_kind = CHANNEL_LADDER.kind
    internal_max_level = CHANNEL_LADDER.max_level

    def __init__(self, channels: int, group_size: int = 16, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = ChannelLadderConfig(group_size=group_size, hidden_channels=hidden_channels).hidden_width
        self.groups = channel_group_bounds(hidden, group_size)
        #: units per group (hidden channels); the last group may hold fewer (see ``channel_group_bounds``)
        self.internal_group_size = group_size
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.norm = nn.BatchNorm2d(hidden)
        self.projection = zero_projection(hidden, channels)
        self._level = CHANNEL_LADDER.initial_level
        per_channel = channels * 9 + 2 + channels  # conv filter + BatchNorm weight and bias + projection column
        self._params_at_level = [0] + [per_channel * stop + channels for _, stop in self.groups]

    @property
    def internal_level(self) -> int:
        return self._level

    @property
    def active_channels(self) -> int:
        """Hidden channels that run at the current level (0 at level 0)."""
        return self.groups[self._level - 1][1] if self._level else 0

    def set_internal_level(self, level: int) -> None:
        if not 0 <= level <= self.internal_max_level:
            raise ValueError(f"channel_ladder level {level} is outside 0..{self.internal_max_level}")
        with torch.no_grad():
            for enabled in range(self._level + 1, level + 1):  # groups switched on by this change
                start, stop = self.groups[enabled - 1]
                self.projection.weight[:, start:stop].zero_()
                if enabled == 1:
                    self.projection.bias.zero_()
        self._level = level

    def internal_effective_params(self, level: int) -> int:
        return self._params_at_level[level]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._level == 0:
            return x
        width = self.active_channels
        norm = self.norm
        hidden = F.conv2d(x, _first(self.conv.weight, width), None, padding=1)
        use_batch_stats = self.training or norm.running_mean is None
        if self.training and norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)  # as nn.BatchNorm2d does (read only when momentum is None)
        momentum = norm.momentum
        if momentum is None:
            momentum = 1.0 / float(norm.num_batches_tracked)
        hidden = F.batch_norm(
            hidden,
            _first(norm.running_mean, width) if norm.running_mean is not None else None,
            _first(norm.running_var, width) if norm.running_var is not None else None,
            _first(norm.weight, width),
            _first(norm.bias, width),
            use_batch_stats,
            momentum,
            norm.eps,
        )
        hidden = F.relu(hidden)
        return x + F.conv2d(hidden, _first(self.projection.weight, width, dim=1), self.projection.bias)

    def extra_repr(self) -> str:
        return (f"level={self._level}/{self.internal_max_level}, hidden={self.groups[-1][1]} in groups of "
                f"{self.internal_group_size}")


def build_channel_ladder(channels: int, topology: str, config: ChannelLadderConfig) -> ChannelLadderSeed:
    _check_request("channel_ladder", channels, topology)
    return ChannelLadderSeed(channels, config.group_size, config.hidden_channels)
