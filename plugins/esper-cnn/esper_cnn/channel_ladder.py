"""The ``channel_ladder`` seed: a 3x3 conv branch whose hidden channels run in groups; the internal level counts the groups."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from esper_core.registry import LadderSpec, SubtargetSpec
from esper_core.validators import InvalidValue, optional, positive_int
from esper_cnn.seeds import _check_request, zero_projection

#: Levels 0..4: level k runs the first k channel groups of the hidden layer (roadmap C2).
CHANNEL_LADDER = LadderSpec(kind="channel_groups", max_level=4, initial_level=1)
#: Its inventory: the four channel groups, each addressable by index (roadmap Phase 3).
CHANNEL_SUBTARGETS = SubtargetSpec(kind="cnn_channel_group", max_count=CHANNEL_LADDER.max_level)
#: The moving-average decay of a group's importance (per training forward).
IMPORTANCE_DECAY = 0.9
#: Importance is measured on at most this many examples of a training batch (a cheap, exact sample) ...
IMPORTANCE_SAMPLE = 8
#: ... in every IMPORTANCE_EVERY-th training forward (the first included): about 0.3% of a training step.
IMPORTANCE_EVERY = 4


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
    """``y = x + proj(relu(bn(conv3x3(x))))`` over ``hidden`` channels in four groups
    (``channel_group_bounds(hidden, group_size)``), each group an addressable subtarget (kind
    ``cnn_channel_group``); the internal level is the number of enabled groups, and with no group
    enabled the seed is ``y = x``.

    Every group is built up front in one conv, one BatchNorm and one 1x1 projection. The seed computes
    the hidden channels up to the end of its highest enabled group by slicing them (conv weight
    ``[:h]``, the BatchNorm's affine and running statistics ``[:h]``, which are views, so training
    updates the running statistics in place, and the projection's weight ``[:, :h]``; all of them whole
    when the top group is enabled). When the enabled groups are a prefix (every ladder level) that is
    all; otherwise the hidden activation is multiplied by a per-channel mask gathered on the device from
    ``subtarget_mask``, so a disabled group below the top contributes nothing and gets no gradient.
    Channels above the top enabled group are never computed. The projection bias belongs to group 0
    (it runs while group 0 is enabled), so the output is ``x`` plus one additive term per enabled group.
    A mask change writes the mask buffer and moves two Python values (the slice bound and whether the
    mask is a prefix): it allocates nothing, syncs nothing with the device, and the forward graphs are
    bounded by those two values.

    Enabling a group never makes the output jump: it zeroes the projection columns that read the group
    (and for group 0 also the projection bias), so its contribution starts at zero while the columns get
    gradient at once; the group's conv and BatchNorm keep what they learned. Disabling removes exactly
    the group's contribution (what it learned is kept, its projection re-zeroed if it is enabled again).
    As a ladder, raising the level enables the lowest disabled group and lowering it disables the
    highest enabled one.

    ``subtarget_importance()`` is a moving average (``IMPORTANCE_DECAY``) of each enabled group's
    contribution norm ``||proj[:, g] h_g||`` (per example, the mean over up to ``IMPORTANCE_SAMPLE``
    examples of the batch), measured in every ``IMPORTANCE_EVERY``-th training forward (the first
    included; a Python count mirrored in the ``importance_clock`` buffer, so a restored state keeps the
    rhythm) without gradient and without a host sync; a disabled group keeps its
    last value, a group that never ran stays 0.
    """

    internal_kind = CHANNEL_LADDER.kind
    internal_max_level = CHANNEL_LADDER.max_level
    subtarget_kind = CHANNEL_SUBTARGETS.kind

    def __init__(self, channels: int, group_size: int = 16, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = ChannelLadderConfig(group_size=group_size, hidden_channels=hidden_channels).hidden_width
        self.groups = channel_group_bounds(hidden, group_size)
        self.subtarget_count = len(self.groups)
        #: units per group (hidden channels); the last group may hold fewer (see ``channel_group_bounds``)
        self.internal_group_size = group_size
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.norm = nn.BatchNorm2d(hidden)
        self.projection = zero_projection(hidden, channels)
        per_channel = channels * 9 + 2 + channels  # conv filter + BatchNorm weight and bias + projection column
        #: each group's own parameters; group 0 also owns the projection bias
        self._group_params = tuple(per_channel * (stop - start) + (channels if index == 0 else 0)
                                   for index, (start, stop) in enumerate(self.groups))
        initial = (1 << CHANNEL_LADDER.initial_level) - 1  # the first initial_level groups
        self.register_buffer("subtarget_mask", torch.tensor([bool(initial >> g & 1) for g in range(self.subtarget_count)]))
        self.register_buffer("importance_ema", torch.zeros(self.subtarget_count))
        self.register_buffer("importance_seen", torch.zeros(self.subtarget_count, dtype=torch.bool))
        group_of_channel = [g for g, (start, stop) in enumerate(self.groups) for _ in range(start, stop)]
        self.register_buffer("_channel_group", torch.tensor(group_of_channel, dtype=torch.long), persistent=False)
        # training forwards so far (for IMPORTANCE_EVERY): a Python count, mirrored in a buffer so that a
        # restored state (rollback, resume) measures on the same forwards as the run it came from
        self.register_buffer("importance_clock", torch.zeros((), dtype=torch.long))
        vars(self)["_training_forwards"] = 0
        self._set_bits(initial)

    # -- the mask: a device buffer, with a Python shadow (bits) that only set_subtarget and loading change --

    def _set_bits(self, bits: int) -> None:
        top_group = bits.bit_length()  # groups 0..top_group-1 are computed
        vars(self).update(  # plain attributes (nn.Module.__setattr__ is slow, and these are no tensors)
            _bits=bits,
            _top_channels=self.groups[top_group - 1][1] if top_group else 0,
            _is_prefix=bits == (1 << top_group) - 1,
            _bias_on=bool(bits & 1),
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # a state saved before the inventory existed keeps the current mask (the slot restores the level after)
        for name in ("subtarget_mask", "importance_ema", "importance_seen", "importance_clock"):
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._set_bits(sum(1 << g for g, on in enumerate(self.subtarget_mask.tolist()) if on))  # reads on load only
        vars(self)["_training_forwards"] = int(self.importance_clock)

    def set_subtarget(self, index: int, enabled: bool) -> None:
        if not 0 <= index < self.subtarget_count:
            raise IndexError(f"channel_ladder subtarget index {index} is outside 0..{self.subtarget_count - 1}")
        bit = 1 << index
        if bool(self._bits & bit) == bool(enabled):
            return
        if enabled:  # the entering group's contribution starts at zero
            with torch.no_grad():
                start, stop = self.groups[index]
                self.projection.weight[:, start:stop].zero_()
                if index == 0:
                    self.projection.bias.zero_()
        self.subtarget_mask[index] = bool(enabled)  # a buffer write (no autograd history)
        self._set_bits(self._bits | bit if enabled else self._bits & ~bit)

    def subtarget_effective_params(self, mask: tuple[bool, ...] | list[bool]) -> int:
        if len(mask) != self.subtarget_count:
            raise ValueError(f"channel_ladder subtarget mask needs {self.subtarget_count} entries, got {len(mask)}")
        return sum(params for params, on in zip(self._group_params, mask) if on)

    def subtarget_importance(self) -> torch.Tensor:
        return self.importance_ema

    # -- the ladder view: level == enabled groups --

    @property
    def internal_level(self) -> int:
        return self._bits.bit_count()

    @property
    def active_channels(self) -> int:
        """Hidden channels that run (up to the end of the highest enabled group; 0 when none is enabled)."""
        return self._top_channels

    def set_internal_level(self, level: int) -> None:
        if not 0 <= level <= self.internal_max_level:
            raise ValueError(f"channel_ladder level {level} is outside 0..{self.internal_max_level}")
        while self.internal_level < level:  # enable the lowest disabled group
            self.set_subtarget(next(g for g in range(self.subtarget_count) if not self._bits >> g & 1), True)
        while self.internal_level > level:  # disable the highest enabled group
            self.set_subtarget(self._bits.bit_length() - 1, False)

    def internal_effective_params(self, level: int) -> int:
        if not 0 <= level <= self.internal_max_level:
            raise ValueError(f"channel_ladder level {level} is outside 0..{self.internal_max_level}")
        return sum(self._group_params[:level])

    # -- forward --

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = self._top_channels
        if width == 0:
            return x
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
        if not self._is_prefix:  # a disabled group below the top: zero its channels (a gather on the device)
            channel_mask = self.subtarget_mask[_first(self._channel_group, width)]
            hidden = hidden * channel_mask.to(hidden.dtype).view(1, width, 1, 1)
        weight = _first(self.projection.weight, width, dim=1)
        bias = self.projection.bias if self._bias_on else None
        if self.training:
            count = self._training_forwards
            if count % IMPORTANCE_EVERY == 0:
                self._measure_importance(hidden, weight, bias)
            vars(self)["_training_forwards"] = count + 1
            self.importance_clock.fill_(count + 1)  # a device write, no sync
        return x + F.conv2d(hidden, weight, bias)

    @torch.no_grad()
    def _measure_importance(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        sample = hidden[:IMPORTANCE_SAMPLE].detach()
        top_group = self._bits.bit_length()
        norms = []
        for index, (start, stop) in enumerate(self.groups[:top_group]):
            contribution = F.conv2d(sample[:, start:stop], weight[:, start:stop])
            if index == 0 and bias is not None:
                contribution = contribution + bias.view(1, -1, 1, 1)
            norms.append(contribution.flatten(1).norm(dim=1).mean())
        _update_importance(self, torch.stack(norms).float())

    def extra_repr(self) -> str:
        mask = "".join("1" if self._bits >> g & 1 else "0" for g in range(self.subtarget_count))
        return (f"level={self.internal_level}/{self.internal_max_level}, groups={mask}, hidden={self.groups[-1][1]} "
                f"in groups of {self.internal_group_size}")


def _update_importance(seed: nn.Module, measured: torch.Tensor) -> None:
    """Fold one measurement of the first ``len(measured)`` groups into the seed's importance average:
    only enabled groups move; a group's first measurement is taken as it is (device ops, no host sync)."""
    count = measured.shape[0]
    ema, seen = seed.importance_ema[:count], seed.importance_seen[:count]
    enabled = seed.subtarget_mask[:count]
    fresh = torch.where(seen, ema * IMPORTANCE_DECAY + measured * (1.0 - IMPORTANCE_DECAY), measured)
    ema.copy_(torch.where(enabled, fresh, ema))
    seen.logical_or_(enabled)


def build_channel_ladder(channels: int, topology: str, config: ChannelLadderConfig) -> ChannelLadderSeed:
    _check_request("channel_ladder", channels, topology)
    return ChannelLadderSeed(channels, config.group_size, config.hidden_channels)
