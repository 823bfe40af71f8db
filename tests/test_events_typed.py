"""Typed events: every event round-trips through its JSON form, and a record that does not match its
schema is refused with one line naming the file, the line and the fields."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from esper_core.errors import DataError
from esper_core.leyline import EVENT_PAYLOADS, SeedStage, TelemetryEvent, TelemetryEventType, event_from_dict
from esper_core.leyline import telemetry as payloads
from esper_core.leyline.telemetry import event_to_dict, event_to_json
from esper_core.telemetry.report import load_events
from esper_core.tolaria.engine import start_run

RUN_STARTED = payloads.RunStartedPayload(
    run_name="demo", run_dir="/runs/demo", task="shapes", host="cnn", policy="heuristic", reward="basic", seed=3,
    rounds=1, envs=1, episode_length=4, slots=("r0c0", "r0c1"), blueprints=("norm",), host_params=1000,
    device="cpu", slot_surfaces=("segment_boundary", "segment_boundary"), score_basis="metric", torch_threads=2,
)
SEED = {"env_id": 0, "round": 0, "epoch": 1, "slot_id": "r0c0", "seed_id": "r0e0-r0c0-0", "blueprint_id": "norm"}
ANOMALIES = [
    TelemetryEvent(TelemetryEventType.GRADIENT_ANOMALY, payloads.GradientAnomalyPayload(
        env_id=0, round=0, epoch=2, where="seed", name="r0c0", kind="exploding", value=2.5e3, threshold=1e3,
        seed_id="r0e0-r0c0-0")),
    TelemetryEvent(TelemetryEventType.GRADIENT_ANOMALY, payloads.GradientAnomalyPayload(
        env_id=0, round=0, epoch=2, where="host_segment", name="host", kind="non_finite", value=math.inf,
        threshold=None)),
    TelemetryEvent(TelemetryEventType.POLICY_ANOMALY, payloads.PolicyAnomalyPayload(
        round=0, kind="entropy_collapse", value=0.003, threshold=0.104, head="op")),
]


def line_of(event: TelemetryEvent) -> dict:
    """An event as ``events.jsonl`` holds it (through the JSON text, so NaN and tuples are as on disk)."""
    return json.loads(event_to_json(event))


def write_record(path: Path, records: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_the_anomaly_events_round_trip_through_json() -> None:
    for event in ANOMALIES:
        assert event_from_dict(line_of(event)) == event
    stage_change = TelemetryEvent(TelemetryEventType.SEED_STAGE_CHANGED, payloads.SeedStageChangedPayload(
        from_stage=SeedStage.TRAINING, to_stage=SeedStage.BLENDING, **SEED))
    assert line_of(stage_change)["data"]["to_stage"] == "BLENDING"  # enums by name
    assert event_from_dict(line_of(stage_change)) == stage_change


def test_every_event_a_real_run_writes_matches_its_schema(toy_manager, toy_config) -> None:
    script = {"1": {"op": 1, "slot": 0}, "3": {"op": 2, "slot": 0}, "6": {"op": 4, "slot": 0}}
    run_dir = start_run(toy_config(policy={"name": "scripted", "script": script}), toy_manager)
    events = load_events(run_dir / "events.jsonl")
    kinds = {event.event_type for event in events}
    assert {TelemetryEventType.RUN_STARTED, TelemetryEventType.SEED_GERMINATED, TelemetryEventType.SEED_PRUNED,
            TelemetryEventType.EPOCH_COMPLETED, TelemetryEventType.RUN_FINISHED} <= kinds
    for event in events:
        assert type(event.payload) is EVENT_PAYLOADS[event.event_type]
        assert event_to_dict(event) == line_of(event), "what the reader rebuilt writes back the same"
    assert [e.event_type for e in events][0] is TelemetryEventType.RUN_STARTED


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda data: data.pop("reason"), "SEED_PRUNED event does not match its schema: required field missing @ $.reason"),
        (lambda data: data.update(epoch="1"), "expected an integer, got '1' @ $.epoch"),
        (lambda data: data.update(epoch=True), "expected an integer, got True @ $.epoch"),
        (lambda data: data.update(contribution="high"), "$.contribution"),
        (lambda data: data.update(colour="red"), "extra fields found (colour) @ $"),
        (lambda data: data.update(slot_id=5), "expected a string, got 5 @ $.slot_id"),
    ],
)
def test_a_payload_that_does_not_match_its_schema_is_named(change, message) -> None:
    record = line_of(TelemetryEvent(TelemetryEventType.SEED_PRUNED, payloads.SeedPrunedPayload(
        reason="policy", contribution=0.1, seed_age_epochs=3, **SEED)))
    change(record["data"])
    with pytest.raises(DataError) as raised:
        event_from_dict(record)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_bad_enum_names_kinds_tuples_and_envelopes_are_refused() -> None:
    stage_change = line_of(TelemetryEvent(TelemetryEventType.SEED_STAGE_CHANGED, payloads.SeedStageChangedPayload(
        from_stage=SeedStage.TRAINING, to_stage=SeedStage.BLENDING, **SEED)))
    stage_change["data"]["to_stage"] = "SPROUTING"
    with pytest.raises(DataError, match=r"'SPROUTING' is not a SeedStage name @ \$.to_stage"):
        event_from_dict(stage_change)
    anomaly = line_of(ANOMALIES[0])
    anomaly["data"]["kind"] = "wobbly"
    with pytest.raises(DataError, match="kind must be one of non_finite, exploding, vanishing, dead_seed, got 'wobbly'"):
        event_from_dict(anomaly)
    started = line_of(TelemetryEvent(TelemetryEventType.RUN_STARTED, RUN_STARTED))
    started["data"]["slots"] = "r0c0"  # a string is not a list of slot ids (cattrs would split it into letters)
    with pytest.raises(DataError, match=r"expected a list, got 'r0c0' @ \$.slots"):
        event_from_dict(started)
    with pytest.raises(DataError, match="unknown event type 'SEED_SPROUTED'"):
        event_from_dict({"event": "SEED_SPROUTED", "time": 0.0, "data": {}})
    with pytest.raises(DataError, match="needs exactly the keys data, event, time"):
        event_from_dict({"event": "RUN_FINISHED", "data": {}})
    with pytest.raises(DataError, match="non-numeric time"):
        event_from_dict({"event": "RUN_RESUMED", "time": "noon", "data": {}})


def test_an_older_run_header_without_torch_threads_reads_as_not_recorded() -> None:
    started = line_of(TelemetryEvent(TelemetryEventType.RUN_STARTED, RUN_STARTED))
    del started["data"]["torch_threads"]
    assert event_from_dict(started).payload.torch_threads is None


def test_load_events_names_the_file_and_the_line(tmp_path: Path) -> None:
    started = line_of(TelemetryEvent(TelemetryEventType.RUN_STARTED, RUN_STARTED))
    pruned = line_of(TelemetryEvent(TelemetryEventType.SEED_PRUNED, payloads.SeedPrunedPayload(
        reason="policy", contribution=None, seed_age_epochs=3, **SEED)))
    del pruned["data"]["reason"]
    path = write_record(tmp_path / "events.jsonl", [started, line_of(ANOMALIES[0]), pruned, line_of(ANOMALIES[2])])
    with pytest.raises(DataError) as raised:
        load_events(path)
    assert str(raised.value) == (
        f"'{path}' line 3: SEED_PRUNED event does not match its schema: required field missing @ $.reason"
    )


def test_load_events_skips_a_torn_last_line_and_needs_the_run_header_first(tmp_path: Path) -> None:
    started = line_of(TelemetryEvent(TelemetryEventType.RUN_STARTED, RUN_STARTED))
    torn = json.dumps(line_of(ANOMALIES[0]))[:40]
    events = load_events(write_record(tmp_path / "torn.jsonl", [started, line_of(ANOMALIES[2]), torn]))
    assert [e.event_type for e in events] == [TelemetryEventType.RUN_STARTED, TelemetryEventType.POLICY_ANOMALY]
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_events(write_record(tmp_path / "middle.jsonl", [started, torn, line_of(ANOMALIES[2])]))
    with pytest.raises(DataError, match="line 1: the record must start with RUN_STARTED, found POLICY_ANOMALY"):
        load_events(write_record(tmp_path / "headless.jsonl", [line_of(ANOMALIES[2]), started]))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        load_events(binary)
    with pytest.raises(DataError, match="no event record at"):
        load_events(tmp_path / "absent.jsonl")
