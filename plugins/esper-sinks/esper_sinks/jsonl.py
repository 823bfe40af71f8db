"""The ``jsonl`` sink: a flat stream of scalar records, one JSON object per line, for pandas-style tooling."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs

from esper_core.leyline import SeedStage, TelemetryEvent, TelemetryEventType
from esper_core.leyline import telemetry as payloads
from esper_core.telemetry import SinkContext
from esper_sinks.steps import epoch_step, round_step

#: Keys every record starts with; a policy metric may not reuse one of them.
RECORD_KEYS = ("event", "time", "round", "epoch", "env_id", "step")


def _plain_file_name(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or value in ("", ".", "..") or Path(value).name != value:
        raise ValueError(f"{attribute.name} must be a plain file name inside the run directory, got {value!r}")


@attrs.frozen
class JsonlSinkConfig:
    """Options of the ``jsonl`` sink. ``filename``: the file inside the run directory."""

    filename: str = attrs.field(default="scalars.jsonl", validator=_plain_file_name)


def _record(event: TelemetryEvent, *, round_index: int, epoch: int | None, env_id: int | None, step: int) -> dict[str, Any]:
    return {
        "event": event.event_type.value,
        "time": event.timestamp,
        "round": round_index,
        "epoch": epoch,
        "env_id": env_id,
        "step": step,
    }


class JsonlSink:
    """Appends one flat JSON object per line to ``<run_dir>/<filename>``; every line is flushed as written.

    Records: ``EPOCH_COMPLETED``, ``REWARD_COMPUTED``, ``POLICY_UPDATED``, ``ROUND_COMPLETED``,
    ``GRADIENT_ANOMALY`` and ``POLICY_ANOMALY`` (``anomaly`` is the kind; ``value``, ``threshold``) and
    ``SEED_SUBTARGET_CHANGED`` (``slot_id``, ``seed_id``, ``subtarget_idx``, ``enabled``,
    ``subtarget_active_count``, ``internal_effective_params``). Each
    starts with ``event``, ``time``, ``round``, ``epoch``, ``env_id`` and ``step`` (``null`` where a
    field does not apply); ``step`` is the epoch step ``round * episode_length + epoch``, and
    round-level records carry the step of the round's last epoch. The numeric fields follow, flattened:
    ``val_metric``, ``stages/TRAINING`` (every stage, 0 when no slot is in it), ``reward``, ``reward/metric_gain``, ``policy_loss``,
    ``env0/final_metric``, ... Non-finite floats are written as ``NaN`` / ``Infinity`` like the core's
    ``events.jsonl``.

    On ``RUN_RESUMED`` the lines at or after the resume step are dropped from the file (the resumed run
    writes them again), so a resumed run continues the file without duplicate steps.
    """

    def __init__(self, config: JsonlSinkConfig, context: SinkContext) -> None:
        self.config = config
        self.context = context
        self.path = context.run_dir / config.filename
        self._file: IO[str] | None = self._open()
        self._handlers: dict[TelemetryEventType, Callable[[TelemetryEvent], dict[str, Any]]] = {
            TelemetryEventType.EPOCH_COMPLETED: self._epoch_record,
            TelemetryEventType.REWARD_COMPUTED: self._reward_record,
            TelemetryEventType.POLICY_UPDATED: self._policy_record,
            TelemetryEventType.ROUND_COMPLETED: self._round_record,
            TelemetryEventType.GRADIENT_ANOMALY: self._gradient_anomaly_record,
            TelemetryEventType.POLICY_ANOMALY: self._policy_anomaly_record,
            TelemetryEventType.SEED_SUBTARGET_CHANGED: self._subtarget_record,
        }

    def _open(self) -> IO[str]:
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def _writer(self) -> IO[str]:
        if self._file is None:
            raise RuntimeError(f"the jsonl sink for {self.path} received an event after close()")
        return self._file

    # -- TelemetrySink -------------------------------------------------------------------------------

    def handle(self, event: TelemetryEvent) -> None:
        if event.event_type is TelemetryEventType.RUN_RESUMED:
            self._drop_from_step(epoch_step(event.payload.round, event.payload.epoch, self.context.episode_length))
            return
        make_record = self._handlers.get(event.event_type)
        if make_record is None:
            return
        line = json.dumps(make_record(event), allow_nan=True)
        writer = self._writer()
        writer.write(line + "\n")
        writer.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- resume ------------------------------------------------------------------------------------

    def _drop_from_step(self, resume_step: int) -> None:
        """Rewrite the file keeping only the records before ``resume_step`` (atomically, then reopen)."""
        self._writer().close()
        self._file = None
        kept: list[str] = []
        with open(self.path, encoding="utf-8") as existing:
            for number, line in enumerate(existing, start=1):
                if not line.strip():
                    continue
                try:
                    step = json.loads(line)["step"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{self.path}:{number} is not a scalar record of this sink: {line[:120]!r}") from exc
                if step < resume_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        replacement = self.path.with_name(self.path.name + ".resume-tmp")
        with open(replacement, "w", encoding="utf-8") as rewritten:
            rewritten.writelines(kept)
            rewritten.flush()
            os.fsync(rewritten.fileno())
        os.replace(replacement, self.path)
        self._file = self._open()

    # -- records -----------------------------------------------------------------------------------

    def _at_epoch(self, event: TelemetryEvent) -> dict[str, Any]:
        """The common fields of a record about one environment's epoch (the payload's round, epoch, env)."""
        payload = event.payload
        return _record(
            event,
            round_index=payload.round,
            epoch=payload.epoch,
            env_id=payload.env_id,
            step=epoch_step(payload.round, payload.epoch, self.context.episode_length),
        )

    def _at_round(self, event: TelemetryEvent) -> dict[str, Any]:
        """The common fields of a round-level record (no epoch or env; the step of the round's last epoch)."""
        return _record(
            event,
            round_index=event.payload.round,
            epoch=None,
            env_id=None,
            step=round_step(event.payload.round, self.context.episode_length),
        )

    def _epoch_record(self, event: TelemetryEvent) -> dict[str, Any]:
        payload: payloads.EpochCompletedPayload = event.payload
        record = self._at_epoch(event)
        record.update(
            train_loss=payload.train_loss,
            val_loss=payload.val_loss,
            val_metric=payload.val_metric,
            host_params=payload.host_params,
            seed_params=payload.seed_params,
            fossilized_params=payload.fossilized_params,
            train_seconds=payload.train_seconds,
            validate_seconds=payload.validate_seconds,
        )
        unknown = sorted(set(payload.stage_counts) - set(SeedStage.__members__))
        if unknown:
            raise ValueError(f"stage_counts has {unknown}, which are not SeedStage names")
        for stage in SeedStage:  # every stage, so each record has the same columns
            record[f"stages/{stage.name}"] = payload.stage_counts.get(stage.name, 0)
        return record

    def _reward_record(self, event: TelemetryEvent) -> dict[str, Any]:
        payload: payloads.RewardComputedPayload = event.payload
        record = self._at_epoch(event)
        record["reward"] = payload.reward
        for name, value in payload.components.items():
            record[f"reward/{name}"] = value
        return record

    def _policy_record(self, event: TelemetryEvent) -> dict[str, Any]:
        payload: payloads.PolicyUpdatedPayload = event.payload
        record = self._at_round(event)
        clashes = sorted(set(payload.metrics) & set(RECORD_KEYS))
        if clashes:
            raise ValueError(f"POLICY_UPDATED metrics {clashes} clash with the record keys {list(RECORD_KEYS)}")
        record.update(payload.metrics)
        return record

    def _round_record(self, event: TelemetryEvent) -> dict[str, Any]:
        payload: payloads.RoundCompletedPayload = event.payload
        if len(payload.final_metrics) != len(payload.final_params):
            raise ValueError(
                f"ROUND_COMPLETED has {len(payload.final_metrics)} final metrics "
                f"but {len(payload.final_params)} final parameter counts"
            )
        record = self._at_round(event)
        record["mean_return"] = payload.mean_return
        metrics = payload.final_metrics
        record["final_metric_mean"] = sum(metrics) / len(metrics) if metrics else None
        for env_id, (metric, params) in enumerate(zip(payload.final_metrics, payload.final_params)):
            record[f"env{env_id}/final_metric"] = metric
            record[f"env{env_id}/final_params"] = params
        return record

    def _gradient_anomaly_record(self, event: TelemetryEvent) -> dict[str, Any]:
        payload: payloads.GradientAnomalyPayload = event.payload
        record = self._at_epoch(event)
        record.update(
            anomaly=payload.kind, where=payload.where, name=payload.name, seed_id=payload.seed_id,
            value=payload.value, threshold=payload.threshold,
        )
        return record

    def _subtarget_record(self, event: TelemetryEvent) -> dict[str, Any]:
        payload: payloads.SeedSubtargetChangedPayload = event.payload
        record = self._at_epoch(event)
        record.update(
            slot_id=payload.slot_id, seed_id=payload.seed_id, subtarget_idx=payload.subtarget_idx,
            enabled=payload.enabled, subtarget_active_count=payload.subtarget_active_count,
            internal_effective_params=payload.internal_effective_params,
        )
        return record

    def _policy_anomaly_record(self, event: TelemetryEvent) -> dict[str, Any]:
        payload: payloads.PolicyAnomalyPayload = event.payload
        record = self._at_round(event)
        record.update(anomaly=payload.kind, head=payload.head, value=payload.value, threshold=payload.threshold)
        return record
