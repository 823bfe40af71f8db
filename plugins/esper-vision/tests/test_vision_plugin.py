"""Tests that the vision plugin is discovered through its entry point and that its task options validate."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from esper_core.config import structure_section
from esper_core.plugins import PluginManager
from esper_vision.cifar10 import Cifar10Config
from esper_vision.digits import DigitsConfig
from esper_vision.shapes import ShapesConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TASK_NAMES = ("cifar10", "digits", "shapes")


def test_entry_point_registers_all_three_tasks() -> None:
    manager = PluginManager()
    assert not [failure for failure in manager.failures if failure.name == "vision"]
    assert set(TASK_NAMES) <= set(manager.registry.names("tasks"))
    for name in TASK_NAMES:
        assert manager.registry.owner("tasks", name) == "vision"
    info = next(plugin for plugin in manager.plugins if plugin.name == "vision")
    assert info.distribution == "esper-vision"
    assert sorted(info.registered["tasks"]) == list(TASK_NAMES)


@pytest.mark.parametrize(
    ("name", "config_class"),
    [("digits", DigitsConfig), ("shapes", ShapesConfig), ("cifar10", Cifar10Config)],
)
def test_task_kinds_declare_image_host_and_config(name: str, config_class: type) -> None:
    kind = PluginManager().registry.get("tasks", name)
    assert kind.default_host == "cnn"
    assert kind.config_class is config_class
    assert kind.description


def test_toml_options_structure_into_configs() -> None:
    shapes, problems = structure_section({"train_size": 256, "noise": 0, "seed": 3}, ShapesConfig, "task")
    assert problems == []
    assert shapes == ShapesConfig(train_size=256, noise=0.0, seed=3)
    cifar, problems = structure_section({"root": "/data", "train_limit": 1000}, Cifar10Config, "task")
    assert problems == []
    assert cifar.train_limit == 1000 and cifar.val_limit is None


@pytest.mark.parametrize(
    ("options", "config_class", "expected"),
    [
        ({"train_size": 5}, ShapesConfig, "[task] train_size: must be >= 10"),
        ({"train_size": 10**18}, ShapesConfig, "[task] train_size: must be <= 10000000, got 1000000000000000000"),
        ({"noise": 1.5}, ShapesConfig, "[task] noise: must be a finite number in [0, 1], got 1.5"),
        ({"noise": float("nan")}, ShapesConfig, "[task] noise: must be a finite number in [0, 1], got nan"),
        ({"seed": -1}, ShapesConfig, "[task] seed:"),
        ({"val_fraction": 0.9}, DigitsConfig, "[task] val_fraction: must be a finite number in [0.01, 0.5], got 0.9"),
        ({"val_fraction": float("inf")}, DigitsConfig, "[task] val_fraction: must be a finite number in [0.01, 0.5]"),
        ({"split_seed": 2**32}, DigitsConfig, "[task] split_seed: must be <= 4294967295"),
        ({"train_limit": 60000}, Cifar10Config, "[task] train_limit: must be <= 50000"),
        ({"val_limit": 0}, Cifar10Config, "[task] val_limit: must be >= 1"),
        ({"trian_size": 10}, ShapesConfig, "unknown key 'trian_size' (did you mean 'train_size'?)"),
    ],
)
def test_bad_options_are_reported_with_their_key(options: dict, config_class: type, expected: str) -> None:
    instance, problems = structure_section(options, config_class, "task")
    assert instance is None
    assert any(expected in problem for problem in problems), problems


def test_readme_examples_use_real_options() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) >= 3
    config_classes = {"digits": DigitsConfig, "shapes": ShapesConfig, "cifar10": Cifar10Config}
    seen = set()
    for block in blocks:
        task_section = dict(tomllib.loads(block)["task"])
        name = task_section.pop("name")
        instance, problems = structure_section(task_section, config_classes[name], "task")
        assert problems == [], problems
        seen.add(name)
    assert seen == set(config_classes)
