"""Tests that the text plugin is discovered through its entry point and that its task options validate."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from esper_core.config import structure_section
from esper_core.plugins import PluginManager
from esper_text.pydoc_task import PydocConfig
from esper_text.tinystories import TinyStoriesConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TASK_NAMES = ("pydoc", "tinystories")
CONFIG_CLASSES = {"pydoc": PydocConfig, "tinystories": TinyStoriesConfig}


def test_entry_point_registers_both_tasks() -> None:
    manager = PluginManager()
    assert not [failure for failure in manager.failures if failure.name == "text"]
    assert set(TASK_NAMES) <= set(manager.registry.names("tasks"))
    for name in TASK_NAMES:
        assert manager.registry.owner("tasks", name) == "text"
    info = next(plugin for plugin in manager.plugins if plugin.name == "text")
    assert info.distribution == "esper-text"
    assert sorted(info.registered["tasks"]) == list(TASK_NAMES)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_kinds_declare_the_transformer_host_and_their_config(name: str) -> None:
    kind = PluginManager().registry.get("tasks", name)
    assert kind.default_host == "transformer"
    assert kind.config_class is CONFIG_CLASSES[name]
    assert kind.description


def test_toml_options_structure_into_configs(tmp_path: Path) -> None:
    pydoc, problems = structure_section({"context_length": 128, "stride": 32, "max_train_windows": 0}, PydocConfig, "task")
    assert problems == []
    assert pydoc == PydocConfig(context_length=128, stride=32, max_train_windows=0)
    stories, problems = structure_section({"path": "stories.jsonl", "max_stories": 1000}, TinyStoriesConfig, "task")
    assert problems == []
    assert Path(stories.path).is_absolute() and stories.path.endswith("stories.jsonl")  # a path_field
    assert stories.max_stories == 1000 and stories.stride is None


@pytest.mark.parametrize(
    ("options", "config_class", "expected"),
    [
        ({"context_length": 0}, PydocConfig, "[task] context_length: must be >= 1"),
        ({"val_fraction": 0.9}, PydocConfig, "[task] val_fraction: must be a finite number in [0.01, 0.5], got 0.9"),
        ({"val_fraction": float("nan")}, PydocConfig, "[task] val_fraction: must be a finite number in [0.01, 0.5], got nan"),
        ({"stride": 0}, PydocConfig, "[task] stride:"),
        ({"max_val_windows": -1}, PydocConfig, "[task] max_val_windows: must be >= 0"),
        ({"max_stories": -5}, TinyStoriesConfig, "[task] max_stories: must be >= 0"),
        ({"contxt_length": 32}, PydocConfig, "unknown key 'contxt_length' (did you mean 'context_length'?)"),
        ({"root": "data"}, TinyStoriesConfig, "unknown key 'root'"),
    ],
)
def test_bad_options_are_reported_with_their_key(options: dict, config_class: type, expected: str) -> None:
    instance, problems = structure_section(options, config_class, "task")
    assert instance is None
    assert any(expected in problem for problem in problems), problems


def test_readme_examples_use_real_options_and_the_transformer_host() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) >= 2
    seen = set()
    for block in blocks:
        document = tomllib.loads(block)
        task_section = dict(document["task"])
        name = task_section.pop("name")
        instance, problems = structure_section(task_section, CONFIG_CLASSES[name], "task")
        assert problems == [], problems
        if "host" in document:
            assert document["host"]["name"] == "transformer"
        seen.add(name)
    assert seen == set(CONFIG_CLASSES)


def test_readme_host_sections_are_valid_transformer_options() -> None:
    registry = PluginManager().registry
    if "transformer" not in registry.names("hosts"):
        pytest.skip("the transformer host (esper-transformer) is not installed")
    config_class = registry.get("hosts", "transformer").config_class
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL):
        host_section = dict(tomllib.loads(block)["host"])
        assert host_section.pop("name") == "transformer"
        _instance, problems = structure_section(host_section, config_class, "host")
        assert problems == [], problems
