"""The ``tensorboard`` sink: per-environment training curves, rewards, policy metrics and seed counts for TensorBoard."""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from esper_core.errors import PluginError
from esper_core.leyline import TelemetryEvent, TelemetryEventType
from esper_core.leyline import telemetry as payloads
from esper_core.telemetry import SinkContext
from esper_sinks.steps import epoch_step, round_step

MISSING_TENSORBOARD = "the tensorboard sink needs the 'tensorboard' package: pip install 'esper-sinks[tensorboard]'"

#: Seed lifecycle events counted per round, and the tag each count is written under.
LIFECYCLE_COUNT_TAGS: dict[TelemetryEventType, str] = {
    TelemetryEventType.SEED_GERMINATED: "lifecycle/germinated",
    TelemetryEventType.SEED_FOSSILIZED: "lifecycle/fossilized",
    TelemetryEventType.SEED_PRUNED: "lifecycle/pruned",
    TelemetryEventType.GOVERNOR_ROLLBACK: "governor/rollbacks",
}
#: Internal level changes counted per round, by direction.
INTERNAL_GROW_TAG = "lifecycle/internal_grow"
INTERNAL_SHRINK_TAG = "lifecycle/internal_shrink"
#: Subtarget switches counted per round, by direction.
SUBTARGET_ENABLE_TAG = "lifecycle/subtarget_enable"
SUBTARGET_DISABLE_TAG = "lifecycle/subtarget_disable"
#: Gradient and policy anomalies counted per round, by kind: ``anomalies/<kind>``.
ANOMALY_COUNT_TAGS = tuple(
    f"anomalies/{kind}" for kind in (*payloads.GRADIENT_ANOMALY_KINDS, *payloads.POLICY_ANOMALY_KINDS)
)
#: Every per-round count, written (zeros included) at ROUND_COMPLETED.
ROUND_COUNT_TAGS = (
    *LIFECYCLE_COUNT_TAGS.values(), INTERNAL_GROW_TAG, INTERNAL_SHRINK_TAG, SUBTARGET_ENABLE_TAG,
    SUBTARGET_DISABLE_TAG, *ANOMALY_COUNT_TAGS,
)
_ANOMALY_EVENTS = (TelemetryEventType.GRADIENT_ANOMALY, TelemetryEventType.POLICY_ANOMALY)


def round_count_tag(event: TelemetryEvent) -> str | None:
    """The per-round count an event adds to, if any."""
    if event.event_type is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED:
        return INTERNAL_GROW_TAG if event.payload.to_level > event.payload.from_level else INTERNAL_SHRINK_TAG
    if event.event_type is TelemetryEventType.SEED_SUBTARGET_CHANGED:
        return SUBTARGET_ENABLE_TAG if event.payload.enabled else SUBTARGET_DISABLE_TAG
    if event.event_type in _ANOMALY_EVENTS:
        return f"anomalies/{event.payload.kind}"
    return LIFECYCLE_COUNT_TAGS.get(event.event_type)


def _plain_directory_name(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or value in ("", ".", "..") or Path(value).name != value:
        raise ValueError(f"{attribute.name} must be a plain directory name inside the run directory, got {value!r}")


@attrs.frozen
class TensorBoardSinkConfig:
    """Options of the ``tensorboard`` sink. ``subdir``: the log directory inside the run directory."""

    subdir: str = attrs.field(default="tensorboard", validator=_plain_directory_name)


def load_summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or ``PluginError`` saying how to install TensorBoard."""
    try:
        module = importlib.import_module("torch.utils.tensorboard")
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "tensorboard":
            raise PluginError(MISSING_TENSORBOARD) from exc
        raise
    return module.SummaryWriter


class TensorBoardSink:
    """Writes scalars to ``<run_dir>/<subdir>`` with ``torch.utils.tensorboard.SummaryWriter``.

    The x-axis of every scalar is the epoch step ``round * episode_length + epoch``; round-level
    scalars use the step of the round's last epoch. Tags:

    - ``env{i}/val_metric``, ``env{i}/val_loss``, ``env{i}/train_loss``, ``env{i}/params`` (host + fossilized
      + live seed parameters, the model's size), ``env{i}/effective_seed_params`` and
      ``env{i}/alpha_delta_sq_sum`` (the rent and alpha-shock bases) per ``EPOCH_COMPLETED``;
    - ``env{i}/reward`` and ``env{i}/reward/{component}`` per ``REWARD_COMPUTED``;
    - each ``POLICY_UPDATED`` metric under its own name (e.g. ``policy_loss``, ``entropy/op``);
    - ``round/final_metric_mean`` and ``round/mean_return`` per ``ROUND_COMPLETED``, together with how
      many seeds were germinated, fossilized and pruned and how many governor rollbacks happened in
      that round over all environments, and how many internal levels grew and shrank
      (``lifecycle/*``, ``lifecycle/internal_grow``, ``lifecycle/internal_shrink``, ``governor/rollbacks``),
      and how many ``GRADIENT_ANOMALY`` / ``POLICY_ANOMALY`` events of each kind it had
      (``anomalies/<kind>``, e.g. ``anomalies/exploding``, ``anomalies/entropy_collapse``).

    On ``RUN_RESUMED`` the writer is reopened with ``purge_step`` at the resume step, so TensorBoard
    hides what the interrupted attempt logged from there on.
    """

    def __init__(self, config: TensorBoardSinkConfig, context: SinkContext) -> None:
        self.config = config
        self.context = context
        self.log_dir = context.run_dir / config.subdir
        self._summary_writer_class = load_summary_writer_class()
        self._writer: Any = self._summary_writer_class(log_dir=str(self.log_dir))
        self._lifecycle_counts: dict[int, Counter[str]] = {}
        self._handlers: dict[TelemetryEventType, Callable[[Any], None]] = {
            TelemetryEventType.RUN_RESUMED: self._on_run_resumed,
            TelemetryEventType.EPOCH_COMPLETED: self._on_epoch_completed,
            TelemetryEventType.REWARD_COMPUTED: self._on_reward_computed,
            TelemetryEventType.POLICY_UPDATED: self._on_policy_updated,
            TelemetryEventType.ROUND_COMPLETED: self._on_round_completed,
        }

    # -- TelemetrySink -------------------------------------------------------------------------------

    def handle(self, event: TelemetryEvent) -> None:
        if self._writer is None:
            raise RuntimeError(f"the tensorboard sink for {self.log_dir} received an event after close()")
        count_tag = round_count_tag(event)
        if count_tag is not None:
            self._lifecycle_counts.setdefault(event.payload.round, Counter())[count_tag] += 1
            return
        handler = self._handlers.get(event.event_type)
        if handler is not None:
            handler(event.payload)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- handlers ------------------------------------------------------------------------------------

    def _epoch_step(self, round_index: int, epoch: int) -> int:
        return epoch_step(round_index, epoch, self.context.episode_length)

    def _on_run_resumed(self, payload: payloads.RunResumedPayload) -> None:
        resume_step = self._epoch_step(payload.round, payload.epoch)
        self._writer.close()
        self._writer = self._summary_writer_class(log_dir=str(self.log_dir), purge_step=resume_step)
        self._lifecycle_counts.clear()

    def _on_epoch_completed(self, payload: payloads.EpochCompletedPayload) -> None:
        step = self._epoch_step(payload.round, payload.epoch)
        prefix = f"env{payload.env_id}"
        self._writer.add_scalar(f"{prefix}/val_metric", payload.val_metric, step)
        self._writer.add_scalar(f"{prefix}/val_loss", payload.val_loss, step)
        self._writer.add_scalar(f"{prefix}/train_loss", payload.train_loss, step)
        self._writer.add_scalar(
            f"{prefix}/params", payload.host_params + payload.fossilized_params + payload.seed_params, step
        )
        self._writer.add_scalar(f"{prefix}/effective_seed_params", payload.effective_seed_params, step)
        self._writer.add_scalar(f"{prefix}/alpha_delta_sq_sum", payload.alpha_delta_sq_sum, step)

    def _on_reward_computed(self, payload: payloads.RewardComputedPayload) -> None:
        step = self._epoch_step(payload.round, payload.epoch)
        prefix = f"env{payload.env_id}/reward"
        self._writer.add_scalar(prefix, payload.reward, step)
        for name, value in payload.components.items():
            self._writer.add_scalar(f"{prefix}/{name}", value, step)

    def _on_policy_updated(self, payload: payloads.PolicyUpdatedPayload) -> None:
        step = round_step(payload.round, self.context.episode_length)
        for name, value in payload.metrics.items():
            self._writer.add_scalar(name, value, step)

    def _on_round_completed(self, payload: payloads.RoundCompletedPayload) -> None:
        step = round_step(payload.round, self.context.episode_length)
        metrics = payload.final_metrics
        if metrics:
            self._writer.add_scalar("round/final_metric_mean", sum(metrics) / len(metrics), step)
        if payload.mean_return is not None:
            self._writer.add_scalar("round/mean_return", payload.mean_return, step)
        counts = self._lifecycle_counts.pop(payload.round, Counter())
        for tag in ROUND_COUNT_TAGS:
            self._writer.add_scalar(tag, counts[tag], step)
