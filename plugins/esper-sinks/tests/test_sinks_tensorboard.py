"""Tests of the tensorboard sink: scalars read back with EventAccumulator, resume purge, missing package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from esper_core.errors import PluginError
from esper_core.leyline import TelemetryEvent, TelemetryEventType
from esper_core.leyline import telemetry as payloads
from esper_core.telemetry import SinkContext
from esper_sinks.tensorboard import MISSING_TENSORBOARD, TensorBoardSink, TensorBoardSinkConfig

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

EPISODE_LENGTH = 3


def make_context(run_dir: Path) -> SinkContext:
    return SinkContext(run_dir=run_dir, run_name="demo", rounds=2, envs=2, episode_length=EPISODE_LENGTH)


def event(event_type: TelemetryEventType, payload: object) -> TelemetryEvent:
    return TelemetryEvent(event_type=event_type, payload=payload)


def epoch_completed(env_id: int, round_index: int, epoch: int, val_metric: float) -> TelemetryEvent:
    return event(
        TelemetryEventType.EPOCH_COMPLETED,
        payloads.EpochCompletedPayload(
            env_id=env_id, round=round_index, epoch=epoch, train_loss=2.0, val_loss=1.5, val_metric=val_metric,
            host_params=1000, seed_params=24, fossilized_params=8, stage_counts={"TRAINING": 1},
            train_seconds=0.1, validate_seconds=0.1, effective_seed_params=0.0, alpha_delta_sq_sum=0.0,
        ),
    )


SEED = {"slot_id": "r0c0", "seed_id": "s0", "blueprint_id": "norm"}


def read_scalars(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return accumulator


def steps_and_values(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(scalar.step, pytest.approx(scalar.value)) for scalar in accumulator.Scalars(tag)]


def test_scalars_can_be_read_back(tmp_path: Path) -> None:
    sink = TensorBoardSink(TensorBoardSinkConfig(), make_context(tmp_path))
    for epoch in range(EPISODE_LENGTH):
        sink.handle(epoch_completed(0, 1, epoch, val_metric=0.25 * (epoch + 1)))
        sink.handle(epoch_completed(1, 1, epoch, val_metric=0.5))
    sink.handle(event(TelemetryEventType.REWARD_COMPUTED, payloads.RewardComputedPayload(
        env_id=1, round=1, epoch=2, reward=0.5, components={"metric_gain": 0.75, "param_rent": -0.25})))
    sink.handle(event(TelemetryEventType.SEED_GERMINATED, payloads.SeedGerminatedPayload(
        env_id=0, round=1, epoch=0, style="ADD", alpha_target=1.0, seed_params=24, built_params=24, **SEED)))
    sink.handle(event(TelemetryEventType.SEED_GERMINATED, payloads.SeedGerminatedPayload(
        env_id=1, round=1, epoch=0, style="ADD", alpha_target=1.0, seed_params=24, built_params=24, **SEED)))
    sink.handle(event(TelemetryEventType.SEED_PRUNED, payloads.SeedPrunedPayload(
        env_id=1, round=1, epoch=2, reason="policy", contribution=None, seed_age_epochs=2, **SEED)))
    for from_level, to_level in ((1, 2), (2, 3), (3, 2)):
        sink.handle(event(TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED, payloads.SeedInternalLevelChangedPayload(
            env_id=0, round=1, epoch=1, from_level=from_level, to_level=to_level, internal_effective_params=64, **SEED)))
    for enabled in (False, False, True):
        sink.handle(event(TelemetryEventType.SEED_SUBTARGET_CHANGED, payloads.SeedSubtargetChangedPayload(
            env_id=0, round=1, epoch=1, subtarget_idx=1, enabled=enabled, subtarget_active_count=1,
            internal_effective_params=32, **SEED)))
    sink.handle(event(TelemetryEventType.POLICY_UPDATED,
                      payloads.PolicyUpdatedPayload(round=1, metrics={"policy_loss": 0.125})))
    for kind in ("exploding", "exploding", "dead_seed"):
        sink.handle(event(TelemetryEventType.GRADIENT_ANOMALY, payloads.GradientAnomalyPayload(
            env_id=0, round=1, epoch=1, where="seed", name="r0c0", kind=kind, value=2e3, threshold=1e3, seed_id="s0")))
    sink.handle(event(TelemetryEventType.POLICY_ANOMALY, payloads.PolicyAnomalyPayload(
        round=1, kind="kl_spike", value=0.4, threshold=0.1)))
    sink.handle(event(TelemetryEventType.ROUND_COMPLETED, payloads.RoundCompletedPayload(
        round=1, final_metrics=(0.75, 0.5), final_params=(1024, 1024), mean_return=1.5)))
    sink.flush()
    sink.close()

    log_dir = tmp_path / "tensorboard"
    assert list(log_dir.glob("events.out.tfevents.*")), "an events file under the subdir"
    scalars = read_scalars(log_dir)
    assert steps_and_values(scalars, "env0/val_metric") == [(3, 0.25), (4, 0.5), (5, 0.75)]
    assert steps_and_values(scalars, "env1/val_loss")[-1] == (5, 1.5)
    assert steps_and_values(scalars, "env1/train_loss")[0] == (3, 2.0)
    assert steps_and_values(scalars, "env0/params")[0] == (3, 1032), "host + fossilized + live seed parameters"
    assert steps_and_values(scalars, "env0/alpha_delta_sq_sum")[0] == (3, 0.0)
    assert [step for step, _ in steps_and_values(scalars, "env0/effective_seed_params")] == [3, 4, 5]
    assert steps_and_values(scalars, "env1/reward") == [(5, 0.5)]
    assert steps_and_values(scalars, "env1/reward/metric_gain") == [(5, 0.75)]
    assert steps_and_values(scalars, "env1/reward/param_rent") == [(5, -0.25)]
    assert steps_and_values(scalars, "policy_loss") == [(5, 0.125)]
    assert steps_and_values(scalars, "round/mean_return") == [(5, 1.5)]
    assert steps_and_values(scalars, "round/final_metric_mean") == [(5, 0.625)]
    assert steps_and_values(scalars, "lifecycle/germinated") == [(5, 2)]
    assert steps_and_values(scalars, "lifecycle/pruned") == [(5, 1)]
    assert steps_and_values(scalars, "lifecycle/fossilized") == [(5, 0)]
    assert steps_and_values(scalars, "governor/rollbacks") == [(5, 0)]
    assert steps_and_values(scalars, "lifecycle/internal_grow") == [(5, 2)]
    assert steps_and_values(scalars, "lifecycle/internal_shrink") == [(5, 1)]
    assert steps_and_values(scalars, "lifecycle/subtarget_disable") == [(5, 2)]
    assert steps_and_values(scalars, "lifecycle/subtarget_enable") == [(5, 1)]
    assert steps_and_values(scalars, "anomalies/exploding") == [(5, 2)]
    assert steps_and_values(scalars, "anomalies/dead_seed") == [(5, 1)]
    assert steps_and_values(scalars, "anomalies/kl_spike") == [(5, 1)]
    assert steps_and_values(scalars, "anomalies/entropy_collapse") == [(5, 0)], "every kind is written, zeros too"


def test_custom_subdir(tmp_path: Path) -> None:
    sink = TensorBoardSink(TensorBoardSinkConfig(subdir="tb"), make_context(tmp_path))
    sink.handle(epoch_completed(0, 0, 0, val_metric=0.5))
    sink.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not (tmp_path / "tensorboard").exists()


def test_resume_hides_what_the_interrupted_attempt_logged_after_the_resume_step(tmp_path: Path) -> None:
    crashed = TensorBoardSink(TensorBoardSinkConfig(), make_context(tmp_path))
    for round_index in range(2):
        for epoch in range(EPISODE_LENGTH):
            crashed.handle(epoch_completed(0, round_index, epoch, val_metric=0.1))
    crashed.close()
    resumed = TensorBoardSink(TensorBoardSinkConfig(), make_context(tmp_path))
    resumed.handle(event(TelemetryEventType.RUN_RESUMED, payloads.RunResumedPayload(round=1, epoch=0, discarded_events=3)))
    for epoch in range(EPISODE_LENGTH):
        resumed.handle(epoch_completed(0, 1, epoch, val_metric=0.9))
    resumed.close()
    values = steps_and_values(read_scalars(tmp_path / "tensorboard"), "env0/val_metric")
    assert values == [(0, 0.1), (1, 0.1), (2, 0.1), (3, 0.9), (4, 0.9), (5, 0.9)]


def test_missing_tensorboard_package_is_one_plugin_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail like an absent package
    for name in [module for module in sys.modules if module.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(PluginError) as raised:
        TensorBoardSink(TensorBoardSinkConfig(), make_context(tmp_path))
    assert str(raised.value) == MISSING_TENSORBOARD
    assert str(raised.value) == (
        "the tensorboard sink needs the 'tensorboard' package: pip install 'esper-sinks[tensorboard]'"
    )
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize("subdir", ["", ".", "a/b"])
def test_subdir_must_be_a_plain_name(subdir: str) -> None:
    with pytest.raises(ValueError, match="plain directory name"):
        TensorBoardSinkConfig(subdir=subdir)
