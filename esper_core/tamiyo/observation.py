"""What a policy sees of one environment at the end of an epoch."""

from __future__ import annotations

import functools

import attrs

from esper_core.leyline import MAX_SUBTARGETS, FactoredAction, SeedStateReport, SlotConfig


@functools.cache
def _builtin_ladder_kind_codes() -> tuple[tuple[str, int], ...]:
    from esper_core import builtin

    records: list = []
    builtin.esper_register_ladder_kinds(records.append)
    return tuple((record.name, record.code) for record in records)


def builtin_ladder_kind_codes() -> dict[str, int]:
    """The codes of the ladder kinds the core registers itself (the default of ``ladder_kind_codes``)."""
    return dict(_builtin_ladder_kind_codes())


@attrs.frozen
class EnvObservation:
    """The state of one environment after an epoch's training and validation, before its decision.

    ``train_loss`` is None after a rollback to the untrained model (no training loss describes it).
    ``last_action_reason`` says why the last action failed ('' when it succeeded or there was none).
    ``metric_history`` and ``loss_history`` hold every validation of this episode so far, oldest
    first (the last entry is this epoch's). ``slots`` follows the order of ``slot_config`` (the run's
    slots and their injection specs); ``surface_codes`` maps every registered surface to its stable code
    (``SurfaceKind.code``) and ``ladder_kind_codes`` every registered ladder kind to its stable code
    (``LadderKind.code``, 1..``MAX_LADDER_CODE``): Obs V3 reads a slot's surface and its seed's ladder
    kind only through these codes (see docs/observation.md, "What the core reads"). The engine passes
    every registered ladder kind; the default holds only the core's own. ``subtarget_count`` is the run's
    ``subtarget`` head size K (``PolicyContext.subtarget_count``: the largest ``SubtargetSpec.max_count`` of
    its seed families, 1 without inventories); Obs V3 gives every slot K per-group entries, so every
    observation of a run carries the same K and no seed reports more groups than K.
    """

    env_id: int
    round: int
    epoch: int
    episode_length: int
    val_metric: float
    val_loss: float
    train_loss: float | None
    metric_history: tuple[float, ...]
    loss_history: tuple[float, ...]
    host_params: int
    slots: tuple[SeedStateReport, ...]
    slot_config: SlotConfig
    surface_codes: dict[str, int]
    seed_families: tuple[str, ...]
    max_seeds: int
    last_action: FactoredAction | None
    last_action_success: bool
    last_action_reason: str
    rolled_back: bool
    ladder_kind_codes: dict[str, int] = attrs.Factory(builtin_ladder_kind_codes)
    subtarget_count: int = attrs.field(default=1)

    @subtarget_count.validator
    def _check_subtarget_count(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SUBTARGETS:
            raise ValueError(
                f"EnvObservation.subtarget_count must be an integer from 1 to {MAX_SUBTARGETS} "
                f"(the run's subtarget head size), got {value!r}"
            )

    @property
    def epochs_left(self) -> int:
        return self.episode_length - self.epoch - 1

    @property
    def occupied_slots(self) -> int:
        return sum(1 for report in self.slots if report.is_occupied)
