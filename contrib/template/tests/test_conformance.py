"""The esper-core conformance kit on this plugin's seed family, and its registration through the hook and the entry point."""

from __future__ import annotations

import importlib.metadata

import pytest

from esper_core.plugins import ENTRY_POINT_GROUP, PluginManager
from esper_core.testing import check_seed_family

from my_seed_plugin import plugin
from my_seed_plugin.plugin import SEED_FAMILY


@pytest.mark.parametrize("channels", [1, 8, 32])
def test_the_family_passes_the_conformance_kit(channels):
    # shape-preserving, identity at birth, deterministic, trainable; a family with a ladder also
    # gets the ladder checks (check_ladder_family)
    check_seed_family(SEED_FAMILY, channels=channels)


def test_the_hook_registers_the_family():
    manager = PluginManager(autoload=False, extra=[plugin])
    assert not manager.failures, [failure.describe() for failure in manager.failures]
    assert manager.registry.get("seed_families", SEED_FAMILY.name) is SEED_FAMILY


def test_the_installed_entry_point_registers_the_family():
    names = [ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.value == plugin.__name__]
    if not names:
        pytest.skip(f"no '{ENTRY_POINT_GROUP}' entry point names {plugin.__name__}: the distribution is not installed")
    manager = PluginManager()
    assert not [failure.describe() for failure in manager.failures if failure.name in names]
    assert manager.registry.owner("seed_families", SEED_FAMILY.name) == names[0]
