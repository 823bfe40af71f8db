"""Tolaria end to end on the toy plugin: lifecycle through the engine, governor rollback, checkpoints, resume."""

from __future__ import annotations

import math

import datetime as dt
import json
from pathlib import Path

import pytest
import torch

from esper_core.config import GovernorSection
from esper_core.errors import CheckpointError, RunAborted, TrainingUnstable
from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT, create_run_dir, load_checkpoint
from esper_core.tolaria.engine import resume_run, start_run
from esper_core.tolaria.governor import Governor
from esper_core.testing import comparable, events_of
from tests import toy_plugin

LIFECYCLE_SCRIPT = {
    "1": {"op": 1, "slot": 1, "style": 2, "tempo": 0, "alpha_target": 2},  # GERMINATE r0c1, GATE, 3 blend epochs
    "3": {"op": 2, "slot": 1},  # ADVANCE
    "6": {"op": 5, "slot": 1},  # FOSSILIZE (HOLDING after 3 blend epochs)
}


def test_scripted_lifecycle_runs_through_the_engine(toy_manager, toy_config):
    config = toy_config(policy={"name": "scripted", "script": LIFECYCLE_SCRIPT})
    run_dir = start_run(config, toy_manager)
    for name in ("config.toml", "environment.json", "events.jsonl", "summary.json"):
        assert (run_dir / name).exists(), name
    assert run_dir.name.startswith("toy__toyrun__0__")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "completed"
    assert summary["lifecycle"]["germinated"] == 2  # one per environment
    assert summary["lifecycle"]["blended"] == 2
    assert summary["lifecycle"]["fossilized"] == 2
    records = events_of(run_dir)
    actions = [r["data"] for r in records if r["event"] == "ACTION_TAKEN"]
    assert len(actions) == 2 * 7  # no decision after the final epoch
    assert all(a["success"] for a in actions)
    rewards = [r for r in records if r["event"] == "REWARD_COMPUTED"]
    assert len(rewards) == 2 * 7
    assert {"metric_gain", "rent", "action_cost"} <= set(rewards[0]["data"]["components"])
    fossil = next(r["data"] for r in records if r["event"] == "SEED_FOSSILIZED")
    assert fossil["contribution"] is not None and fossil["alpha"] == 1.0
    last_epoch = [r["data"] for r in records if r["event"] == "EPOCH_COMPLETED"][-1]
    assert last_epoch["fossilized_params"] > 0 and last_epoch["stage_counts"]["FOSSILIZED"] == 1
    # the roadmap's rent and shock proxies: the seed's alpha climbs 0 -> 1 over the blend, once
    env0 = [r["data"] for r in records if r["event"] == "EPOCH_COMPLETED" and r["data"]["env_id"] == 0]
    shocks = [epoch["alpha_delta_sq_sum"] for epoch in env0]
    assert shocks[:3] == [0.0] * 3 and shocks[3:6] == pytest.approx([1 / 9] * 3) and shocks[6:] == [0.0] * 2
    assert sum(shock ** 0.5 for shock in shocks) == pytest.approx(1.0)  # one slot: |steps| add up to 0 -> 1
    assert env0[0]["effective_seed_params"] == 0.0
    assert env0[-1]["effective_seed_params"] == last_epoch["fossilized_params"]
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["seed"] == 0 and env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"]


def test_masked_action_is_executed_as_wait_and_reported_failed(toy_manager, toy_config):
    config = toy_config(policy={"name": "scripted", "script": {"2": {"op": 5, "slot": 0}}})
    run_dir = start_run(config, toy_manager)
    failed = [r["data"] for r in events_of(run_dir) if r["event"] == "ACTION_TAKEN" and not r["data"]["success"]]
    assert len(failed) == 2 and failed[0]["reason"] == "masked: executed as WAIT"
    rewards = [r["data"] for r in events_of(run_dir) if r["event"] == "REWARD_COMPUTED" and r["data"]["epoch"] == 3]
    assert all(r["components"]["action_cost"] < -0.01 for r in rewards)


def test_same_seed_same_events_and_rounds_use_fresh_hosts(toy_manager, toy_config):
    config = toy_config(run={"rounds": 2}, policy={"name": "scripted", "script": LIFECYCLE_SCRIPT})
    first = comparable(events_of(start_run(config, toy_manager)))
    second = comparable(events_of(start_run(config, toy_manager)))
    assert first == second
    epochs = [json.loads(data) for event, data in first if event == "EPOCH_COMPLETED"]
    round0 = [e["train_loss"] for e in epochs if e["round"] == 0 and e["epoch"] == 0]
    round1 = [e["train_loss"] for e in epochs if e["round"] == 1 and e["epoch"] == 0]
    assert round0 != round1
    assert round0[0] != round0[1]  # environments differ within a round


def test_resume_after_abort_gives_the_uninterrupted_result(toy_manager, toy_config):
    script = {"policy": {"name": "scripted", "script": LIFECYCLE_SCRIPT}}
    reference = start_run(toy_config(run={"rounds": 2}, **script), toy_manager)
    aborted_config = toy_config(run={"rounds": 2}, faults={"abort": {"round": 0, "epoch": 4}}, **script)
    created = []
    with pytest.raises(RunAborted, match="resume with: esper run --resume"):
        start_run(aborted_config, toy_manager, on_run_dir=created.append)
    run_dir = created[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "aborted"
    resumed = resume_run(run_dir, toy_manager)
    assert comparable(events_of(resumed)) == comparable(events_of(reference))
    final_a = load_checkpoint(reference / CHECKPOINT_DIR / LATEST_CHECKPOINT)
    final_b = load_checkpoint(resumed / CHECKPOINT_DIR / LATEST_CHECKPOINT)
    assert final_a["round"] == final_b["round"] == 2
    assert torch.equal(final_a["rng"]["torch"], final_b["rng"]["torch"])
    assert json.loads((resumed / "summary.json").read_text())["run"]["status"] == "completed"
    with pytest.raises(CheckpointError, match="already finished"):
        resume_run(resumed, toy_manager)


def test_resume_mid_round_after_a_later_abort_discards_and_keeps_the_cut_events(toy_manager, toy_config):
    config = toy_config(run={"checkpoint_every": 3}, faults={"abort": {"round": 0, "epoch": 4}})
    created = []
    with pytest.raises(RunAborted):
        start_run(config, toy_manager, on_run_dir=created.append)
    run_dir = created[0]
    # the abort forces a checkpoint at epoch 4, so nothing after the checkpoint is lost or duplicated
    resume_run(run_dir, toy_manager)
    records = events_of(run_dir)
    epochs = [(r["data"]["env_id"], r["data"]["epoch"]) for r in records if r["event"] == "EPOCH_COMPLETED"]
    assert len(epochs) == len(set(epochs)) == 2 * 8
    resumed = [r["data"] for r in records if r["event"] == "RUN_RESUMED"]
    assert resumed and resumed[0]["epoch"] == 5


def test_nan_in_the_host_rolls_back_and_the_run_continues(toy_manager, toy_config):
    script = {"1": {"op": 1, "slot": 0}}
    config = toy_config(policy={"name": "scripted", "script": script},
                        faults={"host_nan": [{"epoch": 3, "env": 1}, {"epoch": 0, "env": 0}]})
    toy_plugin.INSTANCES.clear()
    run_dir = start_run(config, toy_manager)
    assert toy_plugin.INSTANCES[0].features_finite == [True] * 7  # observations stay finite after rollbacks
    records = events_of(run_dir)
    rollbacks = [r["data"] for r in records if r["event"] == "GOVERNOR_ROLLBACK"]
    assert len(rollbacks) == 2
    assert rollbacks[0]["env_id"] == 0 and rollbacks[0]["restored_epoch"] == -1  # back to the untrained host
    rollbacks = rollbacks[1:]
    assert rollbacks[0]["env_id"] == 1 and rollbacks[0]["epoch"] == 3 and rollbacks[0]["restored_epoch"] == 2
    assert "non-finite" in rollbacks[0]["reason"] and rollbacks[0]["pruned_slots"] == ["r0c0"]
    pruned = [r["data"] for r in records if r["event"] == "SEED_PRUNED"]
    assert [p["reason"] for p in pruned] == ["rollback"]
    final = [r["data"] for r in records if r["event"] == "EPOCH_COMPLETED" and r["data"]["epoch"] == 7]
    assert all(torch.isfinite(torch.tensor([f["val_loss"], f["train_loss"]])).all() for f in final)
    assert json.loads((run_dir / "summary.json").read_text())["lifecycle"]["governor_rollbacks"] == 2


def test_run_directories_are_never_reused(tmp_path):
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    first = create_run_dir(tmp_path, "task", "name", 3, now=now)
    second = create_run_dir(tmp_path, "task", "name", 3, now=now)
    assert first.name == "task__name__3__20260102-030405"
    assert second.name == first.name + "-2"


def test_corrupt_foreign_and_unsafe_checkpoints_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not written by Esper"):
        load_checkpoint(foreign)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "esper-checkpoint", "version": 1, "payload": Path("/etc")}, unsafe)
    with pytest.raises(CheckpointError, match="unsafe"):
        load_checkpoint(unsafe)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path, toy_manager):
    with pytest.raises(CheckpointError, match="not an Esper run directory"):
        resume_run(tmp_path, toy_manager)


def test_impossible_faults_and_batch_sizes_are_config_errors(toy_manager, toy_config):
    from esper_core.errors import ConfigError
    from esper_core.tolaria.engine import prepare

    config = toy_config(faults={"host_nan": [{"epoch": 8}], "abort": {"epoch": 7}}, training={"batch_size": 500})
    with pytest.raises(ConfigError) as excinfo:
        prepare(config, toy_manager)
    problems = excinfo.value.problems
    assert any("[training] batch_size 500 exceeds the 96 training samples" in p for p in problems)
    assert any(p.startswith("[faults] host_nan: round 0 epoch 8 env 0 never happens") for p in problems)
    assert any(p.startswith("[faults] abort: at the run's very last epoch") for p in problems)


def test_resume_before_the_first_checkpoint_says_to_start_again(toy_manager, toy_config, tmp_path):
    run_dir = start_run(toy_config(), toy_manager)
    (run_dir / "checkpoints" / "latest.pt").unlink()
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint"):
        resume_run(run_dir, toy_manager)


def test_loss_based_tasks_measure_contributions_and_rewards_on_minus_the_log_loss(toy_manager, toy_config, monkeypatch):
    """For score_basis = "loss" a seed helps when removing it raises the validation loss: its
    contribution is ln(loss_without / loss_with) > 0, and metric_gain pays for a falling loss, in
    relative terms (issue 10: returns comparable across image and text tasks)."""
    import attrs

    from tests import toy_plugin as toy

    original = toy.build_toy_task

    def loss_based(config, context):
        task = original(config, context)
        task.info = attrs.evolve(task.info, score_basis="loss")
        return task

    monkeypatch.setattr(toy, "build_toy_task", loss_based)
    manager = type(toy_manager)(autoload=False, extra=[toy])
    script = {"policy": {"name": "scripted", "script": LIFECYCLE_SCRIPT}}
    run_dir = start_run(toy_config(**script), manager)
    records = events_of(run_dir)
    epochs = {(r["data"]["env_id"], r["data"]["epoch"]): r["data"] for r in records if r["event"] == "EPOCH_COMPLETED"}
    for reward in (r["data"] for r in records if r["event"] == "REWARD_COMPUTED"):
        env, epoch = reward["env_id"], reward["epoch"]
        expected = 10.0 * math.log(epochs[(env, epoch - 1)]["val_loss"] / epochs[(env, epoch)]["val_loss"])
        assert reward["components"]["metric_gain"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert TaskInfoCheck.score_of("loss", metric=0.9, loss=0.25) == pytest.approx(math.log(4.0))
    # 1 % lower loss scores 0.01 higher at any loss level, as one accuracy point does
    for loss in (0.3, 2.4, 7.0):
        gain = TaskInfoCheck.score_of("loss", metric=0.0, loss=0.99 * loss) - TaskInfoCheck.score_of("loss", metric=0.0, loss=loss)
        assert gain == pytest.approx(0.01, rel=0.01)
    assert TaskInfoCheck.score_of("metric", metric=0.9, loss=0.25) == 0.9


class TaskInfoCheck:
    @staticmethod
    def score_of(basis, *, metric, loss):
        from esper_core.tasks import TaskInfo

        info = TaskInfo(name="t", topology="image", input_shape=(1,), num_classes=2, metric_name="m",
                        train_size=1, val_size=1, score_basis=basis)
        return info.score(metric, loss)


def test_counterfactual_contribution_sign_for_loss_based_tasks():
    """contribution = score(with) - score(without) = ln(loss(without) / loss(with)) when score_basis = "loss"."""
    import attrs

    from esper_core.config import GovernorSection, TrainingSection
    from esper_core.tasks import TaskContext
    from esper_core.tolaria.environment import Environment
    from tests.conftest import make_model
    from tests.test_kasmina import grow_to_holding

    task = toy_plugin.build_toy_task(toy_plugin.ToyTaskConfig(), TaskContext(device=torch.device("cpu"), seed=0))
    task.info = attrs.evolve(task.info, score_basis="loss")
    model = make_model(seed=1)
    slot = model.slots["r0c1"]
    grow_to_holding(slot)
    with torch.no_grad():
        for parameter in slot.seed.parameters():
            parameter.add_(torch.randn_like(parameter))
    env = Environment(env_id=0, env_seed=1, model=model, task=task, training=TrainingSection(),
                      governor=GovernorSection(), episode_length=5, device=torch.device("cpu"))
    result = env.validate(64)
    slot._set_alpha(0.0)
    without = env.validate(64)
    assert result.contributions["r0c1"] == pytest.approx(math.log(without.loss / result.loss))
    assert (result.contributions["r0c1"] > 0) == (without.loss > result.loss)


def test_an_environment_that_keeps_rolling_back_stops_the_run_with_its_data_kept(toy_manager, toy_config):
    nan_every_epoch = [{"epoch": epoch, "env": 0} for epoch in range(3)]
    config = toy_config(faults={"host_nan": nan_every_epoch}, governor={"max_consecutive_rollbacks": 3})
    created = []
    with pytest.raises(TrainingUnstable, match="environment 0 rolled back 3 epochs in a row .*host_lr"):
        start_run(config, toy_manager, on_run_dir=created.append)
    records = events_of(created[0])
    assert [r["data"]["epoch"] for r in records if r["event"] == "GOVERNOR_ROLLBACK"] == [0, 1, 2]
    finished = [r["data"] for r in records if r["event"] == "RUN_FINISHED"]
    assert finished[-1]["status"] == "failed" and "TrainingUnstable" in finished[-1]["error"]
    assert json.loads((created[0] / "summary.json").read_text())["run"]["status"] == "failed"


def test_two_rollbacks_then_a_healthy_epoch_reset_the_consecutive_count(toy_manager, toy_config):
    faults = [{"epoch": 0, "env": 0}, {"epoch": 1, "env": 0}, {"epoch": 3, "env": 0}, {"epoch": 4, "env": 0}]
    config = toy_config(faults={"host_nan": faults}, governor={"max_consecutive_rollbacks": 3})
    run_dir = start_run(config, toy_manager)
    records = events_of(run_dir)
    assert len([r for r in records if r["event"] == "GOVERNOR_ROLLBACK"]) == 4
    assert [r["data"]["status"] for r in records if r["event"] == "RUN_FINISHED"] == ["completed"]


def test_the_first_finite_loss_after_a_rollback_is_judged_against_the_restored_model():
    """A run of NaN epochs followed by a huge but finite loss must not make that loss the healthy reference."""
    governor = Governor(GovernorSection(divergence_factor=3.0, patience=2))
    assert governor.verdict(float("nan"), float("nan")) is not None
    governor.record_restored(4.5)  # the untrained model's validation loss after the rollback
    assert governor.verdict(1e6, 1.2e12) is None  # first diverging epoch: within patience ...
    assert governor.is_diverging  # ... but not healthy, so no snapshot is taken of it
    assert "above 3.0x the recent best 4.5" in governor.verdict(1e6, 1.3e12)
    governor.record_restored(float("nan"))
    assert list(governor.healthy_losses) == [4.5]


def test_adamw_runs_checkpoints_its_moments_and_resumes_exactly(toy_manager, toy_config):
    script = {"policy": {"name": "scripted", "script": LIFECYCLE_SCRIPT}}
    adamw = {"optimizer": "adamw", "host_lr": 0.01, "seed_lr": 0.01, "betas": [0.8, 0.99]}
    reference = start_run(toy_config(training=adamw, **script), toy_manager)
    created = []
    with pytest.raises(RunAborted):
        start_run(toy_config(training=adamw, faults={"abort": {"round": 0, "epoch": 4}}, **script), toy_manager,
                  on_run_dir=created.append)
    env_state = load_checkpoint(created[0] / CHECKPOINT_DIR / LATEST_CHECKPOINT)["env_states"][0]
    optimizer_state = env_state["host_optimizer"]
    assert optimizer_state["param_groups"][0]["betas"] == (0.8, 0.99)
    assert all("exp_avg_sq" in moments for moments in optimizer_state["state"].values())
    resumed = resume_run(created[0], toy_manager)
    assert comparable(events_of(resumed)) == comparable(events_of(reference))


def test_warmup_ramps_the_learning_rate_per_step_and_resumes_exactly(toy_manager, toy_config):
    training = {"warmup_steps": 1000, "host_lr": 0.1, "lr_schedule": "constant"}
    created = []
    with pytest.raises(RunAborted):
        start_run(toy_config(training=training, faults={"abort": {"round": 0, "epoch": 0}}), toy_manager,
                  on_run_dir=created.append)
    env_state = load_checkpoint(created[0] / CHECKPOINT_DIR / LATEST_CHECKPOINT)["env_states"][0]
    steps = env_state["episode_steps"]
    assert steps > 1
    assert env_state["host_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * steps / 1000)

    script = {"policy": {"name": "scripted", "script": LIFECYCLE_SCRIPT}}
    short = {"warmup_steps": steps + 2, "host_lr": 0.1}  # the warm-up ends inside epoch 1, after the abort point
    reference = start_run(toy_config(training=short, **script), toy_manager)
    created = []
    with pytest.raises(RunAborted):
        start_run(toy_config(training=short, faults={"abort": {"round": 0, "epoch": 0}}, **script), toy_manager,
                  on_run_dir=created.append)
    assert comparable(events_of(resume_run(created[0], toy_manager))) == comparable(events_of(reference))
    plain = start_run(toy_config(training={"host_lr": 0.1}, **script), toy_manager)
    assert comparable(events_of(plain)) != comparable(events_of(reference))  # the warm-up changed training


def test_step_clock_sums_wall_time_on_cpu_and_resets():
    from esper_core.tolaria.environment import StepClock

    clock = StepClock(torch.device("cpu"))
    clock.start()
    sum(range(20000))
    clock.stop()
    first = clock.seconds
    assert first > 0.0
    assert clock.seconds == first  # reading does not add time
    clock.reset()
    assert clock.seconds == 0.0
    with pytest.raises(RuntimeError, match="without start"):
        clock.stop()


def test_step_clock_on_cuda_sums_event_times_not_launch_times(monkeypatch):
    """On CUDA the clock reads kernel time from timing events, synchronising once when read."""
    from esper_core.tolaria import environment

    synchronised = []

    class FakeEvent:
        count = 0

        def __init__(self, enable_timing: bool) -> None:
            assert enable_timing
            FakeEvent.count += 1
            self.index = FakeEvent.count

        def record(self) -> None:
            pass

        def synchronize(self) -> None:
            synchronised.append(self.index)

        def elapsed_time(self, end) -> float:  # milliseconds, like torch.cuda.Event
            return 250.0 * (end.index - self.index)

    monkeypatch.setattr(environment.torch.cuda, "Event", FakeEvent)
    clock = environment.StepClock(torch.device("cuda"))
    for _ in range(3):
        clock.start()
        clock.stop()
    assert synchronised == []  # nothing waits on the GPU until the total is read
    assert clock.seconds == pytest.approx(0.75)
    assert synchronised == [6]
    assert clock.seconds == pytest.approx(0.75)


def test_checkpoint_state_is_typed_and_round_trips_through_the_converter(toy_manager, toy_config):
    """Checkpoints hold typed records (EngineCheckpoint > EnvironmentState > GovernorState, PendingDecision,
    FactoredAction) unstructured by one converter; structuring and unstructuring again changes nothing."""
    import attrs

    from esper_core.leyline import FactoredAction
    from esper_core.tolaria.environment import EnvironmentState, PendingDecision
    from esper_core.tolaria.governor import GovernorState
    from esper_core.tolaria.state import EngineCheckpoint, checkpoint_from_dict, checkpoint_to_dict

    script = {"policy": {"name": "scripted", "script": LIFECYCLE_SCRIPT}}
    created = []
    with pytest.raises(RunAborted):
        start_run(toy_config(faults={"abort": {"round": 0, "epoch": 4}}, **script), toy_manager,
                  on_run_dir=created.append)
    path = created[0] / CHECKPOINT_DIR / LATEST_CHECKPOINT
    payload = load_checkpoint(path)
    checkpoint = checkpoint_from_dict(payload, path)
    assert isinstance(checkpoint, EngineCheckpoint) and (checkpoint.round, checkpoint.epoch) == (0, 5)
    env = checkpoint.env_states[0]
    assert isinstance(env, EnvironmentState) and isinstance(env.governor, GovernorState)
    assert isinstance(env.pending, PendingDecision) and isinstance(env.last_action, FactoredAction)
    assert set(payload["env_states"][0]) == {field.name for field in attrs.fields(EnvironmentState)}
    again = checkpoint_to_dict(checkpoint)
    assert set(again) == set(payload) - {"format", "version"}
    first, second = payload["env_states"][0], again["env_states"][0]
    for key in ("metric_history", "train_loss_history", "last_action", "pending", "epoch_alphas", "model_lifecycle"):
        assert first[key] == second[key], key
    assert first["host_optimizer"] is second["host_optimizer"]  # torch's own state dicts pass through untouched
    assert all(torch.equal(first["model_weights"][k], second["model_weights"][k]) for k in first["model_weights"])
    assert checkpoint.events.lines == sum(1 for _ in open(created[0] / "events.jsonl")) - 1  # RUN_FINISHED after it


def test_a_cuda_index_beyond_the_machines_devices_is_one_config_error(monkeypatch):
    from esper_core.errors import ConfigError
    from esper_core.tolaria.engine import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"'cuda:2' requested but this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
