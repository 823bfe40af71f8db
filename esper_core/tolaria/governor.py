"""The governor: snapshots a healthy model and decides when an environment must roll back to it."""

from __future__ import annotations

import math
from collections import deque

import attrs
import torch

from esper_core.config import GovernorSection
from esper_core.kasmina import MorphogeneticModel
from esper_core.kasmina.model import ModelLifecycleState

_HISTORY = 5


@attrs.frozen
class GovernorState:
    """A governor's checkpoint state: the one list of its fields (``Governor.state`` / ``load_state``)."""

    healthy_losses: list[float]
    divergent_streak: int
    snapshot_weights: dict[str, torch.Tensor] | None
    snapshot_lifecycle: ModelLifecycleState | None
    snapshot_epoch: int
    snapshot_train_loss: float | None
    rollbacks: int
    consecutive_rollbacks: int


class Governor:
    """Watches one environment's losses. Non-finite train or validation loss rolls back at once;
    a validation loss above ``divergence_factor`` times the best of the last few healthy epochs for
    ``patience`` consecutive epochs rolls back too. Snapshots are taken after healthy epochs only."""

    def __init__(self, config: GovernorSection) -> None:
        self.config = config
        self.healthy_losses: deque[float] = deque(maxlen=_HISTORY)
        self.divergent_streak = 0
        self.snapshot_weights: dict[str, torch.Tensor] | None = None
        self.snapshot_lifecycle: ModelLifecycleState | None = None
        self.snapshot_epoch = -1
        self.snapshot_train_loss: float | None = None
        self.rollbacks = 0
        self.consecutive_rollbacks = 0

    def verdict(self, train_loss: float, val_loss: float) -> str | None:
        """The reason to roll back now, or None when the epoch is healthy (updates the streak)."""
        if not self.config.enabled:
            return None
        if not math.isfinite(train_loss) or not math.isfinite(val_loss):
            return f"non-finite loss (train {train_loss}, validation {val_loss})"
        if self.healthy_losses:
            best = min(self.healthy_losses)
            if val_loss > self.config.divergence_factor * best:
                self.divergent_streak += 1
                if self.divergent_streak >= self.config.patience:
                    return (
                        f"validation loss {val_loss:.4g} above {self.config.divergence_factor}x the recent best "
                        f"{best:.4g} for {self.divergent_streak} epochs"
                    )
                return None
        self.divergent_streak = 0
        return None

    @property
    def is_diverging(self) -> bool:
        return self.divergent_streak > 0

    def record_healthy(self, val_loss: float) -> None:
        self.healthy_losses.append(val_loss)
        self.consecutive_rollbacks = 0

    def record_restored(self, val_loss: float) -> None:
        """After a rollback: the restored snapshot's validation loss is the reference the next epochs are
        judged against (without it, the first finite loss after a run of NaN epochs, however large, would
        count as healthy and become the snapshot)."""
        if math.isfinite(val_loss):
            self.healthy_losses.append(val_loss)

    def take_snapshot(self, model: MorphogeneticModel, epoch: int, train_loss: float | None = None) -> None:
        """Remember the model as it is after ``epoch`` (-1: before training), and that epoch's train loss."""
        self.snapshot_train_loss = train_loss
        self.snapshot_weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        self.snapshot_lifecycle = model.lifecycle_record()
        self.snapshot_epoch = epoch

    def restore(self, model: MorphogeneticModel) -> int:
        """Put ``model`` back to the snapshot (weights and lifecycle); returns the snapshot's epoch."""
        if self.snapshot_weights is None or self.snapshot_lifecycle is None:
            raise RuntimeError("governor has no snapshot to roll back to (one is taken before training starts)")
        model.load_lifecycle_record(self.snapshot_lifecycle)
        model.load_state_dict(self.snapshot_weights)
        self.rollbacks += 1
        self.consecutive_rollbacks += 1
        self.divergent_streak = 0
        return self.snapshot_epoch

    def state(self) -> GovernorState:
        values = {field.name: getattr(self, field.name) for field in attrs.fields(GovernorState)}
        return GovernorState(**{**values, "healthy_losses": list(self.healthy_losses)})

    def load_state(self, state: GovernorState) -> None:
        for field in attrs.fields(GovernorState):
            setattr(self, field.name, getattr(state, field.name))
        self.healthy_losses = deque(state.healthy_losses, maxlen=_HISTORY)
