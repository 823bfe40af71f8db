"""Tests of the jsonl sink: flat scalar records, epoch steps, flushing, append and resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from esper_core.leyline import SeedStage, TelemetryEvent, TelemetryEventType
from esper_core.leyline import telemetry as payloads
from esper_core.telemetry import SinkContext
from esper_core.testing import sample_events
from esper_sinks.jsonl import JsonlSink, JsonlSinkConfig

EPISODE_LENGTH = 5


def make_context(run_dir: Path) -> SinkContext:
    return SinkContext(run_dir=run_dir, run_name="demo", rounds=3, envs=2, episode_length=EPISODE_LENGTH)


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def epoch_completed(env_id: int, round_index: int, epoch: int, val_metric: float = 0.5) -> TelemetryEvent:
    return TelemetryEvent(
        event_type=TelemetryEventType.EPOCH_COMPLETED,
        payload=payloads.EpochCompletedPayload(
            env_id=env_id, round=round_index, epoch=epoch, train_loss=1.25, val_loss=1.5, val_metric=val_metric,
            host_params=1000, seed_params=40, fossilized_params=0, stage_counts={"DORMANT": 1, "TRAINING": 1},
            train_seconds=0.25, validate_seconds=0.125, effective_seed_params=0.0, alpha_delta_sq_sum=0.0,
        ),
    )


def reward_computed(env_id: int, round_index: int, epoch: int) -> TelemetryEvent:
    return TelemetryEvent(
        event_type=TelemetryEventType.REWARD_COMPUTED,
        payload=payloads.RewardComputedPayload(
            env_id=env_id, round=round_index, epoch=epoch, reward=0.75,
            components={"metric_gain": 1.0, "param_rent": -0.25},
        ),
    )


def policy_updated(round_index: int) -> TelemetryEvent:
    return TelemetryEvent(
        event_type=TelemetryEventType.POLICY_UPDATED,
        payload=payloads.PolicyUpdatedPayload(round=round_index, metrics={"losses/policy_loss": 0.5, "charts/kl": 0.01}),
    )


def round_completed(round_index: int) -> TelemetryEvent:
    return TelemetryEvent(
        event_type=TelemetryEventType.ROUND_COMPLETED,
        payload=payloads.RoundCompletedPayload(round=round_index, final_metrics=(0.5, 0.75), final_params=(1000, 1040)),
    )


def test_records_are_flat_with_epoch_steps(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    sink.handle(epoch_completed(1, round_index=2, epoch=3))
    sink.handle(reward_computed(1, round_index=2, epoch=3))
    sink.handle(policy_updated(2))
    sink.handle(round_completed(2))
    sink.close()
    epoch, reward, policy, round_ = read_records(tmp_path / "scalars.jsonl")

    assert epoch["event"] == "EPOCH_COMPLETED"
    assert (epoch["round"], epoch["epoch"], epoch["env_id"], epoch["step"]) == (2, 3, 1, 2 * EPISODE_LENGTH + 3)
    assert epoch["val_metric"] == 0.5 and epoch["val_loss"] == 1.5 and epoch["train_loss"] == 1.25
    assert epoch["seed_params"] == 40 and epoch["stages/TRAINING"] == 1 and epoch["stages/DORMANT"] == 1
    assert epoch["stages/FOSSILIZED"] == 0, "every stage is a column, so records line up in a table"
    assert sum(1 for key in epoch if key.startswith("stages/")) == len(SeedStage)
    assert isinstance(epoch["time"], float)

    assert reward["step"] == 13 and reward["env_id"] == 1
    assert reward["reward"] == 0.75 and reward["reward/metric_gain"] == 1.0 and reward["reward/param_rent"] == -0.25

    assert policy["event"] == "POLICY_UPDATED"
    assert (policy["round"], policy["epoch"], policy["env_id"]) == (2, None, None)
    assert policy["step"] == 2 * EPISODE_LENGTH + EPISODE_LENGTH - 1, "round-level records sit at the round's last epoch"
    assert policy["losses/policy_loss"] == 0.5 and policy["charts/kl"] == 0.01

    assert round_["step"] == 14 and round_["mean_return"] is None
    assert round_["final_metric_mean"] == 0.625
    assert round_["env1/final_metric"] == 0.75 and round_["env1/final_params"] == 1040

    for record in (epoch, reward, policy, round_):
        assert all(isinstance(value, (int, float)) or value is None for key, value in record.items() if key != "event")


def test_every_line_reaches_the_file_before_close(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlSinkConfig(filename="curves.jsonl"), make_context(tmp_path))
    sink.handle(epoch_completed(0, 0, 0))
    sink.handle(epoch_completed(1, 0, 0))
    assert len(read_records(tmp_path / "curves.jsonl")) == 2, "a crash now must lose nothing"
    sink.close()


def test_only_scalar_events_are_written(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    for event in sample_events():
        sink.handle(event)
    sink.close()
    assert [record["event"] for record in read_records(tmp_path / "scalars.jsonl")] == [
        "ROUND_COMPLETED", "EPOCH_COMPLETED", "REWARD_COMPUTED", "SEED_SUBTARGET_CHANGED", "POLICY_UPDATED",
        "GRADIENT_ANOMALY", "POLICY_ANOMALY",
    ]


def test_subtarget_switches_are_written_with_their_group_and_size(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    sink.handle(TelemetryEvent(
        event_type=TelemetryEventType.SEED_SUBTARGET_CHANGED,
        payload=payloads.SeedSubtargetChangedPayload(
            slot_id="r0c1", env_id=1, seed_id="s7", blueprint_id="groups", subtarget_idx=2, enabled=False,
            subtarget_active_count=1, internal_effective_params=96, round=2, epoch=3,
        ),
    ))
    sink.close()
    (record,) = read_records(tmp_path / "scalars.jsonl")
    assert record["step"] == 2 * EPISODE_LENGTH + 3 and record["env_id"] == 1
    assert (record["slot_id"], record["seed_id"], record["subtarget_idx"], record["enabled"]) == ("r0c1", "s7", 2, False)
    assert (record["subtarget_active_count"], record["internal_effective_params"]) == (1, 96)


def test_anomalies_are_written_with_their_kind_site_value_and_threshold(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    sink.handle(TelemetryEvent(
        event_type=TelemetryEventType.GRADIENT_ANOMALY,
        payload=payloads.GradientAnomalyPayload(
            env_id=1, round=2, epoch=3, where="seed", name="r0c1", kind="exploding", value=5e3, threshold=1e3,
            seed_id="s7",
        ),
    ))
    sink.handle(TelemetryEvent(
        event_type=TelemetryEventType.POLICY_ANOMALY,
        payload=payloads.PolicyAnomalyPayload(round=2, kind="entropy_collapse", value=0.001, threshold=0.01, head="op"),
    ))
    sink.close()
    gradient, policy = read_records(tmp_path / "scalars.jsonl")
    assert gradient["step"] == 2 * EPISODE_LENGTH + 3 and gradient["env_id"] == 1
    assert (gradient["anomaly"], gradient["where"], gradient["name"], gradient["seed_id"]) == ("exploding", "seed", "r0c1", "s7")
    assert (gradient["value"], gradient["threshold"]) == (5e3, 1e3)
    assert policy["step"] == 2 * EPISODE_LENGTH + EPISODE_LENGTH - 1 and policy["epoch"] is None
    assert (policy["anomaly"], policy["head"], policy["value"], policy["threshold"]) == ("entropy_collapse", "op", 0.001, 0.01)


def test_a_second_run_appends(tmp_path: Path) -> None:
    first = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    first.handle(epoch_completed(0, 0, 0))
    first.close()
    second = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    second.handle(epoch_completed(0, 0, 1))
    second.close()
    assert [record["step"] for record in read_records(tmp_path / "scalars.jsonl")] == [0, 1]


def test_resume_drops_the_discarded_tail_then_continues(tmp_path: Path) -> None:
    crashed = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    for round_index in range(2):
        for epoch in range(EPISODE_LENGTH):
            crashed.handle(epoch_completed(0, round_index, epoch, val_metric=0.1))
        crashed.handle(policy_updated(round_index))
    crashed.close()  # the run died after round 1; its last checkpoint is the end of round 0

    resumed = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    resumed.handle(TelemetryEvent(event_type=TelemetryEventType.RUN_RESUMED,
                                  payload=payloads.RunResumedPayload(round=1, epoch=0, discarded_events=6)))
    for epoch in range(EPISODE_LENGTH):
        resumed.handle(epoch_completed(0, 1, epoch, val_metric=0.9))
    resumed.close()

    records = read_records(tmp_path / "scalars.jsonl")
    epoch_steps = [record["step"] for record in records if record["event"] == "EPOCH_COMPLETED"]
    assert epoch_steps == list(range(2 * EPISODE_LENGTH)), "no step twice"
    assert [record["val_metric"] for record in records if record["round"] == 1] == [0.9] * EPISODE_LENGTH
    assert [record["round"] for record in records if record["event"] == "POLICY_UPDATED"] == [0]


def test_policy_metric_named_like_a_record_key_is_refused(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    clash = TelemetryEvent(event_type=TelemetryEventType.POLICY_UPDATED,
                           payload=payloads.PolicyUpdatedPayload(round=0, metrics={"step": 3.0}))
    with pytest.raises(ValueError, match=r"\['step'\] clash with the record keys"):
        sink.handle(clash)
    sink.close()


def test_epoch_outside_the_episode_is_refused(tmp_path: Path) -> None:
    sink = JsonlSink(JsonlSinkConfig(), make_context(tmp_path))
    with pytest.raises(ValueError, match="epoch 5 is outside an episode of 5 epochs"):
        sink.handle(epoch_completed(0, 0, EPISODE_LENGTH))
    sink.close()


@pytest.mark.parametrize("filename", ["", "..", "logs/scalars.jsonl", "/tmp/scalars.jsonl"])
def test_filename_must_be_a_plain_name(filename: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        JsonlSinkConfig(filename=filename)
