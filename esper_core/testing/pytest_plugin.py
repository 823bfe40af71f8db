"""Pytest fixtures for Esper plugin authors (loaded automatically through the ``pytest11`` entry point)."""

from __future__ import annotations

import pytest

from esper_core.plugins import PluginManager


@pytest.fixture
def esper_plugins() -> PluginManager:
    """A plugin manager with every installed plugin loaded (a fresh one per test)."""
    return PluginManager()


@pytest.fixture
def esper_registry(esper_plugins: PluginManager):
    """The registry of every installed plugin."""
    return esper_plugins.registry
