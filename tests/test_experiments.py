"""Paired experiments: arms run on the same seeds and data order, are compared, and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from esper_core.errors import ConfigError, DataError, RunAborted, TrainingUnstable
from esper_core.experiments import (
    COMPARISON_FILE,
    COMPARISON_ROWS,
    MANIFEST_FILE,
    arm_metrics,
    arm_run_dirs,
    comparison_table,
    parse_experiment,
    plot_comparison,
    resume_experiment,
    run_experiment,
    surviving_fossils,
)
from esper_core.leyline import TelemetryEvent, TelemetryEventType
from esper_core.leyline import telemetry as payloads
from esper_core.leyline.telemetry import event_to_json
from esper_core.telemetry.report import read_events

SCRIPT = {"1": {"op": 1, "slot": 0, "alpha_target": 2}, "3": {"op": 2, "slot": 0}}


def experiment_data(toy_run_data, **arm_sets):
    data = toy_run_data(policy={"name": "scripted", "script": SCRIPT})
    data["experiment"] = {
        "name": "pair",
        "arms": [{"name": name, "set": values} for name, values in arm_sets.items()],
    }
    return data


def epochs(run_dir):
    return [
        (r["data"]["env_id"], r["data"]["epoch"], r["data"]["train_loss"], r["data"]["val_metric"])
        for r in read_events(run_dir / "events.jsonl")
        if r["event"] == "EPOCH_COMPLETED"
    ]


def test_arms_are_paired_and_compared(toy_manager, toy_run_data):
    data = experiment_data(toy_run_data, shaped={"reward.name": "shaped"}, basic={"reward.name": "basic"})
    data["experiment"]["heavy_seed_families"] = ["toy_conv"]
    exp_dir = run_experiment(data, toy_manager)
    assert (exp_dir / "comparison.png").stat().st_size > 10_000
    runs = arm_run_dirs(exp_dir)
    assert set(runs) == {"basic", "shaped"}
    # same seeds, same data order, same scripted decisions: only the reward differs
    assert epochs(runs["basic"]) == epochs(runs["shaped"])
    rewards = {
        name: [r["data"]["components"] for r in read_events(run / "events.jsonl") if r["event"] == "REWARD_COMPUTED"]
        for name, run in runs.items()
    }
    assert "attribution" in rewards["shaped"][0] and "attribution" not in rewards["basic"][0]
    comparison = json.loads((exp_dir / COMPARISON_FILE).read_text())
    assert list(comparison["arms"]) == ["shaped", "basic"]  # the declared order, not the alphabetical one
    for name, arm in comparison["arms"].items():
        assert arm["run_dir"] == str(runs[name])
        assert arm["status"] == "completed"
        assert arm["germinated"] == 2 and arm["final_metric"] is not None
        assert arm["accuracy_per_rent"] <= arm["final_metric"]
        assert arm["heavy_share"] == 1.0 and arm["internal_op_rate"] == 0.0
        assert arm["surface_usage"] == {"segment_boundary": 2} and arm["slot_usage"] == {"r0c0": 2}
        final_losses = [
            r["data"]["val_loss"] for r in read_events(runs[name] / "events.jsonl")
            if r["event"] == "EPOCH_COMPLETED" and r["data"]["epoch"] == 7
        ]
        assert arm["final_val_loss"] == pytest.approx(sum(final_losses) / len(final_losses))
        assert arm["val_loss_times_rent"] >= arm["final_val_loss"]
        episode_returns = [
            r["data"]["mean_return"] for r in read_events(runs[name] / "events.jsonl")
            if r["event"] == "ROUND_COMPLETED"
        ]  # per environment's episode, like every other return Esper reports
        assert arm["mean_return"] == pytest.approx(sum(episode_returns) / len(episode_returns))
    assert (exp_dir / "experiment.toml").exists()


def test_arm_settings_are_validated_with_the_arm_named(toy_manager, toy_run_data):
    data = experiment_data(toy_run_data, good={"reward.name": "basic"}, bad={"reward.name": "fancy", "run.envs": 0})
    with pytest.raises(ConfigError) as excinfo:
        parse_experiment(data, toy_manager)
    problems = excinfo.value.problems
    assert any(p.startswith("[experiment] arm 'bad': [run] envs: must be >= 1") for p in problems)
    assert any(p.startswith("[experiment] arm 'bad': [reward] unknown reward 'fancy'") for p in problems)
    assert not any("arm 'good'" in p for p in problems)
    one_arm = experiment_data(toy_run_data, only={})
    with pytest.raises(ConfigError, match="arms"):
        parse_experiment(one_arm, toy_manager)


def test_an_arm_that_only_fails_at_start_is_refused_before_any_arm_runs(toy_manager, toy_run_data, tmp_path):
    from esper_core.experiments import create_experiment, run_experiment

    data = experiment_data(toy_run_data, good={}, late={"training.batch_size": 100_000})
    with pytest.raises(ConfigError) as excinfo:
        run_experiment(data, toy_manager)
    assert [p for p in excinfo.value.problems if p.startswith("[experiment] arm 'late': [training] batch_size 100000")]
    assert not any("arm 'good'" in p for p in excinfo.value.problems)
    output = Path(data["run"]["output_dir"])
    assert not output.exists() or not any(output.iterdir())  # no experiment directory, no arm run
    with pytest.raises(ConfigError, match="arm 'late'"):
        create_experiment(data, toy_manager)


def test_an_interrupted_experiment_resumes_where_it_stopped(toy_manager, toy_run_data):
    data = experiment_data(
        toy_run_data, first={"reward.name": "basic"}, second={"reward.name": "shaped", "faults.abort": {"epoch": 3}}
    )
    created = []
    with pytest.raises(RunAborted):
        run_experiment(data, toy_manager, on_dir=created.append)
    exp_dir = created[0]
    runs_before = arm_run_dirs(exp_dir)
    first_events = (runs_before["first"] / "events.jsonl").read_text()
    # the abort fires after epoch 3's checkpoint, so resuming starts at epoch 4 and does not fire again
    resume_experiment(exp_dir, toy_manager)
    runs_after = arm_run_dirs(exp_dir)
    assert runs_after == runs_before  # no arm was started again
    assert (runs_after["first"] / "events.jsonl").read_text() == first_events  # the finished arm is untouched
    comparison = json.loads((exp_dir / COMPARISON_FILE).read_text())
    assert {arm["status"] for arm in comparison["arms"].values()} == {"completed"}


def test_an_unstable_arm_is_reported_and_the_other_arms_still_run(toy_manager, toy_run_data):
    nan_every_epoch = [{"epoch": epoch, "env": env} for epoch in range(8) for env in range(2)]
    data = experiment_data(
        toy_run_data,
        unstable={"faults.host_nan": nan_every_epoch, "governor.max_consecutive_rollbacks": 2},
        stable={},
    )
    created = []
    with pytest.raises(TrainingUnstable, match="1 arm\\(s\\) stopped: arm 'unstable': environment 0 rolled back 2"):
        run_experiment(data, toy_manager, on_dir=created.append)
    comparison = json.loads((created[0] / COMPARISON_FILE).read_text())
    assert comparison["arms"]["unstable"]["status"] == "failed"
    assert comparison["arms"]["stable"]["status"] == "completed"


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["a b", "a-b"], "arm names 'a b', 'a-b' cannot be told apart in run directory names (all become 'a-b')"),
        (["Fast", "fast"], "arm names 'Fast', 'fast' cannot be told apart"),
        (["!!", "??"], "(all become 'run')"),
        (["x__y", "x"], "arm name 'x__y' contains '__', which separates the parts of run directory names"),
        (["same", "same"], "arm name 'same' is given 2 times; arm names must be unique"),
    ],
)
def test_arm_names_that_run_directories_cannot_tell_apart_are_rejected(toy_manager, toy_run_data, names, expected):
    data = toy_run_data(policy={"name": "scripted", "script": SCRIPT})
    data["experiment"] = {"name": "pair", "arms": [{"name": name, "set": {}} for name in names]}
    with pytest.raises(ConfigError) as excinfo:
        parse_experiment(data, toy_manager)
    assert any(expected in problem for problem in excinfo.value.problems), excinfo.value.problems


def test_arms_are_found_through_the_experiment_record_and_a_finished_experiment_resumes_to_nothing(
    toy_manager, toy_run_data
):
    data = experiment_data(toy_run_data, **{"basic arm": {"reward.name": "basic"}, "shaped": {"reward.name": "shaped"}})
    exp_dir = run_experiment(data, toy_manager)
    record = json.loads((exp_dir / MANIFEST_FILE).read_text())
    assert [arm["name"] for arm in record["arms"]] == ["basic arm", "shaped"]
    runs = arm_run_dirs(exp_dir)
    assert list(runs) == ["basic arm", "shaped"]
    assert runs["basic arm"].name.split("__")[1] == "basic-arm", "the directory name is a slug; the record keeps the name"
    comparison = json.loads((exp_dir / COMPARISON_FILE).read_text())
    assert list(comparison["arms"]) == ["basic arm", "shaped"]
    before = {path: path.stat().st_mtime_ns for path in exp_dir.rglob("events.jsonl")}
    resume_experiment(exp_dir, toy_manager)
    after = {path: path.stat().st_mtime_ns for path in exp_dir.rglob("events.jsonl")}
    assert after == before, "resuming a completed experiment starts no run and touches no run's record"
    assert sorted(p.name for p in exp_dir.iterdir() if p.is_dir()) == sorted(run.name for run in runs.values())
    assert list(json.loads((exp_dir / COMPARISON_FILE).read_text())["arms"]) == ["basic arm", "shaped"]


def test_an_experiment_without_its_record_is_refused_with_one_line(toy_manager, toy_run_data):
    exp_dir = run_experiment(experiment_data(toy_run_data, one={}, two={"reward.name": "shaped"}), toy_manager)
    (exp_dir / MANIFEST_FILE).unlink()
    with pytest.raises(DataError, match="has no experiment.json, so its arms cannot be identified"):
        resume_experiment(exp_dir, toy_manager)
    (exp_dir / MANIFEST_FILE).write_text('{"format": "esper-experiment", "version": 1, "name": "pair"}')
    with pytest.raises(DataError, match="is not an Esper experiment record: required field missing @ \\$.heavy_seed_families"):
        arm_run_dirs(exp_dir)


# -- Phase 2 comparison metrics, from a synthetic record ------------------------------------------

HOST_PARAMS = 1000


def record(*payload_events):
    """Typed events from ``(event type, payload)`` pairs."""
    return [TelemetryEvent(kind, payload) for kind, payload in payload_events]


def run_started(episode_length=6):
    return (TelemetryEventType.RUN_STARTED, payloads.RunStartedPayload(
        run_name="phase2", run_dir="/runs/phase2", task="shapes", host="cnn", policy="heuristic", reward="basic",
        seed=0, rounds=1, envs=2, episode_length=episode_length, slots=("r0c3", "r0c4"), blueprints=("ladder",),
        host_params=HOST_PARAMS, device="cpu", slot_surfaces=("pre_pool", "post_pool"), score_basis="metric",
        torch_threads=1,
    ))


def epoch_done(env_id, epoch, seed_params=0, fossilized_params=0):
    return (TelemetryEventType.EPOCH_COMPLETED, payloads.EpochCompletedPayload(
        env_id=env_id, round=0, epoch=epoch, train_loss=1.0, val_loss=1.0, val_metric=0.5, host_params=HOST_PARAMS,
        seed_params=seed_params, fossilized_params=fossilized_params, stage_counts={}, train_seconds=0.1,
        validate_seconds=0.1, effective_seed_params=float(seed_params), alpha_delta_sq_sum=0.0,
    ))


def seed(env_id, seed_id, slot_id):
    return {"env_id": env_id, "round": 0, "seed_id": seed_id, "slot_id": slot_id, "blueprint_id": "ladder"}


def germinated(epoch, level, **ids):
    return (TelemetryEventType.SEED_GERMINATED, payloads.SeedGerminatedPayload(
        epoch=epoch, style="ADD", alpha_target=1.0, seed_params=100 * level, built_params=400,
        internal_level=level, internal_effective_params=100 * level, **ids))


def level_changed(epoch, from_level, to_level, **ids):
    return (TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED, payloads.SeedInternalLevelChangedPayload(
        epoch=epoch, from_level=from_level, to_level=to_level, internal_effective_params=100 * to_level, **ids))


def fossilized(epoch, level, **ids):
    return (TelemetryEventType.SEED_FOSSILIZED, payloads.SeedFossilizedPayload(
        epoch=epoch, seed_params=100 * level, alpha=1.0, contribution=0.02, seed_age_epochs=3, internal_level=level,
        internal_effective_params=100 * level, **ids))


def pruned(epoch, reason, **ids):
    return (TelemetryEventType.SEED_PRUNED, payloads.SeedPrunedPayload(
        epoch=epoch, reason=reason, contribution=None, seed_age_epochs=2, **ids))


def finished():
    return [
        (TelemetryEventType.ROUND_COMPLETED, payloads.RoundCompletedPayload(
            round=0, final_metrics=(0.6, 0.7), final_params=(HOST_PARAMS + 200, HOST_PARAMS + 100))),
        (TelemetryEventType.RUN_FINISHED, payloads.RunFinishedPayload(status="completed", rounds_completed=1, wall_seconds=1.0)),
    ]


def ladder_record():
    """Two environments, one round of 6 epochs, a pre_pool slot (r0c3) and a post_pool slot (r0c4):

    - A (env 0, pre_pool): germinated at level 1 at epoch 0, grown to 2 at 1, pruned by the policy at 2 (overshoot);
    - B (env 1, post_pool): germinated at level 2 at 0, shrunk to 1 at 1, fossilized at 2 (survives);
    - D (env 0, post_pool): germinated at level 1 at 1, grown to 2 at 2, pruned by a rollback at 3 (not an overshoot);
    - C (env 1, pre_pool): germinated at 2 without a ladder (level 0), still live at the end;
    - E (env 0, pre_pool): germinated at 4 without a ladder, pruned by a gate at 5.
    The levels the live ladder seeds train at: epoch 1 A 1, B 2; epoch 2 A 2, D 1, B 1; epoch 3 D 2.
    """
    a, b, c = seed(0, "A", "r0c3"), seed(1, "B", "r0c4"), seed(1, "C", "r0c3")
    d, e = seed(0, "D", "r0c4"), seed(0, "E", "r0c3")
    return record(
        run_started(),
        epoch_done(0, 0), epoch_done(1, 0),
        germinated(0, 1, **a), germinated(0, 2, **b),
        epoch_done(0, 1, seed_params=100), epoch_done(1, 1, seed_params=200),
        level_changed(1, 1, 2, **a), germinated(1, 1, **d), level_changed(1, 2, 1, **b),
        epoch_done(0, 2, seed_params=300), epoch_done(1, 2, seed_params=100),
        pruned(2, "policy", **a), level_changed(2, 1, 2, **d), fossilized(2, 1, **b), germinated(2, 0, **c),
        epoch_done(0, 3, seed_params=200), epoch_done(1, 3, seed_params=50, fossilized_params=100),
        (TelemetryEventType.GOVERNOR_ROLLBACK, payloads.GovernorRollbackPayload(
            env_id=0, round=0, epoch=3, reason="loss_spike", loss=9.0, restored_epoch=2, pruned_slots=("r0c4",))),
        pruned(3, "rollback", **d),
        epoch_done(0, 4), epoch_done(1, 4, seed_params=50, fossilized_params=100),
        germinated(4, 0, **e),
        epoch_done(0, 5, seed_params=50), epoch_done(1, 5, seed_params=50, fossilized_params=100),
        pruned(5, "gate_g2", **e),
        *finished(),
    )


def write_record(run_dir, events):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "events.jsonl").write_text("".join(event_to_json(event) + "\n" for event in events), encoding="utf-8")
    return run_dir


def test_phase2_metrics_of_a_record_with_ladder_seeds_on_two_surfaces(tmp_path):
    arm = arm_metrics(write_record(tmp_path / "ladder", ladder_record()), heavy_seed_families=("ladder",))
    assert arm["germinated"] == 5 and arm["fossilized"] == 1 and arm["pruned"] == 3 and arm["rollbacks"] == 1
    assert arm["surface_usage"] == {"post_pool": 2, "pre_pool": 3}
    assert arm["surface_fossils"] == {"post_pool": 1, "pre_pool": 0}  # B; a surface without fossils shows 0
    assert arm["overshoot_prunes"] == 1  # A; D was grown but removed by a rollback, E never grew
    assert arm["overshoot_prune_rate"] == pytest.approx(1 / 5)
    assert arm["fossilize_prune_ratio"] == pytest.approx(1 / 3) and arm["prune_fossil_ratio"] == pytest.approx(3.0)
    assert arm["level_time_series"] == [[1, 1.5, 2], [2, pytest.approx(4 / 3), 3], [3, 2.0, 1]]
    sizes = [0, 0, 100, 200, 300, 100, 200, 150, 0, 150, 50, 150]  # seeds + fossils of the twelve epochs
    assert arm["mean_params_in_use"] == pytest.approx(HOST_PARAMS + sum(sizes) / len(sizes))
    assert arm["internal_grows"] == 2 and arm["internal_shrinks"] == 1 and arm["heavy_share"] == 1.0
    table = comparison_table({"arms": {"ladder": arm}})
    rows = {row[0]: row[1] for row in table[1:]}
    assert table[0] == ["metric", "ladder"] and len(table) == len(COMPARISON_ROWS) + 1
    assert rows["surviving fossils per surface"] == "post_pool 1, pre_pool 0"
    assert rows["prunes after overshoot (rate)"] == "1 (0.20)"
    assert rows["fossilize / prune ratio"] == "0.33"
    assert rows["mean ladder level (step:level)"] == "1:1.50 2:1.33 3:2.00"
    assert rows["mean params in use"] == f"{HOST_PARAMS + sum(sizes) / len(sizes):,.0f}"


def test_phase2_metrics_are_zero_or_none_without_seeds(tmp_path):
    events = record(run_started(), *(epoch_done(env, epoch) for epoch in range(6) for env in (0, 1)), *finished())
    arm = arm_metrics(write_record(tmp_path / "bare", events))
    assert arm["germinated"] == 0 and arm["surface_usage"] == {} and arm["surface_fossils"] == {}
    assert arm["overshoot_prunes"] == 0 and arm["overshoot_prune_rate"] is None
    assert arm["fossilize_prune_ratio"] is None and arm["level_time_series"] == []
    assert arm["mean_params_in_use"] == HOST_PARAMS
    rows = {row[0]: row[1] for row in comparison_table({"arms": {"bare": arm}})[1:]}
    assert rows["prunes after overshoot (rate)"] == "0 (-)" and rows["fossilize / prune ratio"] == "-"
    assert rows["mean ladder level (step:level)"] == "-" and rows["surviving fossils per surface"] == "-"


def test_a_fossil_removed_later_does_not_survive():
    b = seed(1, "B", "r0c4")
    events = record(run_started(), germinated(0, 1, **b), fossilized(2, 1, **b), pruned(3, "rollback", **b))
    assert surviving_fossils(events) == []
    assert surviving_fossils(events[:3]) == ["r0c4"]


def test_the_comparison_plot_draws_phase2_arms(tmp_path):
    ladder = write_record(tmp_path / "ladder", ladder_record())
    bare = write_record(tmp_path / "bare", record(run_started(), epoch_done(0, 0), *finished()))
    comparison = {"experiment": "phase2", "arms": {"ladder": arm_metrics(ladder), "bare": arm_metrics(bare)}}
    json.dumps(comparison)  # what compare() writes must be JSON
    path = plot_comparison(tmp_path, comparison)
    assert path.stat().st_size > 10_000


def test_the_mean_level_is_drawn_over_the_epoch_it_was_trained_at_with_gaps_left_open():
    from esper_core.experiments import _level_segments

    xs, ys = _level_segments([[1, 1.5, 2], [2, 1.0, 1], [5, 3.0, 1]])
    assert xs[:4] == [0, 1, 1, 2] and ys[:4] == [1.5, 1.5, 1.0, 1.0]
    assert math.isnan(xs[4]) and math.isnan(ys[4])  # no live ladder seed at steps 3 and 4
    assert xs[5:] == [4, 5] and ys[5:] == [3.0, 3.0]
