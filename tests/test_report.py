"""Run reports: stage durations and anomaly counts from the typed event record, in the summary and in
``esper report``'s tables."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from esper_core.errors import DataError
from esper_core.leyline import SeedStage, TelemetryEvent, TelemetryEventType
from esper_core.leyline import telemetry as payloads
from esper_core.leyline.telemetry import event_to_json
from esper_core.telemetry.report import (
    describe_anomalies,
    load_events,
    stage_duration_table,
    stage_durations,
    summarize_events,
    summarize_run,
)
from esper_core.tolaria.engine import start_run

RUN_STARTED = TelemetryEvent(TelemetryEventType.RUN_STARTED, payloads.RunStartedPayload(
    run_name="demo", run_dir="/runs/demo", task="shapes", host="cnn", policy="heuristic", reward="basic", seed=3,
    rounds=2, envs=2, episode_length=10, slots=("r0c0", "r0c1"), blueprints=("norm", "conv"), host_params=1000,
    device="cpu", slot_surfaces=("segment_boundary", "segment_boundary"), score_basis="metric", torch_threads=1,
))


def seed_ids(env_id: int, round_index: int, seed_id: str, slot_id: str = "r0c0") -> dict:
    return {"env_id": env_id, "round": round_index, "slot_id": slot_id, "seed_id": seed_id, "blueprint_id": "norm"}


def germinated(epoch: int, **ids) -> list[TelemetryEvent]:
    """What a slot emits on GERMINATE: the stage change DORMANT -> GERMINATED, then SEED_GERMINATED."""
    return [
        changed(SeedStage.DORMANT, SeedStage.GERMINATED, epoch, **ids),
        TelemetryEvent(TelemetryEventType.SEED_GERMINATED, payloads.SeedGerminatedPayload(
            epoch=epoch, style="ADD", alpha_target=1.0, seed_params=10, built_params=10, **ids)),
    ]


def changed(source: SeedStage, target: SeedStage, epoch: int, **ids) -> TelemetryEvent:
    return TelemetryEvent(TelemetryEventType.SEED_STAGE_CHANGED, payloads.SeedStageChangedPayload(
        epoch=epoch, from_stage=source, to_stage=target, **ids))


def pruned(epoch: int, reason: str = "policy", **ids) -> TelemetryEvent:
    return TelemetryEvent(TelemetryEventType.SEED_PRUNED, payloads.SeedPrunedPayload(
        epoch=epoch, reason=reason, contribution=None, seed_age_epochs=1, **ids))


def fossilized(epoch: int, **ids) -> TelemetryEvent:
    return TelemetryEvent(TelemetryEventType.SEED_FOSSILIZED, payloads.SeedFossilizedPayload(
        epoch=epoch, seed_params=10, alpha=1.0, contribution=0.02, seed_age_epochs=6, **ids))


def round_completed(round_index: int) -> TelemetryEvent:
    return TelemetryEvent(TelemetryEventType.ROUND_COMPLETED, payloads.RoundCompletedPayload(
        round=round_index, final_metrics=(0.5, 0.5), final_params=(1000, 1000)))


def lifecycle_stream() -> list[TelemetryEvent]:
    """Four seeds over two rounds:

    - A (env 0, round 0): GERMINATED 0 -> TRAINING 0 -> BLENDING 3 -> HOLDING 5 -> BLENDING 6 -> HOLDING 8
      -> FOSSILIZED 9: TRAINING 3 epochs, BLENDING 2 + 2 = 4, HOLDING 1 + 1 = 2;
    - B (env 1, round 0): GERMINATED 1 -> TRAINING 1 -> pruned 2 (with its stage change, then the embargo);
    - C (env 0, round 1): GERMINATED 4 -> TRAINING 4 -> pruned by a rollback at 8 with no stage change;
    - D (env 1, round 1): GERMINATED 7 -> TRAINING 7, still TRAINING when the round ends.
    """
    a, b, c, d = seed_ids(0, 0, "A"), seed_ids(1, 0, "B", "r0c1"), seed_ids(0, 1, "C"), seed_ids(1, 1, "D")
    return [
        RUN_STARTED,
        *germinated(0, **a),
        changed(SeedStage.GERMINATED, SeedStage.TRAINING, 0, **a),
        *germinated(1, **b),
        changed(SeedStage.GERMINATED, SeedStage.TRAINING, 1, **b),
        changed(SeedStage.TRAINING, SeedStage.PRUNED, 2, **b),
        pruned(2, **b),
        changed(SeedStage.PRUNED, SeedStage.EMBARGOED, 2, **b),
        changed(SeedStage.TRAINING, SeedStage.BLENDING, 3, **a),
        changed(SeedStage.EMBARGOED, SeedStage.RESETTING, 3, **b),
        changed(SeedStage.BLENDING, SeedStage.HOLDING, 5, **a),
        changed(SeedStage.HOLDING, SeedStage.BLENDING, 6, **a),
        changed(SeedStage.BLENDING, SeedStage.HOLDING, 8, **a),
        changed(SeedStage.HOLDING, SeedStage.FOSSILIZED, 9, **a),
        fossilized(9, **a),
        round_completed(0),
        *germinated(4, **c),
        changed(SeedStage.GERMINATED, SeedStage.TRAINING, 4, **c),
        *germinated(7, **d),
        changed(SeedStage.GERMINATED, SeedStage.TRAINING, 7, **d),
        pruned(8, reason="rollback", **c),
        round_completed(1),
    ]


def test_stage_durations_of_a_synthetic_lifecycle() -> None:
    durations = stage_durations(lifecycle_stream())
    assert durations["GERMINATED"] == {"seeds": 4, "mean_epochs": 0.0, "median_epochs": 0, "unfinished": 0}
    # TRAINING: A 3, B 1, C 4 (ended by the rollback's prune); D unfinished
    assert durations["TRAINING"] == {"seeds": 4, "mean_epochs": pytest.approx(8 / 3), "median_epochs": 3, "unfinished": 1}
    assert durations["BLENDING"] == {"seeds": 1, "mean_epochs": 4.0, "median_epochs": 4, "unfinished": 0}
    assert durations["HOLDING"] == {"seeds": 1, "mean_epochs": 2.0, "median_epochs": 2, "unfinished": 0}
    assert set(durations) == {"GERMINATED", "TRAINING", "BLENDING", "HOLDING"}


def test_a_record_that_ends_mid_round_leaves_stays_unfinished() -> None:
    stream = lifecycle_stream()[:5]  # A germinated and TRAINING from epoch 0, then the run was killed
    assert stage_durations(stream)["TRAINING"] == {"seeds": 1, "mean_epochs": None, "median_epochs": None, "unfinished": 1}


def anomaly(kind: str, *, where: str = "seed") -> TelemetryEvent:
    return TelemetryEvent(TelemetryEventType.GRADIENT_ANOMALY, payloads.GradientAnomalyPayload(
        env_id=0, round=0, epoch=1, where=where, name="r0c0", kind=kind, value=0.0, threshold=0.0))


def test_the_summary_counts_anomalies_by_kind_and_prune_reasons() -> None:
    events = [
        *lifecycle_stream(), anomaly("dead_seed"), anomaly("dead_seed"), anomaly("exploding", where="host_segment"),
        TelemetryEvent(TelemetryEventType.POLICY_ANOMALY, payloads.PolicyAnomalyPayload(
            round=0, kind="kl_spike", value=0.5, threshold=0.1)),
    ]
    summary = summarize_events(events)
    assert summary["anomalies"]["gradient"] == {"non_finite": 0, "exploding": 1, "vanishing": 0, "dead_seed": 2}
    assert summary["anomalies"]["policy"] == {"entropy_collapse": 0, "value_loss_blowup": 0, "kl_spike": 1}
    assert describe_anomalies(summary) == "anomalies: exploding 1, dead_seed 2, kl_spike 1"
    assert summary["lifecycle"]["prune_reasons"] == {"policy": 1, "rollback": 1}
    assert summary["lifecycle"]["germinated"] == 4 and summary["lifecycle"]["blended"] == 1
    assert summary["stage_durations"] == stage_durations(events)
    assert summary["run"]["torch_threads"] == 1
    assert describe_anomalies(summarize_events(lifecycle_stream())) == "anomalies: none"


def test_the_stage_duration_table_shows_mean_and_median() -> None:
    console = Console(file=io.StringIO(), width=120)
    console.print(stage_duration_table(summarize_events(lifecycle_stream())))
    rows = {line.split()[1]: line.split()[2:] for line in console.file.getvalue().splitlines() if line.startswith("│")}
    assert rows["TRAINING"] == ["│", "4", "│", "2.7", "│", "3", "│", "1", "│"]
    assert rows["BLENDING"] == ["│", "1", "│", "4.0", "│", "4", "│", "0", "│"]


def test_the_run_summary_holds_stage_durations_and_anomalies(toy_manager, toy_config) -> None:
    script = {"1": {"op": 1, "slot": 0}, "3": {"op": 2, "slot": 0}}
    run_dir = start_run(toy_config(policy={"name": "scripted", "script": script}), toy_manager)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(summarize_run(run_dir)))
    events = load_events(run_dir / "events.jsonl")
    advances = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_STAGE_CHANGED
                and e.payload.to_stage is SeedStage.BLENDING]
    germinations = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_GERMINATED]
    assert len(germinations) == 2 and len(advances) == 2  # one seed per environment, advanced at epoch 3
    training = summary["stage_durations"]["TRAINING"]
    assert training["seeds"] == 2 and training["unfinished"] == 0
    assert training["mean_epochs"] == 3 - 1, "germinated after epoch 1, advanced after epoch 3"
    assert summary["anomalies"]["gradient"] == {"non_finite": 0, "exploding": 0, "vanishing": 0, "dead_seed": 0}


def test_a_damaged_event_line_is_one_error_naming_file_and_line(toy_manager, toy_config) -> None:
    run_dir = start_run(toy_config(), toy_manager)
    path = run_dir / "events.jsonl"
    lines = path.read_text().splitlines()
    third = json.loads(lines[2])
    third["data"]["bogus"] = 1
    lines[2] = json.dumps(third)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as raised:
        summarize_run(run_dir)
    assert str(raised.value).startswith(f"'{path}' line 3: {third['event']} event does not match its schema: ")
    assert "extra fields found (bogus)" in str(raised.value)


def test_the_synthetic_stream_reads_back_from_a_file_as_written(tmp_path: Path) -> None:
    stream = lifecycle_stream()
    path = tmp_path / "events.jsonl"
    path.write_text("".join(event_to_json(event) + "\n" for event in stream))
    assert load_events(path) == stream
