"""Shared fixtures for the core tests: the toy plugin, a plugin manager and small slot/model factories."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from esper_core.config import parse_config
from esper_core.kasmina import LifecycleSettings, MorphogeneticModel, SeedSlot
from esper_core.leyline import SEGMENT_BOUNDARY, InjectionSpec, SlotConfig
from esper_core.plugins import PluginManager
from esper_core.tasks import TaskInfo
from tests import toy_plugin

TOY_INFO = TaskInfo(
    name="toy", topology="image", input_shape=(1, 6, 6), num_classes=2, metric_name="accuracy",
    train_size=96, val_size=48,
)


@pytest.fixture
def toy_manager() -> PluginManager:
    """Only the core's built-in plugin and the toy plugin (no entry points)."""
    return PluginManager(autoload=False, extra=[toy_plugin])


def toy_seed_builder(blueprint: str, channels: int) -> torch.nn.Module:
    if blueprint == "toy_ladder":
        return toy_plugin.build_toy_ladder(channels, "image", None)
    return toy_plugin.build_toy_seed(channels, "image", toy_plugin.ToySeedConfig())


def make_slot(embargo: int = 2, min_training: int = 1, events: list | None = None) -> SeedSlot:
    spec = InjectionSpec(slot_id="r0c0", channels=6, surface=SEGMENT_BOUNDARY, order=0, host_block=0)
    return SeedSlot(
        spec, topology="image",
        settings=LifecycleSettings(embargo_epochs=embargo, min_training_epochs=min_training),
        build_seed=toy_seed_builder, emit=None if events is None else events.append,
    )


def make_model(seed: int = 0, blocks: int = 3, max_seeds: int | None = None, events: list | None = None,
               slots: list[str] | None = None) -> MorphogeneticModel:
    torch.manual_seed(seed)
    host = toy_plugin.ToyHost(toy_plugin.ToyHostConfig(blocks=blocks), TOY_INFO)
    slot_config = SlotConfig.from_specs(host.injection_specs(), enabled=slots)
    return MorphogeneticModel(
        host, slot_config, topology="image", blueprints=("toy_conv", "toy_ladder"), build_seed=toy_seed_builder,
        settings=LifecycleSettings(embargo_epochs=2, min_training_epochs=1),
        max_seeds=max_seeds or slot_config.num_slots, emit=None if events is None else events.append,
    )


BASE_RUN: dict[str, Any] = {
    "run": {"name": "toyrun", "envs": 2, "episode_length": 8, "rounds": 1, "checkpoint_every": 2, "torch_threads": 1},
    "training": {"batch_size": 16, "eval_batch_size": 64},
    "task": {"name": "toy"},
    "policy": {"name": "scripted", "script": {}},
    "sinks": {"memory": {}},
    "morphogenesis": {"min_training_epochs": 1, "embargo_epochs": 1},
}


@pytest.fixture
def toy_run_data(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """A factory for small run-config dicts writing into ``tmp_path``; keyword tables are merged in."""

    def factory(**sections: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(BASE_RUN)
        data["run"]["output_dir"] = str(tmp_path / "runs")
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return data

    return factory


@pytest.fixture
def toy_config(toy_manager, toy_run_data):
    def factory(**sections: dict[str, Any]):
        return parse_config(toy_run_data(**sections), toy_manager)

    return factory
