"""Config loading: every problem reported at once with its path; resolved configs round-trip."""

from __future__ import annotations

import math

import attrs
import hypothesis
import pytest
from hypothesis import strategies as st

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
    data["morphogenesis"]["seed_families"] = ["toy_conv", "nope"]
    problems = problems_of(data, toy_manager)
    assert any(p.startswith("[task] unknown task 'toi' (did you mean 'toy'?)") for p in problems)
    assert any(p.startswith("[policy] unknown policy 'scriptd' (did you mean 'scripted'?)") for p in problems)
    assert any(p.startswith("[sinks.memroy] unknown telemetry sink 'memroy'") for p in problems)
    assert any(p.startswith("[morphogenesis] seed_families: unknown seed family 'nope'") for p in problems)
    assert not any(p.startswith("[host]") for p in problems)  # no cascade from the bad task


def test_nested_plugin_sections_are_structured_into_their_classes(toy_manager, toy_run_data):
    data = toy_run_data(seed_families={"toy_conv": {"hidden": 9}}, host={"channels": 4})
    config = parse_config(data, toy_manager)
    assert config.seed_family_options["toy_conv"].hidden == 9
    assert config.host.name == "toy" and config.host.options.channels == 4  # host defaults to the task's
    assert config.reward.name == "basic"
    bad = toy_run_data(seed_families={"toy_conv": {"hidden": 0, "width": 3}})
    problems = problems_of(bad, toy_manager)
    assert "[seed_families.toy_conv] unknown key 'width'" in problems


def test_keys_renamed_in_0_2_0_are_errors_that_name_the_new_key(toy_manager, toy_run_data):
    data = toy_run_data(
        blueprints={"toy_conv": {"hidden": 9}},
        morphogenesis={"blueprints": ["toy_conv"], "implants": [{"slot": "r0c1", "blueprint": "toy_conv"}]},
    )
    assert problems_of(data, toy_manager) == [
        "section [blueprints] was renamed to [seed_families] in 0.2.0 (write [seed_families.NAME])",
        "[morphogenesis] 'blueprints' was renamed to 'seed_families' in 0.2.0",
        "[morphogenesis] implants[0]: 'blueprint' was renamed to 'seed_family' in 0.2.0",
    ]


def test_the_heuristic_and_experiment_keys_renamed_in_0_2_0_name_the_new_key():
    from esper_core.config import structure_section
    from esper_core.experiments import ExperimentSection
    from esper_heuristic import HeuristicConfig

    _config, problems = structure_section({"blueprints": ["a"], "blueprint_cooldown_epochs": 3}, HeuristicConfig, "policy")
    assert problems == [
        "[policy] 'blueprints' was renamed to 'seed_families' in 0.2.0",
        "[policy] 'blueprint_cooldown_epochs' was renamed to 'seed_family_cooldown_epochs' in 0.2.0",
    ]
    arms = [{"name": "a"}, {"name": "b"}]
    _section, problems = structure_section(
        {"name": "x", "arms": arms, "heavy_blueprints": ["a"]}, ExperimentSection, "experiment"
    )
    assert problems == ["[experiment] 'heavy_blueprints' was renamed to 'heavy_seed_families' in 0.2.0"]


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


def test_prepare_reports_slot_and_seed_family_mismatches(toy_manager, toy_run_data):
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
    problems = problems_of(toy_run_data(morphogenesis={"seed_families": "toy_conv"}), toy_manager)
    assert problems == ["[morphogenesis] seed_families: expected an array, got 'toy_conv'"]
    problems = problems_of(toy_run_data(morphogenesis={"slots": ["r0c0", 3]}), toy_manager)
    assert problems == ["[morphogenesis] slots[1]: expected a string, got 3"]


def test_relative_paths_are_made_absolute_so_saved_configs_work_anywhere(toy_manager, toy_run_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config(toy_run_data(run={"output_dir": "out/runs"}), toy_manager)
    assert config.run.output_dir == str(tmp_path / "out" / "runs")


# -- non-finite numbers, devices, unreadable files, qualified names, default sinks -----------------


def test_non_finite_numbers_are_rejected_with_the_key(toy_manager, toy_run_data):
    data = _apply_overrides(toy_run_data(), ["training.host_lr=inf", "reward.metric_weight=inf", "training.seed_lr=nan"])
    problems = problems_of(data, toy_manager)
    assert "[training] host_lr: must be a finite number > 0, got inf" in problems
    assert "[training] seed_lr: must be a finite number > 0, got nan" in problems
    assert "[reward] metric_weight: must be a finite number >= 0, got inf" in problems
    problems = problems_of(toy_run_data(training={"betas": [0.9, float("nan")]}), toy_manager)
    assert problems == ["[training] betas: must be two finite numbers in [0, 1), got [0.9, nan]"]
    problems = problems_of(toy_run_data(governor={"divergence_factor": float("inf")}), toy_manager)
    assert problems == ["[governor] divergence_factor: must be a finite number > 1, got inf"]


def test_a_validator_error_outside_the_shared_set_is_shown_as_written():
    import attrs

    from esper_core.config import structure_section

    def odd(_instance, attribute, value):
        if value == 3:
            raise ValueError(f"'{attribute.name}' may not be three")

    @attrs.frozen
    class Options:
        count: int = attrs.field(default=1, validator=odd)

    assert structure_section({"count": 3}, Options, "policy") == (None, ["[policy] count: may not be three"])


@pytest.mark.parametrize("device", ["meta", "foo", "cpu:-1", "xla", ""])
def test_a_device_torch_cannot_train_on_is_rejected_at_validation(toy_manager, toy_run_data, device):
    problems = problems_of(toy_run_data(run={"device": device}), toy_manager)
    assert problems == [f"[run] device: must be a device of type cpu, cuda, mps (e.g. 'cpu', 'cuda', 'cuda:1'), "
                        f"got {device!r}"]


def test_counts_are_bounded_before_anything_overflows_or_allocates(toy_manager, toy_run_data):
    huge = 10**20  # TOML integers reach Python unbounded
    problems = problems_of(toy_run_data(run={"seed": 2**63, "envs": huge, "torch_threads": huge}), toy_manager)
    assert problems == [
        f"[run] seed: must be <= {2**63 - 1}, got {2**63}",
        f"[run] envs: must be <= 1024, got {huge}",
        f"[run] torch_threads: must be <= 1024, got {huge}",
    ]


def _one_line(excinfo, path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_directory_as_config_is_one_line(tmp_path, toy_manager):
    folder = tmp_path / "config.toml"
    folder.mkdir()
    with pytest.raises(ConfigError) as excinfo:
        load_config(folder, toy_manager)
    assert _one_line(excinfo, folder) == f"{folder}: is a directory, not a TOML config file"


@pytest.mark.parametrize("content", [b"\x00\x01\xff\xfe\x89PNG binary", b'[run]\nname = "caf\xe9"\n'])
def test_binary_or_non_utf8_config_is_one_line(tmp_path, toy_manager, content):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, toy_manager)
    assert "is not UTF-8 text" in _one_line(excinfo, path)


def test_unreadable_config_is_one_line(tmp_path, toy_manager, monkeypatch):
    import esper_core.config

    path = tmp_path / "secret.toml"
    path.write_text("[run]\n")

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(esper_core.config, "open", refuse, raising=False)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, toy_manager)
    assert _one_line(excinfo, path) == f"{path}: cannot be read: Permission denied"


def test_deeply_nested_toml_is_one_line(tmp_path, toy_manager):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, toy_manager)
    assert "malformed TOML" in _one_line(excinfo, path)


class _ClashingRewards:
    """A plugin registering a reward called ``basic``, as the core does."""

    __name__ = "clasher"

    @attrs.frozen
    class Options:
        weight: float = 1.0

    from esper_core import hookimpl

    @hookimpl
    def esper_register_rewards(self, register) -> None:
        from esper_core.registry import RewardKind
        from esper_core.simic import BasicReward

        register(RewardKind(name="basic", build=BasicReward, config_class=self.Options))


def test_qualified_names_pick_between_plugins_that_register_the_same_name(toy_run_data):
    from esper_core.plugins import PluginManager
    from tests import toy_plugin

    manager = PluginManager(autoload=False, extra=[toy_plugin, _ClashingRewards()])
    problems = problems_of(toy_run_data(reward={"name": "basic"}), manager)
    assert len(problems) == 1 and "'esper_core:basic'" in problems[0] and "'clasher:basic'" in problems[0]
    core = parse_config(toy_run_data(reward={"name": "esper_core:basic", "rent_weight": 0.25}), manager)
    assert core.reward.name == "esper_core:basic" and core.reward.options.rent_weight == 0.25
    theirs = parse_config(toy_run_data(reward={"name": "clasher:basic", "weight": 2.0}), manager)
    assert theirs.reward.options == _ClashingRewards.Options(weight=2.0)
    # a name only one plugin registers works plain and qualified, in every place config names one
    data = toy_run_data(task={"name": "tests.toy_plugin:toy"}, reward={"name": "esper_core:basic"})
    data["sinks"] = {"tests.toy_plugin:memory": {}}
    data["morphogenesis"]["seed_families"] = ["tests.toy_plugin:toy_conv"]
    config = parse_config(data, manager)
    assert config.task.name == "tests.toy_plugin:toy" and config.host.name == "toy"
    assert list(config.sinks) == ["tests.toy_plugin:memory"]
    # one item under two spellings is one item named twice
    data["sinks"] = {"memory": {}, "tests.toy_plugin:memory": {}}
    data["morphogenesis"]["seed_families"] = ["toy_conv", "tests.toy_plugin:toy_conv"]
    problems = problems_of(data, manager)
    assert "[sinks.tests.toy_plugin:memory] names the same telemetry sink as [sinks.memory]" in problems
    assert any(p.startswith("[morphogenesis] seed_families: names must be unique") for p in problems)


def test_without_a_console_sink_a_config_without_sinks_has_none(toy_manager, toy_run_data):
    data = toy_run_data()
    del data["sinks"]
    assert "console" not in toy_manager.registry.entries["telemetry_sinks"]
    assert parse_config(data, toy_manager).sinks == {}


def test_a_run_without_any_sink_plugin_writes_its_events(toy_manager, toy_run_data):
    import json

    from esper_core.tolaria.engine import start_run

    data = toy_run_data(run={"episode_length": 3, "envs": 1})
    del data["sinks"]
    run_dir = start_run(parse_config(data, toy_manager), toy_manager)
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1])["event"] == "RUN_FINISHED"
    assert json.loads((run_dir / "summary.json").read_text())["run"]["status"] == "completed"


@pytest.mark.parametrize(("plugins", "default"), [("vision,cnn,heuristic", set()), ("vision,cnn,heuristic,sinks", {"console"})])
def test_the_console_default_follows_the_installed_sink_plugins(monkeypatch, plugins, default):
    from esper_core.plugins import ONLY_PLUGINS_ENV, PluginManager

    monkeypatch.setenv(ONLY_PLUGINS_ENV, plugins)
    manager = PluginManager(autoload=True)
    config = parse_config({"task": {"name": "shapes"}, "policy": {"name": "heuristic"}}, manager)
    assert set(config.sinks) == default


# -- property: every float option of every registered config class refuses NaN and infinities -------

_KIND_SECTIONS = {"tasks": "task", "hosts": "host", "policies": "policy", "rewards": "reward",
                  "seed_families": "seed_families.{name}", "telemetry_sinks": "sinks.{name}"}


def _float_shaped(annotation) -> str | None:
    """'scalar' for float and float | None, 'tuple' for tuples of floats, else None."""
    import types
    import typing

    if annotation is float:
        return "scalar"
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and float in arguments and set(arguments) <= {float, type(None)}:
        return "scalar"
    if origin is tuple and arguments and all(argument in (float, Ellipsis) for argument in arguments):
        return "tuple"
    return None


def _float_fields() -> list[tuple[str, type, str, str]]:
    """(section label, config class, field name, shape) for every float field the installed plugins expose."""
    from esper_core.config import CORE_SECTIONS
    from esper_core.plugins import PluginManager

    classes: dict[tuple[str, type], None] = {(section, cls): None for section, cls in CORE_SECTIONS.items()}
    manager = PluginManager()
    for kind, label in _KIND_SECTIONS.items():
        for _plugin, name, entry in manager.registry.items(kind):
            classes[(label.format(name=name), entry.config_class)] = None
    found = []
    for section, cls in classes:
        for field in attrs.fields(attrs.resolve_types(cls)):
            shape = _float_shaped(field.type)
            if shape is not None:
                found.append((section, cls, field.name, shape))
    return found


FLOAT_FIELDS = _float_fields()
#: Fields of plugins this change did not move to esper_core.validators yet (their owners: see the issue).
def _float_field_params() -> list:
    return [pytest.param(section, cls, name, shape, id=f"{section}.{name}") for section, cls, name, shape in FLOAT_FIELDS]


def test_the_property_below_covers_core_plugin_and_reward_floats():
    covered = {(section, name) for section, _cls, name, _shape in FLOAT_FIELDS}
    for expected in (("training", "host_lr"), ("reward", "metric_weight"), ("policy", "prune_threshold"),
                     ("task", "noise"), ("training", "betas")):
        assert expected in covered, expected


@pytest.mark.parametrize(("section", "cls", "name", "shape"), _float_field_params())
@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(value=st.sampled_from([math.nan, math.inf, -math.inf]), finite=st.floats(0.0, 0.5))
def test_every_float_option_refuses_nan_and_infinities_in_one_line_naming_its_key(
    section, cls, name, shape, value, finite
):
    from esper_core.config import structure_section

    given = value if shape == "scalar" else [finite, value]
    _instance, problems = structure_section({name: given}, cls, section)
    mine = [problem for problem in problems if problem.startswith(f"[{section}] {name}:")]
    assert len(mine) == 1, problems
    assert "\n" not in mine[0] and "finite" in mine[0], mine[0]


# -- esper_core.validators -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("validator", "value", "reason"),
    [
        ("finite", math.inf, "must be a finite number, got inf"),
        ("finite", "1", "must be a finite number, got '1'"),
        ("positive", 0, "must be a finite number > 0, got 0"),
        ("positive", True, "must be a finite number > 0, got True"),
        ("non_negative", -1e-9, "must be a finite number >= 0, got -1e-09"),
        ("probability", 1.5, "must be a finite number in [0, 1], got 1.5"),
        ("open_unit", 1.0, "must be a finite number in (0, 1), got 1.0"),
        ("open_unit", 0.0, "must be a finite number in (0, 1), got 0.0"),
        ("at_most_half", 0.75, "must be a finite number <= 0.5, got 0.75"),
        ("positive_int", 0, "must be >= 1, got 0"),
        ("positive_int", True, "must be an integer, got True"),
        ("non_negative_int", 2.0, "must be an integer, got 2.0"),
        ("one_of", "SGD", "must be one of sgd, adamw, got 'SGD'"),
        ("optional_positive", -1.0, "must be a finite number > 0, got -1.0"),
    ],
)
def test_each_shared_validator_names_its_rule_and_the_value(validator, value, reason):
    from esper_core import validators

    made = {
        "finite": validators.finite(),
        "positive": validators.positive(),
        "non_negative": validators.non_negative(),
        "probability": validators.probability(),
        "open_unit": validators.in_range(0, 1, low_inclusive=False, high_inclusive=False),
        "at_most_half": validators.in_range(None, 0.5),
        "positive_int": validators.positive_int(),
        "non_negative_int": validators.non_negative_int(),
        "one_of": validators.one_of("sgd", "adamw"),
        "optional_positive": validators.optional(validators.positive()),
    }[validator]

    @attrs.frozen
    class Options:
        option: object = attrs.field(default=None, validator=made)

    with pytest.raises(validators.InvalidValue) as raised:
        Options(option=value)
    assert (raised.value.field, raised.value.reason, raised.value.value) == ("option", reason, value)


def test_shared_validators_accept_their_range_and_optional_accepts_none():
    from esper_core import validators

    @attrs.frozen
    class Options:
        rate: float = attrs.field(default=0.5, validator=validators.in_range(0, 1, low_inclusive=False))
        count: int | None = attrs.field(default=None, validator=validators.optional(validators.positive_int()))
        kind: str = attrs.field(default="a", validator=validators.one_of("a", "b"))

    assert Options(rate=1.0, count=3, kind="b") == Options(1.0, 3, "b")
    assert Options(rate=1, count=None).rate == 1  # an int is a number
