"""What a controller sees of one environment at the end of an epoch."""

from __future__ import annotations

import attrs

from esper_core.leyline import FactoredAction, SeedStateReport, SlotConfig


@attrs.frozen
class EnvObservation:
    """The state of one environment after an epoch's training and validation, before its decision.

    ``train_loss`` is None after a rollback to the untrained model (no training loss describes it).
    ``last_action_reason`` says why the last action failed ('' when it succeeded or there was none).
    ``metric_history`` and ``loss_history`` hold every validation of this episode so far, oldest
    first (the last entry is this epoch's). ``slots`` follows the order of ``slot_config`` (the run's
    slots and their injection specs); ``surface_codes`` maps every registered surface to its stable code.
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
    blueprints: tuple[str, ...]
    max_seeds: int
    last_action: FactoredAction | None
    last_action_success: bool
    last_action_reason: str
    rolled_back: bool

    @property
    def epochs_left(self) -> int:
        return self.episode_length - self.epoch - 1

    @property
    def occupied_slots(self) -> int:
        return sum(1 for report in self.slots if report.is_occupied)
