"""Paired experiments: arms run on the same seeds and data order, are compared, and resume."""

from __future__ import annotations

import json

import pytest

from esper_core.errors import ConfigError, DataError, RunAborted, TrainingUnstable
from esper_core.experiments import (
    COMPARISON_FILE,
    MANIFEST_FILE,
    arm_run_dirs,
    parse_experiment,
    resume_experiment,
    run_experiment,
)
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
