"""The internal-capacity ladder contract: seeds whose capacity moves by small, deterministic level steps."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class LadderModule(Protocol):
    """What a seed family with a ladder builds (an ``nn.Module`` with these members).

    ``internal_kind`` names the registered ``LadderKind`` (e.g. ``"conv_stages"``), the same as the
    family's ``LadderSpec.kind``.

    Levels run ``0..internal_max_level``; level 0 is the identity (no capacity in use). The module is
    built at its family's ``initial_level``. Rules the conformance kit checks:

    - ``set_internal_level`` is deterministic and never allocates or frees parameters (all capacity is
      built up front; the level selects how much of it runs), so compiled graphs stay bounded;
    - capacity above the current level never influences the output (inactive capacity is inert);
    - raising the level does not change the output at that moment (new capacity enters at zero);
    - ``internal_effective_params(level)`` is the parameter count in use at ``level``, non-decreasing
      in ``level`` and 0 at level 0.

    Optional member (not part of the structural check): a ladder whose levels count equal groups of
    units (channel groups, rank blocks, head groups; level ``k`` runs the first ``k`` groups) has an
    attribute ``internal_group_size: int``, the units per group (a last group may hold fewer). Kasmina
    reads it with ``getattr(module, "internal_group_size", None)`` and reports it as
    ``SeedStateReport.internal_group_size``, with ``internal_active_groups`` equal to the level; for a
    ladder without it both are None.
    """

    internal_kind: str
    internal_max_level: int

    @property
    def internal_level(self) -> int: ...

    def set_internal_level(self, level: int) -> None: ...

    def internal_effective_params(self, level: int) -> int: ...
