"""Run reports: read a run's event record (typed) and summarise lifecycle outcomes, seed families, stage
durations, anomalies and curves."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from esper_core.errors import DataError
from esper_core.leyline import LIVE_STAGES, SeedStage, TelemetryEvent, TelemetryEventType, epoch_step, event_from_dict
from esper_core.leyline import telemetry as payloads
from esper_core.runs import EVENTS_FILE

REPORT_PLOT = "report.png"

Events = Sequence[TelemetryEvent]


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON)`` for every non-blank line of an event record. A torn final line (a
    run killed mid-write) is skipped; a missing file, non-UTF-8 text or a malformed line elsewhere is a
    ``DataError`` naming the file and the line."""
    if not path.exists():
        raise DataError(f"no event record at '{path}' (is this an Esper run directory?)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"'{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                return
            raise DataError(f"'{path}' line {number} is not valid JSON: {exc.msg}") from None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event record in ``path`` as raw JSON objects (for scripts and tests that look at the file
    itself; readers use ``load_events``). A torn final line (a run killed mid-write) is skipped; a
    malformed line elsewhere raises ``DataError`` naming the line."""
    records = []
    for number, record in _json_lines(path):
        if not isinstance(record, dict) or "event" not in record or "data" not in record:
            raise DataError(f"'{path}' line {number} is not an Esper event record")
        records.append(record)
    return records


def load_events(path: Path) -> list[TelemetryEvent]:
    """Every event in ``path`` as typed events. Each line must match its event type's schema (the
    payload classes in ``esper_core.leyline.telemetry``), and the record must start with RUN_STARTED;
    otherwise ``DataError`` names the file, the line and the fields. A torn final line (a run killed
    mid-write) is skipped. Records written by an Esper whose event schema differed (a field added,
    removed or retyped since) are refused the same way: the message names the field."""
    events: list[TelemetryEvent] = []
    for number, record in _json_lines(path):
        try:
            event = event_from_dict(record)
        except DataError as exc:
            raise DataError(f"'{path}' line {number}: {exc}") from None
        if not events and event.event_type is not TelemetryEventType.RUN_STARTED:
            raise DataError(f"'{path}' line {number}: the record must start with RUN_STARTED, found {event.event_type.value}")
        events.append(event)
    return events


def _run_started(events: Events) -> payloads.RunStartedPayload | None:
    """The run header, or None for an empty record (``load_events`` guarantees it comes first)."""
    if not events:
        return None
    if events[0].event_type is not TelemetryEventType.RUN_STARTED:
        raise ValueError(f"a run's events start with RUN_STARTED, these start with {events[0].event_type.value}")
    return events[0].payload


def _of_type(events: Events, event_type: TelemetryEventType) -> list[Any]:
    return [event.payload for event in events if event.event_type is event_type]


# -- stage durations -------------------------------------------------------------------------------


@attrs.define
class _SeedStays:
    """One seed's lifecycle as read from the record: epochs per stage, and the stay in progress."""

    epochs: Counter[SeedStage] = attrs.Factory(Counter)
    stage: SeedStage | None = None
    since_epoch: int = 0
    #: stages the seed was still in when its round (or the record) ended
    unfinished: set[SeedStage] = attrs.Factory(set)

    def enter(self, stage: SeedStage, epoch: int) -> None:
        self.leave(epoch)
        self.stage = stage
        self.since_epoch = epoch
        self.epochs[stage] += 0  # a stay of zero epochs still counts as having been in the stage

    def leave(self, epoch: int) -> None:
        if self.stage is not None:
            self.epochs[self.stage] += epoch - self.since_epoch
            self.stage = None


def stage_durations(events: Events) -> dict[str, dict[str, Any]]:
    """How many epochs (lifecycle clock ticks) seeds spent in each live stage (GERMINATED, TRAINING,
    BLENDING, HOLDING), read from SEED_GERMINATED / SEED_STAGE_CHANGED / SEED_FOSSILIZED / SEED_PRUNED.

    Per stage: ``seeds`` that entered it; ``mean_epochs`` and ``median_epochs`` over the seeds that
    left it (a seed's stays in one stage are added up, e.g. BLENDING before and after a HOLDING);
    ``unfinished``: seeds still in it when their round or the record ended (not in the mean). A stage
    change is measured from the seed's stage as last recorded, so a governor rollback that restores an
    earlier stage still ends the recorded stay at the rollback's epoch."""
    seeds: dict[tuple[int, int, str], _SeedStays] = {}
    for event in events:
        payload = event.payload
        if event.event_type is TelemetryEventType.SEED_GERMINATED:
            seeds.setdefault((payload.env_id, payload.round, payload.seed_id), _SeedStays()).enter(
                SeedStage.GERMINATED, payload.epoch
            )
        elif event.event_type is TelemetryEventType.SEED_STAGE_CHANGED:
            stays = seeds.setdefault((payload.env_id, payload.round, payload.seed_id), _SeedStays())
            if payload.to_stage in LIVE_STAGES:
                stays.enter(payload.to_stage, payload.epoch)
            else:
                stays.leave(payload.epoch)
        elif event.event_type in (TelemetryEventType.SEED_FOSSILIZED, TelemetryEventType.SEED_PRUNED):
            key = (payload.env_id, payload.round, payload.seed_id)
            if key in seeds:  # a prune recorded without its stage change still ends the stay
                seeds[key].leave(payload.epoch)
        elif event.event_type is TelemetryEventType.ROUND_COMPLETED:
            for (_, round_index, _), stays in seeds.items():
                if round_index == payload.round and stays.stage is not None:
                    stays.unfinished.add(stays.stage)
                    stays.stage = None
    for stays in seeds.values():  # the record ended mid-round (a killed or failed run)
        if stays.stage is not None:
            stays.unfinished.add(stays.stage)
    result: dict[str, dict[str, Any]] = {}
    for stage in sorted(LIVE_STAGES):
        entered = [stays for stays in seeds.values() if stage in stays.epochs]
        finished = [stays.epochs[stage] for stays in entered if stage not in stays.unfinished]
        result[stage.name] = {
            "seeds": len(entered),
            "mean_epochs": statistics.fmean(finished) if finished else None,
            "median_epochs": statistics.median(finished) if finished else None,
            "unfinished": len(entered) - len(finished),
        }
    return result


# -- anomalies --------------------------------------------------------------------------------------


def anomaly_counts(events: Events) -> dict[str, dict[str, int]]:
    """GRADIENT_ANOMALY and POLICY_ANOMALY events counted by kind (every kind listed, zeros included)."""
    gradient = Counter(p.kind for p in _of_type(events, TelemetryEventType.GRADIENT_ANOMALY))
    policy = Counter(p.kind for p in _of_type(events, TelemetryEventType.POLICY_ANOMALY))
    return {
        "gradient": {kind: gradient[kind] for kind in payloads.GRADIENT_ANOMALY_KINDS},
        "policy": {kind: policy[kind] for kind in payloads.POLICY_ANOMALY_KINDS},
    }


def describe_internal_ops(summary: dict[str, Any]) -> str:
    """One line for ``esper report``: ``internal ops: grow 4, shrink 2; subtarget ops: enable 1, disable 3``."""
    internal, subtargets = summary["internal"], summary["subtargets"]
    return (
        f"internal ops: grow {internal['grow']}, shrink {internal['shrink']}; "
        f"subtarget ops: enable {subtargets['enable']}, disable {subtargets['disable']}"
    )


def describe_anomalies(summary: dict[str, Any]) -> str:
    """One line for ``esper report``: ``anomalies: exploding 3, entropy_collapse 1`` or ``anomalies: none``."""
    counts = {**summary["anomalies"]["gradient"], **summary["anomalies"]["policy"]}
    present = [f"{kind} {count}" for kind, count in counts.items() if count]
    return "anomalies: " + (", ".join(present) if present else "none")


def stage_duration_table(summary: dict[str, Any]) -> Any:
    """A rich table of ``summary["stage_durations"]`` for ``esper report``."""
    from rich.table import Table

    table = Table(title="Epochs per seed in each stage")
    for column in ("stage", "seeds", "mean", "median", "still in stage"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, row in summary["stage_durations"].items():
        table.add_row(
            stage, str(row["seeds"]),
            "-" if row["mean_epochs"] is None else f"{row['mean_epochs']:.1f}",
            "-" if row["median_epochs"] is None else f"{row['median_epochs']:g}",
            str(row["unfinished"]),
        )
    return table


# -- the summary ------------------------------------------------------------------------------------


def summarize_events(events: Events) -> dict[str, Any]:
    """Lifecycle outcomes, seed family usage, stage durations, anomalies, per-round results and run status."""
    started = _run_started(events)
    finished: list[payloads.RunFinishedPayload] = _of_type(events, TelemetryEventType.RUN_FINISHED)
    lifecycle: Counter[str] = Counter()
    prune_reasons: Counter[str] = Counter()
    families: dict[str, Counter[str]] = defaultdict(Counter)
    fossil_contributions: dict[str, list[float]] = defaultdict(list)
    rounds: dict[int, dict[str, Any]] = {}
    rollbacks = 0
    actions: Counter[str] = Counter()
    failed_actions = 0
    rewards: dict[int, float] = defaultdict(float)
    internal: Counter[str] = Counter()
    subtarget_ops: Counter[str] = Counter()
    fossil_levels: list[int] = []
    last_losses: dict[tuple[int, int], float] = {}
    slot_germinations: Counter[str] = Counter()
    surface_of = dict(zip(started.slots, started.slot_surfaces, strict=True)) if started else {}
    for event in events:
        kind, data = event.event_type, event.payload
        if kind is TelemetryEventType.SEED_GERMINATED:
            lifecycle["germinated"] += 1
            families[data.blueprint_id]["germinated"] += 1
            slot_germinations[data.slot_id] += 1
        elif kind is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED:
            internal["grow" if data.to_level > data.from_level else "shrink"] += 1
        elif kind is TelemetryEventType.SEED_SUBTARGET_CHANGED:
            subtarget_ops["enable" if data.enabled else "disable"] += 1
        elif kind is TelemetryEventType.SEED_FOSSILIZED:
            lifecycle["fossilized"] += 1
            if data.internal_level:
                fossil_levels.append(data.internal_level)
            families[data.blueprint_id]["fossilized"] += 1
            if data.contribution is not None:
                fossil_contributions[data.blueprint_id].append(data.contribution)
        elif kind is TelemetryEventType.SEED_PRUNED:
            lifecycle["pruned"] += 1
            prune_reasons[data.reason] += 1
            families[data.blueprint_id]["pruned"] += 1
        elif (
            kind is TelemetryEventType.SEED_STAGE_CHANGED
            and data.from_stage is SeedStage.TRAINING and data.to_stage is SeedStage.BLENDING
        ):
            lifecycle["blended"] += 1
            families[data.blueprint_id]["blended"] += 1
        elif kind is TelemetryEventType.GOVERNOR_ROLLBACK:
            rollbacks += 1
        elif kind is TelemetryEventType.ACTION_TAKEN:
            actions[data.action["op"]] += 1
            failed_actions += 0 if data.success else 1
        elif kind is TelemetryEventType.REWARD_COMPUTED:
            rewards[data.round] += data.reward
        elif kind is TelemetryEventType.EPOCH_COMPLETED:
            last_losses[(data.round, data.env_id)] = data.val_loss
        elif kind is TelemetryEventType.ROUND_COMPLETED:
            metrics = data.final_metrics
            params = data.final_params
            losses = [loss for (round_index, _), loss in sorted(last_losses.items()) if round_index == data.round]
            rounds[data.round] = {
                "final_metrics": list(metrics),
                "final_params": list(params),
                "mean_metric": sum(metrics) / len(metrics),
                "mean_params": sum(params) / len(params),
                "mean_val_loss": sum(losses) / len(losses) if losses else None,
                "total_reward": None,
                "mean_return": None,
            }
    for round_index, total in rewards.items():
        if round_index in rounds:
            rounds[round_index]["total_reward"] = total  # summed over the round's environments
            rounds[round_index]["mean_return"] = total / len(rounds[round_index]["final_metrics"])
    last = rounds[max(rounds)] if rounds else None
    return {
        "run": {
            "name": started.run_name if started else None,
            "task": started.task if started else None,
            "host": started.host if started else None,
            "policy": started.policy if started else None,
            "seed": started.seed if started else None,
            "envs": started.envs if started else None,
            "host_params": started.host_params if started else None,
            "score_basis": started.score_basis if started else None,
            "torch_threads": started.torch_threads if started else None,
            "status": finished[-1].status if finished else "running or killed",
            "error": finished[-1].error if finished else None,
            "wall_seconds": sum(f.wall_seconds for f in finished),
            "rounds_completed": len(rounds),
        },
        "lifecycle": {
            "germinated": lifecycle["germinated"],
            "blended": lifecycle["blended"],
            "fossilized": lifecycle["fossilized"],
            "pruned": lifecycle["pruned"],
            "prune_reasons": dict(prune_reasons),
            "governor_rollbacks": rollbacks,
        },
        "stage_durations": stage_durations(events),
        "anomalies": anomaly_counts(events),
        "seed_families": {
            name: {
                "germinated": counts["germinated"],
                "blended": counts["blended"],
                "fossilized": counts["fossilized"],
                "pruned": counts["pruned"],
                "mean_fossil_contribution": (
                    sum(fossil_contributions[name]) / len(fossil_contributions[name])
                    if fossil_contributions[name]
                    else None
                ),
            }
            for name, counts in sorted(families.items())
        },
        "actions": {"by_op": dict(actions), "failed": failed_actions},
        "internal": {
            "grow": internal["grow"],
            "shrink": internal["shrink"],
            "mean_level_at_fossilization": sum(fossil_levels) / len(fossil_levels) if fossil_levels else None,
        },
        "subtargets": {"enable": subtarget_ops["enable"], "disable": subtarget_ops["disable"]},
        "rounds": {str(k): v for k, v in sorted(rounds.items())},
        "slots": {
            slot: {"surface": surface_of[slot], "germinated": count} for slot, count in sorted(slot_germinations.items())
        },
        "final": None
        if last is None
        else {"mean_metric": last["mean_metric"], "mean_params": last["mean_params"], "mean_val_loss": last["mean_val_loss"]},
    }


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """``summarize_events`` of a run directory's record (what ``summary.json`` holds)."""
    return summarize_events(load_events(Path(run_dir) / EVENTS_FILE))


def epoch_curves(events: Events) -> dict[int, dict[str, list[float]]]:
    """Per environment: epoch step, validation metric and total parameters, in order."""
    started = _run_started(events)
    curves: dict[int, dict[str, list[float]]] = defaultdict(lambda: {"step": [], "metric": [], "params": []})
    for data in _of_type(events, TelemetryEventType.EPOCH_COMPLETED):
        curve = curves[data.env_id]
        curve["step"].append(epoch_step(data.round, data.epoch, started.episode_length))
        curve["metric"].append(data.val_metric)
        curve["params"].append(data.host_params + data.seed_params + data.fossilized_params)
    return dict(curves)


def lifecycle_markers(events: Events) -> dict[str, list[tuple[int, int]]]:
    """(env, epoch step) of every germination, fossilization and prune, for plot markers."""
    started = _run_started(events)
    markers: dict[str, list[tuple[int, int]]] = {"germinated": [], "fossilized": [], "pruned": []}
    names = {
        TelemetryEventType.SEED_GERMINATED: "germinated",
        TelemetryEventType.SEED_FOSSILIZED: "fossilized",
        TelemetryEventType.SEED_PRUNED: "pruned",
    }
    for event in events:
        if event.event_type in names:
            data = event.payload
            markers[names[event.event_type]].append((data.env_id, epoch_step(data.round, data.epoch, started.episode_length)))
    return markers


def plot_report(run_dir: Path, events: Events) -> Path:
    """Write ``report.png``: validation metric and parameter count per environment over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = epoch_curves(events)
    markers = lifecycle_markers(events)
    figure, (metric_axis, params_axis) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    styles = {"germinated": ("^", "tab:green"), "fossilized": ("*", "tab:blue"), "pruned": ("x", "tab:red")}
    for env_id, curve in sorted(curves.items()):
        metric_axis.plot(curve["step"], curve["metric"], label=f"env {env_id}", linewidth=1.2)
        params_axis.plot(curve["step"], curve["params"], linewidth=1.2)
        lookup = dict(zip(curve["step"], curve["metric"]))
        for kind, points in markers.items():
            xs = [step for env, step in points if env == env_id and step in lookup]
            marker, color = styles[kind]
            metric_axis.scatter(xs, [lookup[x] for x in xs], marker=marker, color=color, s=40, zorder=3,
                                label=kind if env_id == min(curves) else None)
    metric_axis.set_ylabel("validation metric")
    if metric_axis.get_legend_handles_labels()[0]:
        metric_axis.legend(loc="lower right", fontsize=8)
    metric_axis.grid(alpha=0.3)
    params_axis.set_ylabel("parameters (host + seeds)")
    params_axis.set_xlabel("epoch (all rounds)")
    params_axis.grid(alpha=0.3)
    summary = summarize_events(events)
    figure.suptitle(f"{summary['run']['name']} — {summary['run']['task']} / {summary['run']['policy']}")
    figure.tight_layout()
    path = Path(run_dir) / REPORT_PLOT
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
