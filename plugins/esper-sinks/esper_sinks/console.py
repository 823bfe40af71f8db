"""The ``console`` sink: a rich progress bar over the run's epochs, notable events, and an end-of-run summary."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from esper_core.leyline import SeedStage, TelemetryEvent, TelemetryEventType
from esper_core.leyline import telemetry as payloads
from esper_core.telemetry import SinkContext
from esper_core.validators import positive

#: Without a live bar (output is not an interactive terminal), an episode longer than this many epochs
#: gets one progress line per round instead of one per epoch.
PLAIN_LINE_EPOCH_LIMIT = 25


@attrs.frozen
class ConsoleSinkConfig:
    """Options of the ``console`` sink.

    ``verbose``: print a line for every seed germinated, fossilized or pruned, and for every finished round
    (governor rollbacks and GRADIENT_ANOMALY / POLICY_ANOMALY lines are always printed). ``refresh_per_second``:
    how often the live bar redraws.
    """

    verbose: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    refresh_per_second: float = attrs.field(default=4.0, validator=positive())


@attrs.define
class _EpochStepReports:
    """What the environments have reported so far for one (round, epoch)."""

    val_metrics: dict[int, float] = attrs.Factory(dict)
    stage_counts: dict[int, dict[str, int]] = attrs.Factory(dict)


@attrs.define
class _EnvRoundSummary:
    """One environment's row in the end-of-run table for one round."""

    val_metric: float | None = None
    params: int | None = None
    germinated: int = 0
    fossilized: int = 0
    pruned: int = 0
    rollbacks: int = 0


def format_duration(seconds: float) -> str:
    """``12.3s``, ``4m 05s`` or ``2h 03m 04s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s"


def format_seed_stages(total_by_stage: dict[str, int]) -> str:
    """``TRAINING 2, BLENDING 1`` in lifecycle order, leaving out empty slots (DORMANT) and zero counts."""
    ordered: list[tuple[SeedStage, int]] = []
    for name, count in total_by_stage.items():
        if name not in SeedStage.__members__:
            raise ValueError(f"stage_counts has {name!r}, which is not a SeedStage name")
        stage = SeedStage[name]
        if stage is not SeedStage.DORMANT and count:
            ordered.append((stage, count))
    if not ordered:
        return "no seeds"
    return ", ".join(f"{stage.name} {count}" for stage, count in sorted(ordered))


def _count(number: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def _format_contribution(contribution: float | None) -> str:
    return "contribution not measured" if contribution is None else f"contribution {contribution:+.4f}"


class ConsoleSink:
    """Shows a run on a rich console: a live bar on an interactive terminal, plain lines anywhere else.

    The bar has ``(rounds - start_round) * episode_length`` steps; a step completes when every
    environment has reported ``EPOCH_COMPLETED`` for that epoch. Rounds and epochs are shown counted
    from 1 (``round 1/3``); environment ids are shown as they are (``env 0``).
    """

    def __init__(self, config: ConsoleSinkConfig, context: SinkContext, console: Console | None = None) -> None:
        self.config = config
        self.context = context
        self.console = console if console is not None else Console()
        self.total_steps = (context.rounds - context.start_round) * context.episode_length
        self.completed_steps = 0
        self._started_at = time.monotonic()
        self._pending_steps: dict[tuple[int, int], _EpochStepReports] = {}
        self._round_summaries: dict[int, dict[int, _EnvRoundSummary]] = {}
        self._progress: Progress | None = None
        self._progress_task: TaskID | None = None
        self._handlers: dict[TelemetryEventType, Callable[[Any], None]] = {
            TelemetryEventType.RUN_STARTED: self._on_run_started,
            TelemetryEventType.RUN_RESUMED: self._on_run_resumed,
            TelemetryEventType.RUN_FINISHED: self._on_run_finished,
            TelemetryEventType.ROUND_COMPLETED: self._on_round_completed,
            TelemetryEventType.EPOCH_COMPLETED: self._on_epoch_completed,
            TelemetryEventType.SEED_GERMINATED: self._on_seed_germinated,
            TelemetryEventType.SEED_FOSSILIZED: self._on_seed_fossilized,
            TelemetryEventType.SEED_PRUNED: self._on_seed_pruned,
            TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED: self._on_internal_level_changed,
            TelemetryEventType.SEED_SUBTARGET_CHANGED: self._on_subtarget_changed,
            TelemetryEventType.GOVERNOR_ROLLBACK: self._on_governor_rollback,
            TelemetryEventType.GRADIENT_ANOMALY: self._on_gradient_anomaly,
            TelemetryEventType.POLICY_ANOMALY: self._on_policy_anomaly,
        }
        if self.console.is_interactive:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("val {task.fields[val_metric]}", markup=False),
                TextColumn("{task.fields[seeds]}", markup=False),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                refresh_per_second=config.refresh_per_second,
            )
            self._progress_task = self._progress.add_task(
                f"{context.run_name} waiting for the first epoch", total=self.total_steps, val_metric="-", seeds=""
            )
            self._progress.start()

    # -- TelemetrySink -----------------------------------------------------------------------------

    def handle(self, event: TelemetryEvent) -> None:
        handler = self._handlers.get(event.event_type)
        if handler is None:
            return
        try:
            handler(event.payload)
        except BaseException:
            # The hub detaches a sink that raises without calling close(); a live bar left running would
            # keep redrawing over the rest of the run's output. Stop it, then let the error propagate.
            self._stop_progress()
            raise

    def flush(self) -> None:
        self.console.file.flush()

    def close(self) -> None:
        self._stop_progress()

    # -- numbering -------------------------------------------------------------------------------------

    def _round_label(self, round_index: int) -> str:
        return f"round {round_index + 1}/{self.context.rounds}"

    def _position_label(self, round_index: int, epoch: int) -> str:
        return f"{self._round_label(round_index)} epoch {epoch + 1}/{self.context.episode_length}"

    def _steps_done_before(self, round_index: int, epoch: int) -> int:
        if round_index < self.context.start_round:
            raise ValueError(
                f"event for round {round_index} in a run that (re)started at round {self.context.start_round}"
            )
        if not 0 <= epoch < self.context.episode_length:
            raise ValueError(f"epoch {epoch} is outside an episode of {self.context.episode_length} epochs")
        return (round_index - self.context.start_round) * self.context.episode_length + epoch

    def _env_summary(self, round_index: int, env_id: int) -> _EnvRoundSummary:
        if not 0 <= env_id < self.context.envs:
            raise ValueError(f"env_id {env_id} is outside the run's {self.context.envs} environments")
        return self._round_summaries.setdefault(round_index, {}).setdefault(env_id, _EnvRoundSummary())

    # -- output --------------------------------------------------------------------------------------

    def _print_line(self, text: Text) -> None:
        self.console.print(text, soft_wrap=True)

    def _print_event_line(self, round_index: int, epoch: int, env_id: int, message: str, style: str = "") -> None:
        line = Text(f"[{self._position_label(round_index, epoch)}] env {env_id}: ", style="dim")
        line.append(message, style=style)
        self._print_line(line)

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- handlers --------------------------------------------------------------------------------------

    def _on_run_started(self, payload: payloads.RunStartedPayload) -> None:
        self._print_line(
            Text.assemble(
                (f"esper run '{payload.run_name}'", "bold"),
                f": task {payload.task}, host {payload.host}, policy {payload.policy}, reward {payload.reward}; "
                f"{_count(payload.envs, 'env')} x {_count(payload.episode_length, 'epoch')} x "
                f"{_count(payload.rounds, 'round')}; {_count(len(payload.slots), 'slot')}; "
                f"host {payload.host_params:,} params; seed {payload.seed}; device {payload.device}"
                f"{_threads(payload.torch_threads)}; run dir {payload.run_dir}",
            )
        )

    def _on_run_resumed(self, payload: payloads.RunResumedPayload) -> None:
        self.completed_steps = self._steps_done_before(payload.round, payload.epoch)
        if self._progress is not None and self._progress_task is not None:
            self._progress.reset(  # reset, not update: the jump must not count towards the speed estimate
                self._progress_task,
                completed=self.completed_steps,
                description=f"{self.context.run_name} resumed at {self._position_label(payload.round, payload.epoch)}",
            )
        self._print_line(
            Text(
                f"resumed at {self._position_label(payload.round, payload.epoch)}; "
                f"discarded {_count(payload.discarded_events, 'event')} recorded after the last checkpoint",
                style="cyan",
            )
        )

    def _on_epoch_completed(self, payload: payloads.EpochCompletedPayload) -> None:
        summary = self._env_summary(payload.round, payload.env_id)
        summary.val_metric = payload.val_metric
        summary.params = payload.host_params + payload.fossilized_params + payload.seed_params
        key = (payload.round, payload.epoch)
        reports = self._pending_steps.setdefault(key, _EpochStepReports())
        reports.val_metrics[payload.env_id] = payload.val_metric
        reports.stage_counts[payload.env_id] = dict(payload.stage_counts)
        if len(reports.val_metrics) == self.context.envs:
            del self._pending_steps[key]
            self._complete_step(payload.round, payload.epoch, reports)

    def _complete_step(self, round_index: int, epoch: int, reports: _EpochStepReports) -> None:
        self.completed_steps = self._steps_done_before(round_index, epoch) + 1
        mean_val_metric = sum(reports.val_metrics.values()) / len(reports.val_metrics)
        total_by_stage: dict[str, int] = {}
        for counts in reports.stage_counts.values():
            for stage_name, count in counts.items():
                total_by_stage[stage_name] = total_by_stage.get(stage_name, 0) + count
        seeds = format_seed_stages(total_by_stage)
        position = self._position_label(round_index, epoch)
        if self._progress is not None and self._progress_task is not None:
            self._progress.update(
                self._progress_task,
                completed=self.completed_steps,
                description=f"{self.context.run_name} {position}",
                val_metric=f"{mean_val_metric:.4f}",
                seeds=seeds,
            )
            return
        last_epoch_of_round = epoch == self.context.episode_length - 1
        if self.context.episode_length <= PLAIN_LINE_EPOCH_LIMIT or last_epoch_of_round:
            elapsed = format_duration(time.monotonic() - self._started_at)
            self._print_line(
                Text(
                    f"{position}  step {self.completed_steps}/{self.total_steps}  "
                    f"val {mean_val_metric:.4f}  seeds: {seeds}  elapsed {elapsed}"
                )
            )

    def _on_round_completed(self, payload: payloads.RoundCompletedPayload) -> None:
        if not self.config.verbose:
            return
        metrics = payload.final_metrics
        mean_metric = sum(metrics) / len(metrics) if metrics else math.nan
        message = f"{self._round_label(payload.round)} completed: mean final val {mean_metric:.4f}"
        if payload.mean_return is not None:
            message += f", mean return {payload.mean_return:.4f}"
        self._print_line(Text(message, style="bold"))

    def _on_seed_germinated(self, payload: payloads.SeedGerminatedPayload) -> None:
        self._env_summary(payload.round, payload.env_id).germinated += 1
        if self.config.verbose:
            self._print_event_line(
                payload.round, payload.epoch, payload.env_id,
                f"germinated {payload.blueprint_id} in {payload.slot_id} ({_size(payload)}, "
                f"{payload.style}, alpha target {payload.alpha_target:g}) seed {payload.seed_id}",
                style="green",
            )

    def _on_seed_fossilized(self, payload: payloads.SeedFossilizedPayload) -> None:
        self._env_summary(payload.round, payload.env_id).fossilized += 1
        if self.config.verbose:
            self._print_event_line(
                payload.round, payload.epoch, payload.env_id,
                f"fossilized {payload.blueprint_id} in {payload.slot_id} (age {_count(payload.seed_age_epochs, 'epoch')}, "
                f"alpha {payload.alpha:g}, {_format_contribution(payload.contribution)}, "
                f"{payload.seed_params:,} params) seed {payload.seed_id}",
                style="blue",
            )

    def _on_seed_pruned(self, payload: payloads.SeedPrunedPayload) -> None:
        self._env_summary(payload.round, payload.env_id).pruned += 1
        if self.config.verbose:
            self._print_event_line(
                payload.round, payload.epoch, payload.env_id,
                f"pruned {payload.blueprint_id} in {payload.slot_id}: {payload.reason} "
                f"(age {_count(payload.seed_age_epochs, 'epoch')}, {_format_contribution(payload.contribution)}) "
                f"seed {payload.seed_id}",
                style="magenta",
            )

    def _on_internal_level_changed(self, payload: payloads.SeedInternalLevelChangedPayload) -> None:
        if self.config.verbose:
            verb = "grew" if payload.to_level > payload.from_level else "shrank"
            self._print_event_line(
                payload.round, payload.epoch, payload.env_id,
                f"{verb} {payload.blueprint_id} in {payload.slot_id} from level {payload.from_level} to "
                f"{payload.to_level} ({payload.internal_effective_params:,} params in use) seed {payload.seed_id}",
                style="cyan",
            )

    def _on_subtarget_changed(self, payload: payloads.SeedSubtargetChangedPayload) -> None:
        if self.config.verbose:
            verb = "enabled" if payload.enabled else "disabled"
            self._print_event_line(
                payload.round, payload.epoch, payload.env_id,
                f"{verb} subtarget {payload.subtarget_idx} of {payload.blueprint_id} in {payload.slot_id} "
                f"({payload.subtarget_active_count} active, {payload.internal_effective_params:,} params in use) "
                f"seed {payload.seed_id}",
                style="cyan",
            )

    def _on_governor_rollback(self, payload: payloads.GovernorRollbackPayload) -> None:
        self._env_summary(payload.round, payload.env_id).rollbacks += 1
        loss = "" if payload.loss is None else f" (loss {payload.loss:.4g})"
        pruned = f"; pruned {', '.join(payload.pruned_slots)}" if payload.pruned_slots else ""
        line = Text("WARNING ", style="bold yellow")
        line.append(f"[{self._position_label(payload.round, payload.epoch)}] env {payload.env_id}: ", style="yellow")
        line.append(
            f"governor rollback: {payload.reason}{loss}; restored epoch {payload.restored_epoch + 1}{pruned}",
            style="yellow",
        )
        self._print_line(line)

    def _on_gradient_anomaly(self, payload: payloads.GradientAnomalyPayload) -> None:
        where = f"seed {payload.seed_id} in {payload.name}" if payload.where == "seed" else f"host segment {payload.name}"
        line = Text("ANOMALY ", style="bold yellow")
        line.append(f"[{self._position_label(payload.round, payload.epoch)}] env {payload.env_id}: ", style="yellow")
        line.append(
            f"{payload.kind.replace('_', ' ')} gradient, {where}: norm {payload.value:.3g}{_bound(payload)}",
            style="yellow",
        )
        self._print_line(line)

    def _on_policy_anomaly(self, payload: payloads.PolicyAnomalyPayload) -> None:
        subject = f" of head {payload.head}" if payload.head is not None else ""
        line = Text("ANOMALY ", style="bold yellow")
        line.append(f"[{self._round_label(payload.round)}] policy: ", style="yellow")
        line.append(f"{payload.kind.replace('_', ' ')}{subject}: {payload.value:.4g}{_bound(payload)}", style="yellow")
        self._print_line(line)

    def _on_run_finished(self, payload: payloads.RunFinishedPayload) -> None:
        self._stop_progress()
        if self._round_summaries:
            last_round = max(self._round_summaries)
            self.console.print(self._summary_table(last_round, self._round_summaries[last_round]))
        else:
            self._print_line(Text("no epoch of this run reported anything"))
        status_style = {"completed": "bold green", "aborted": "bold yellow"}.get(payload.status, "bold red")
        line = Text.assemble(
            f"run '{self.context.run_name}' ",
            (payload.status, status_style),
            f": {payload.rounds_completed} of {self.context.rounds} rounds completed, "
            f"wall time {format_duration(payload.wall_seconds)}",
        )
        self._print_line(line)
        if payload.error is not None:
            self._print_line(Text(f"error: {payload.error}", style="red"))

    def _summary_table(self, round_index: int, rows: dict[int, _EnvRoundSummary]) -> Table:
        table = Table(
            title=f"{self._round_label(round_index)}: final state per environment",
            caption="params: host + fossilized + live seed parameters at the last reported epoch",
        )
        table.add_column("env", justify="right")
        table.add_column("val metric", justify="right")
        table.add_column("params", justify="right")
        table.add_column("germinated", justify="right")
        table.add_column("fossilized", justify="right")
        table.add_column("pruned", justify="right")
        table.add_column("rollbacks", justify="right")
        for env_id in sorted(rows):
            row = rows[env_id]
            table.add_row(
                str(env_id),
                "not reported" if row.val_metric is None else f"{row.val_metric:.4f}",
                "not reported" if row.params is None else f"{row.params:,}",
                str(row.germinated),
                str(row.fossilized),
                str(row.pruned),
                str(row.rollbacks),
            )
        return table


def _size(payload: payloads.SeedGerminatedPayload) -> str:
    """"1,234 params", or for a ladder seed "512 params in use at level 1 (4,096 built)"."""
    if payload.built_params != payload.seed_params:
        return (f"{payload.seed_params:,} params in use at level {payload.internal_level} "
                f"({payload.built_params:,} built)")
    return f"{payload.seed_params:,} params"


def _threads(torch_threads: int | None) -> str:
    """``"; 2 torch threads"``, or nothing for a record that does not say."""
    return "" if torch_threads is None else f"; {_count(torch_threads, 'torch thread')}"


def _bound(payload: payloads.GradientAnomalyPayload | payloads.PolicyAnomalyPayload) -> str:
    """The crossed threshold: ``" (above 1e+03)"``, ``" (below 0.104)"``, or nothing when none applies."""
    if payload.threshold is None:
        return ""
    above = payload.kind in ("exploding", "value_loss_blowup", "kl_spike")
    return f" ({'above' if above else 'below'} {payload.threshold:.3g})"
