"""The subtarget inventory contract: seeds whose internal groups (channels, rank blocks, heads) are addressable by index."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from esper_core.leyline.actions import MAX_SUBTARGETS

__all__ = ["MAX_SUBTARGETS", "SubtargetInventory"]


@runtime_checkable
class SubtargetInventory(Protocol):
    """What a seed family with a subtarget inventory builds (an ``nn.Module`` with these members).

    The seed's internal microstructure is split into ``subtarget_count`` (K, 1..``MAX_SUBTARGETS``)
    groups with stable indices ``0..K-1``, fixed when the seed is built. ``subtarget_kind`` names a
    registered ``SubtargetKind`` (e.g. ``"cnn_channel_group"``), the same as the family's
    ``SubtargetSpec.kind``. Rules the conformance kit checks (``check_subtarget_family``):

    - ``subtarget_mask`` is a ``(K,)`` bool tensor on the seed's device (a buffer, so it follows the
      seed's device and state dict); True means enabled. Only ``set_subtarget`` changes it, and a
      change is a tensor write: no parameter is allocated or freed and the compiled graph count stays
      bounded;
    - the seed's output is the identity plus one additive contribution per enabled group, so
      disabling group ``i`` removes exactly its contribution, and the contributions of the groups sum
      to the whole seed's;
    - enabling a group does not change the output at that moment (it enters at zero: its output path
      is re-zeroed, as a ladder's new capacity is) and a disabled group is inert (its parameters get no
      gradient and do not influence the output);
    - ``set_subtarget`` is deterministic, raises ``IndexError`` for an index outside ``0..K-1``, and
      setting a group to the state it already has changes nothing;
    - ``subtarget_effective_params(mask)`` is the parameter count in use under ``mask`` (a sequence of
      K bools): the parameters shared by every group while any group is enabled, plus each enabled
      group's own; 0 for an all-False mask;
    - ``subtarget_importance()`` is a ``(K,)`` float tensor on the seed's device, a moving average of
      how much each group contributes (e.g. the norm of its output contribution, measured in training
      forwards without a host sync), 0 for a group that has not run; comparable across the seed's
      groups, not across seeds.

    A seed that is also a ``LadderModule`` keeps the two views in agreement: ``internal_level`` is the
    number of enabled groups; raising the level by one enables the lowest disabled group, lowering it
    disables the highest enabled group; ``internal_effective_params(level)`` equals
    ``subtarget_effective_params`` of the mask whose first ``level`` groups are enabled.
    """

    subtarget_kind: str
    subtarget_count: int

    @property
    def subtarget_mask(self) -> torch.Tensor: ...

    def set_subtarget(self, index: int, enabled: bool) -> None: ...

    def subtarget_effective_params(self, mask: tuple[bool, ...] | list[bool]) -> int: ...

    def subtarget_importance(self) -> torch.Tensor: ...
