"""Config loading: every problem reported at once with its path; resolved configs round-trip."""

from __future__ import annotations

import pytest

from esper_core.cli import _apply_overrides
from esper_core.config import config_to_dict, load_config, parse_config, write_config
from esper_core.errors import ConfigError
from esper_core.tolaria.engine import prepare


def problems_of(data, manager) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(data, manager)
    return excinfo.value.problems


def test_every_problem_is_reported_at_once_with_its_path(toy_manager, toy_run_data):
    data = toy_run_data(
        run={"envs": 0, "seed": "x", "bogus": 1},
        training={"lr_schedule": "zigzag", "host_lr": -1},
        reward={"metric_weight": "a", "rent_wieght": 1},
        policy={"lr2": 3},
    )
    data["tasks"] = {}
    problems = problems_of(data, toy_manager)
    assert "unknown section [tasks] (did you mean [task]?)" in problems[0]
    for expected in (
        "[run] seed: expected an integer, got 'x'",
        "[run] unknown key 'bogus'",
        "[training] host_lr: must be a finite number > 0, got -1.0",
        "[training] lr_schedule: must be one of constant, cosine, got 'zigzag'",
        "[reward] metric_weight: expected a number, got 'a'",
        "[reward] unknown key 'rent_wieght' (did you mean 'rent_weight'?)",
        "[policy] unknown key 'lr2'",
    ):
        assert expected in problems, expected
    assert "[run] envs: must be >= 1, got 0" in problems  # not hidden by the badly typed seed
    assert len(problems) == 9


def test_range_errors_are_reported_when_types_are_right(toy_manager, toy_run_data):
    problems = problems_of(toy_run_data(run={"envs": 0, "episode_length": 0}), toy_manager)
    assert problems == ["[run] envs: must be >= 1, got 0", "[run] episode_length: must be >= 1, got 0"]


def test_wrong_types_are_not_coerced(toy_manager, toy_run_data):
    problems = problems_of(toy_run_data(run={"rounds": 2.5, "name": 5}, governor={"enabled": 1}), toy_manager)
    assert "[run] rounds: expected an integer, got 2.5" in problems
    assert "[run] name: expected a string, got 5" in problems
    assert "[governor] enabled: expected true or false, got 1" in problems


def test_unknown_plugin_names_are_reported_with_suggestions(toy_manager, toy_run_data):
    data = toy_run_data(task={"name": "toi"}, policy={"name": "scriptd"}, sinks={"memroy": {}})
    data["morphogenesis"]["blueprints"] = ["toy_conv", "nope"]
    problems = problems_of(data, toy_manager)
    assert any(p.startswith("[task] unknown task 'toi' (did you mean 'toy'?)") for p in problems)
    assert any(p.startswith("[policy] unknown policy 'scriptd' (did you mean 'scripted'?)") for p in problems)
    assert any(p.startswith("[sinks.memroy] unknown telemetry sink 'memroy'") for p in problems)
    assert any(p.startswith("[morphogenesis] blueprints: unknown seed family 'nope'") for p in problems)
    assert not any(p.startswith("[host]") for p in problems)  # no cascade from the bad task


def test_nested_plugin_sections_are_structured_into_their_classes(toy_manager, toy_run_data):
    data = toy_run_data(blueprints={"toy_conv": {"hidden": 9}}, host={"channels": 4})
    config = parse_config(data, toy_manager)
    assert config.blueprint_options["toy_conv"].hidden == 9
    assert config.host.name == "toy" and config.host.options.channels == 4  # host defaults to the task's
    assert config.reward.name == "basic"
    bad = toy_run_data(blueprints={"toy_conv": {"hidden": 0, "width": 3}})
    problems = problems_of(bad, toy_manager)
    assert "[blueprints.toy_conv] unknown key 'width'" in problems


def test_fault_points_report_their_index(toy_manager, toy_run_data):
    problems = problems_of(toy_run_data(faults={"host_nan": [{"epoch": 1}, {"round": 1}]}), toy_manager)
    assert problems == ["[faults] host_nan[1].epoch: missing required key 'epoch'"]


def test_malformed_toml_gives_one_line_with_the_position(tmp_path, toy_manager):
    path = tmp_path / "bad.toml"
    path.write_text("[run]\nenvs = = 2\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, toy_manager)
    assert str(excinfo.value).startswith(f"{path}: malformed TOML:")
    assert "line 2" in str(excinfo.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", toy_manager)


def test_resolved_config_round_trips(tmp_path, toy_manager, toy_run_data):
    config = parse_config(toy_run_data(faults={"host_nan": [{"epoch": 2, "env": 1}]}), toy_manager)
    path = tmp_path / "resolved.toml"
    write_config(config, path)
    again = load_config(path, toy_manager)
    assert config_to_dict(again) == config_to_dict(config)
    assert again.faults.host_nan[0].env == 1


def test_prepare_reports_slot_and_blueprint_mismatches(toy_manager, toy_run_data):
    data = toy_run_data(morphogenesis={"slots": ["r0c0", "r9c9"], "max_seeds": 5})
    config = parse_config(data, toy_manager)
    with pytest.raises(ConfigError) as excinfo:
        prepare(config, toy_manager)
    assert any("unknown slot(s) r9c9; this host has r0c0, r0c1, r0c2" in p for p in excinfo.value.problems)
    ok = parse_config(toy_run_data(morphogenesis={"slots": ["r0c2", "r0c0"], "max_seeds": 3}), toy_manager)
    with pytest.raises(ConfigError, match="max_seeds: 3 exceeds the 2 enabled slots"):
        prepare(ok, toy_manager)
    setup = prepare(parse_config(toy_run_data(morphogenesis={"slots": ["r0c2", "r0c0"]}), toy_manager), toy_manager)
    assert setup.slot_config.slot_ids == ("r0c0", "r0c2")  # order comes from the specs, not the config


def test_device_that_is_not_available_is_a_config_error(toy_manager, toy_run_data):
    config = parse_config(toy_run_data(run={"device": "cuda:7"}), toy_manager)
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    with pytest.raises(ConfigError, match=r"\[run\] device"):
        prepare(config, toy_manager)


def test_command_line_overrides_use_toml_values():
    data = {"run": {"envs": 1}}
    out = _apply_overrides(data, ["run.envs=4", "policy.name=heuristic", "training.host_lr=0.1", "run.name=x y"])
    assert out == {"run": {"envs": 4, "name": "x y"}, "policy": {"name": "heuristic"}, "training": {"host_lr": 0.1}}
    with pytest.raises(ConfigError, match="SECTION.KEY=VALUE"):
        _apply_overrides({}, ["novalue"])


def test_a_string_is_not_taken_for_a_list(toy_manager, toy_run_data):
    problems = problems_of(toy_run_data(morphogenesis={"blueprints": "toy_conv"}), toy_manager)
    assert problems == ["[morphogenesis] blueprints: expected an array, got 'toy_conv'"]
    problems = problems_of(toy_run_data(morphogenesis={"slots": ["r0c0", 3]}), toy_manager)
    assert problems == ["[morphogenesis] slots[1]: expected a string, got 3"]


def test_relative_paths_are_made_absolute_so_saved_configs_work_anywhere(toy_manager, toy_run_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config(toy_run_data(run={"output_dir": "out/runs"}), toy_manager)
    assert config.run.output_dir == str(tmp_path / "out" / "runs")
