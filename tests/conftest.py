"""Shared fixtures for the core tests: the toy plugin, a plugin manager and small slot/model factories.

Run configs and the toy plugin itself come from ``esper_core.testing``, shared with the plugins' tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from esper_core.config import parse_config
from esper_core.kasmina import LifecycleSettings, MorphogeneticModel, SeedSlot
from esper_core.leyline import SEGMENT_BOUNDARY, InjectionSpec, SlotConfig
from esper_core.plugins import PluginManager
from esper_core.testing import TOY_RUN, toy_run_data as shared_toy_run_data
from tests import toy_plugin

TOY_INFO = toy_plugin.TOY_TASK_INFO
#: the toy run every core test starts from (``esper_core.testing.TOY_RUN``)
BASE_RUN: dict[str, Any] = TOY_RUN


@pytest.fixture
def toy_manager() -> PluginManager:
    """Only the core's built-in plugin and the toy plugin (no entry points)."""
    return PluginManager(autoload=False, extra=[toy_plugin])


def toy_seed_builder(family: str, channels: int) -> torch.nn.Module:
    if family == "toy_ladder":
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
        host, slot_config, topology="image", seed_families=("toy_conv", "toy_ladder"), build_seed=toy_seed_builder,
        settings=LifecycleSettings(embargo_epochs=2, min_training_epochs=1),
        max_seeds=max_seeds or slot_config.num_slots, emit=None if events is None else events.append,
    )


@pytest.fixture
def toy_run_data(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """A factory for small run-config dicts writing into ``tmp_path``; keyword tables are merged in (a
    policy table naming another policy replaces the scripted one)."""

    def factory(**sections: dict[str, Any]) -> dict[str, Any]:
        return shared_toy_run_data(tmp_path / "runs", **sections)

    return factory


@pytest.fixture
def toy_config(toy_manager, toy_run_data):
    def factory(**sections: dict[str, Any]):
        return parse_config(toy_run_data(**sections), toy_manager)

    return factory
