"""The plugin manager: discovery, isolation of broken plugins, duplicate names, hook checks, env controls."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap

import pytest

from esper_core import plugins as plugin_module
from esper_core.errors import PluginError
from esper_core.plugins import PluginManager
from esper_core.registry import Registry, SeedFamily
from tests import toy_plugin

GOOD = """
from esper_core import hookimpl
from esper_core.registry import SeedFamily
from tests.toy_plugin import build_toy_seed

@hookimpl
def esper_register_seed_families(register):
    register(SeedFamily(name="extra_family", build=build_toy_seed, topologies=("image",)))
"""
BROKEN = "raise ImportError('numpy.fake is not installed')\n"
MISSPELT = """
from esper_core import hookimpl

@hookimpl
def esper_register_seed_familys(register):
    raise AssertionError("never called")
"""
UNMARKED = """
def esper_register_hosts(register):
    raise AssertionError("never called")
"""
CLASH = """
from esper_core import hookimpl
from esper_core.registry import SeedFamily
from tests.toy_plugin import build_toy_seed

@hookimpl
def esper_register_seed_families(register):
    register(SeedFamily(name="extra_family", build=build_toy_seed, topologies=("image",)))
"""
HALF = """
from esper_core import hookimpl
from esper_core.registry import SeedFamily
from tests.toy_plugin import build_toy_seed

@hookimpl
def esper_register_seed_families(register):
    register(SeedFamily(name="half_done", build=build_toy_seed, topologies=("image",)))
    register("not a record")
"""


@pytest.fixture
def fake_entry_points(tmp_path, monkeypatch):
    """Install modules under tmp_path and expose them as entry points of the 'esper' group."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(**modules: str) -> None:
        points = []
        for name, source in modules.items():
            module_name = f"fakeplugin_{name}"
            (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
            sys.modules.pop(module_name, None)
            points.append(importlib.metadata.EntryPoint(name=name, value=module_name, group="esper"))
        monkeypatch.setattr(plugin_module.importlib.metadata, "entry_points", lambda group: points)

    monkeypatch.delenv(plugin_module.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugin_module.ONLY_PLUGINS_ENV, raising=False)
    monkeypatch.delenv(plugin_module.PLUGIN_MODULES_ENV, raising=False)
    return install


def test_a_broken_plugin_is_reported_by_name_and_the_rest_load(fake_entry_points):
    fake_entry_points(good=GOOD, broken=BROKEN)
    manager = PluginManager()
    assert "extra_family" in manager.registry.names("seed_families")
    assert [f.name for f in manager.failures] == ["broken"]
    assert manager.failures[0].stage == "import"
    assert "numpy.fake is not installed" in manager.failures[0].describe()


def test_misspelt_and_unmarked_hooks_fail_loudly(fake_entry_points):
    fake_entry_points(misspelt=MISSPELT, unmarked=UNMARKED)
    manager = PluginManager()
    messages = {f.name: f.error for f in manager.failures}
    assert "esper_register_seed_familys" in messages["misspelt"]
    assert "did you mean 'esper_register_seed_families'" in messages["misspelt"]
    assert "not marked with @esper_core.hookimpl" in messages["unmarked"]
    assert [p.name for p in manager.plugins] == ["esper_core"]


def test_duplicate_names_are_rejected_naming_both_plugins(fake_entry_points):
    fake_entry_points(alpha=GOOD, beta=CLASH)
    manager = PluginManager()
    assert manager.registry.owner("seed_families", "extra_family") == "alpha"
    failure = manager.failures[0]
    assert failure.name == "beta" and failure.stage == "register"
    assert "'extra_family' is registered by both 'alpha' and 'beta'" in failure.error


def test_a_plugin_failing_half_way_is_withdrawn_entirely(fake_entry_points):
    fake_entry_points(half=HALF)
    manager = PluginManager()
    assert "half_done" not in manager.registry.names("seed_families")
    assert "expected an esper_core.registry.SeedFamily" in manager.failures[0].error


def test_autoload_can_be_disabled_or_restricted(fake_entry_points, monkeypatch):
    fake_entry_points(good=GOOD, broken=BROKEN)
    monkeypatch.setenv(plugin_module.DISABLE_AUTOLOAD_ENV, "1")
    assert [p.name for p in PluginManager().plugins] == ["esper_core"]
    monkeypatch.delenv(plugin_module.DISABLE_AUTOLOAD_ENV)
    monkeypatch.setenv(plugin_module.ONLY_PLUGINS_ENV, "good")
    manager = PluginManager()
    assert [p.name for p in manager.plugins] == ["esper_core", "good"] and not manager.failures


def test_plugin_modules_from_the_environment_are_loaded(monkeypatch):
    monkeypatch.setenv(plugin_module.DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.setenv(plugin_module.PLUGIN_MODULES_ENV, "tests.toy_plugin, no_such_module_xyz")
    manager = PluginManager()
    assert "toy" in manager.registry.names("hosts")
    assert manager.failures[0].name == "no_such_module_xyz"


def test_every_hook_registers_into_its_kind(toy_manager):
    info = next(p for p in toy_manager.plugins if p.name == "tests.toy_plugin")
    assert set(info.hooks) == set(plugin_module.HOOK_NAMES)
    expected = {
        "hosts": ("toy",), "surfaces": ("toy_surface",), "seed_families": ("toy_conv", "toy_ladder"),
        "policies": ("scripted",), "tasks": ("toy",), "rewards": ("toy_reward",), "telemetry_sinks": ("memory",),
    }
    assert info.registered == expected
    builtin = next(p for p in toy_manager.plugins if p.builtin)
    assert builtin.registered == {"surfaces": ("segment_boundary",), "rewards": ("basic", "shaped", "simplified", "frontier")}


def test_lookup_suggests_close_names_and_names_failed_plugins(fake_entry_points):
    fake_entry_points(broken=BROKEN)
    manager = PluginManager(extra=[toy_plugin])
    with pytest.raises(PluginError) as excinfo:
        manager.lookup("hosts", "toi")
    message = str(excinfo.value)
    assert "unknown host 'toi' (did you mean 'toy'?)" in message
    assert "plugin 'broken'" in message


def test_as_json_lists_distribution_hooks_and_names(toy_manager):
    data = toy_manager.as_json()
    toy = next(p for p in data["plugins"] if p["name"] == "tests.toy_plugin")
    assert toy["registered"]["tasks"] == ["toy"] and "esper_register_tasks" in toy["hooks"]
    assert data["plugins"][0]["distribution"] == "esper-core" and data["failures"] == []


def test_registry_rejects_duplicate_surface_codes():
    from esper_core.registry import SurfaceKind

    registry = Registry()
    registry.add("surfaces", SurfaceKind(name="a", code=1), "one")
    with pytest.raises(PluginError, match="surface code 1 is claimed by both 'a' .one. and 'b' .two."):
        registry.add("surfaces", SurfaceKind(name="b", code=1), "two")


def test_records_validate_their_fields():
    with pytest.raises(ValueError, match="lower-case"):
        SeedFamily(name="Bad-Name", build=lambda *a: None, topologies=("image",))
    with pytest.raises(TypeError, match="callable"):
        SeedFamily(name="ok", build="not callable", topologies=("image",))
