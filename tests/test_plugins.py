"""The plugin manager: discovery, isolation of broken plugins, half-way failures, hook checks, env controls."""

from __future__ import annotations

import importlib.metadata
import json
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


def test_a_plugin_failing_half_way_withdraws_only_its_own_items(fake_entry_points):
    fake_entry_points(alpha=GOOD, half=HALF.replace("half_done", "extra_family"))
    manager = PluginManager()
    assert [f.name for f in manager.failures] == ["half"]
    assert "expected an esper_core.registry.SeedFamily" in manager.failures[0].error
    assert manager.registry.names("seed_families") == ["extra_family"]  # alpha's, no longer clashing
    assert manager.registry.owner("seed_families", "extra_family") == "alpha" and not manager.clashes


def test_a_plugin_failing_half_way_is_withdrawn_entirely(fake_entry_points):
    fake_entry_points(half=HALF)
    manager = PluginManager()
    assert "half_done" not in manager.registry.names("seed_families")
    assert "expected an esper_core.registry.SeedFamily" in manager.failures[0].error
    assert "half" not in [p.name for p in manager.plugins]


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
    expected = {
        "hosts": ("toy",), "surfaces": ("toy_surface",), "seed_families": ("toy_conv", "toy_ladder"),
        "policies": ("scripted",), "tasks": ("toy",), "rewards": ("toy_reward",), "telemetry_sinks": ("memory",),
    }
    assert set(info.hooks) >= {plugin_module.KINDS[kind][0] for kind in expected}
    assert {kind: names for kind, names in info.registered.items() if kind in expected} == expected
    builtin = next(p for p in toy_manager.plugins if p.builtin)
    assert builtin.registered == {
        "surfaces": ("segment_boundary",),
        "rewards": ("basic", "shaped", "simplified", "frontier"),
        "topologies": ("image", "sequence"),
        "ladder_kinds": ("conv_stages", "lora_rank", "channel_groups"),
        "subtarget_kinds": ("lora_rank_block", "cnn_channel_group", "attn_head_group"),
    }
    assert set(builtin.hooks) == {
        "esper_register_surfaces", "esper_register_rewards", "esper_register_topologies", "esper_register_ladder_kinds",
        "esper_register_subtarget_kinds",
    }


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
    assert data["clashes"] == []


def test_registry_rejects_duplicate_surface_codes():
    from esper_core.registry import ItemWithdrawn, SurfaceKind

    registry = Registry()
    registry.add("surfaces", SurfaceKind(name="a", code=1), "one")
    with pytest.raises(ItemWithdrawn, match="surface code 1 is claimed by both 'a' .one. and 'b' .two."):
        registry.add("surfaces", SurfaceKind(name="b", code=1), "two")
    assert registry.names("surfaces") == ["a"]


def test_records_validate_their_fields():
    with pytest.raises(ValueError, match="lower-case"):
        SeedFamily(name="Bad-Name", build=lambda *a: None, topologies=("image",))
    with pytest.raises(TypeError, match="callable"):
        SeedFamily(name="ok", build="not callable", topologies=("image",))


# -- name clashes (issue 12, defect 1): a plugin never takes down another -----------------------------

VICTIM = """
from esper_core import hookimpl
from esper_core.registry import HostFamily, SeedFamily
from tests.toy_plugin import ToyHost, ToyHostConfig, build_toy_seed

@hookimpl
def esper_register_hosts(register):
    register(HostFamily(name="victim_host", build=ToyHost, topology="image", config_class=ToyHostConfig))

@hookimpl
def esper_register_seed_families(register):
    register(SeedFamily(name="norm", build=build_toy_seed, topologies=("image",)))
    register(SeedFamily(name="victim_only", build=build_toy_seed, topologies=("image",)))
"""
INTRUDER = """
from esper_core import hookimpl
from esper_core.registry import SeedFamily
from tests.toy_plugin import build_toy_seed

def build_intruder(channels, topology, config):
    return build_toy_seed(channels, topology, config)

@hookimpl
def esper_register_seed_families(register):
    register(SeedFamily(name="norm", build=build_intruder, topologies=("image",)))
"""


@pytest.mark.parametrize("intruder_name", ["aaa", "zzz"], ids=["intruder-first", "intruder-last"])
def test_a_name_clash_keeps_both_items_and_names_both_plugins(fake_entry_points, intruder_name):
    fake_entry_points(**{"victim": VICTIM, intruder_name: INTRUDER})
    manager = PluginManager()
    assert manager.failures == []  # nobody failed: the victim keeps its host and every family
    loaded = {info.name: info.registered for info in manager.plugins}
    assert loaded["victim"] == {"hosts": ("victim_host",), "seed_families": ("norm", "victim_only")}
    assert loaded[intruder_name] == {"seed_families": ("norm",)}
    assert manager.lookup("hosts", "victim_host").name == "victim_host"
    assert manager.lookup("seed_families", "victim_only").name == "victim_only"
    assert manager.lookup("seed_families", "victim:norm").build.__name__ == "build_toy_seed"
    assert manager.lookup("seed_families", f"{intruder_name}:norm").build.__name__ == "build_intruder"
    with pytest.raises(PluginError) as excinfo:
        manager.lookup("seed_families", "norm")
    message = str(excinfo.value)
    assert "'norm' is registered by both" in message
    assert "'victim:norm'" in message and f"'{intruder_name}:norm'" in message
    assert "norm" not in manager.registry.entries["seed_families"]
    assert "victim:norm" in manager.registry.entries["seed_families"]
    assert "victim:victim_only" in manager.registry.entries["seed_families"]  # qualified works when unique too
    assert sorted(manager.registry.names("seed_families")) == sorted([f"{intruder_name}:norm", "victim:norm", "victim_only"])
    assert manager.registry.unknown_message("seed_families", "norm") == message
    clashes = manager.as_json()["clashes"]
    assert [(c["kind"], c["name"], sorted(c["plugins"])) for c in clashes] == [
        ("seed_families", "norm", sorted(["victim", intruder_name]))
    ]
    assert sorted(clashes[0]["qualified"]) == sorted([f"{intruder_name}:norm", "victim:norm"])
    assert manager.strict_exit_code() == 0


SURFACE_A = """
from esper_core import hookimpl
from esper_core.registry import SeedFamily, SurfaceKind
from tests.toy_plugin import build_toy_seed

@hookimpl
def esper_register_surfaces(register):
    register(SurfaceKind(name="{name}_surface", code=5))

@hookimpl
def esper_register_seed_families(register):
    register(SeedFamily(name="{name}_family", build=build_toy_seed, topologies=("image",)))
"""


@pytest.mark.parametrize("intruder", ["aaa", "zzz"], ids=["intruder-first", "intruder-last"])
def test_a_surface_code_clash_withdraws_only_the_later_item(fake_entry_points, intruder):
    fake_entry_points(**{"owner": SURFACE_A.format(name="owner"), intruder: SURFACE_A.format(name=intruder)})
    manager = PluginManager()
    earlier, later = sorted(["owner", intruder])  # entry points load in name order
    assert manager.registry.get("surfaces", f"{earlier}_surface").code == 5
    assert f"{later}_surface" not in manager.registry.entries["surfaces"]
    assert f"{later}_family" in manager.registry.entries["seed_families"]  # its other items stay
    (failure,) = manager.failures
    assert failure.name == later and failure.item == f"surface '{later}_surface'"
    assert f"surface code 5 is claimed by both '{earlier}_surface' ({earlier}) and '{later}_surface' ({later})" in failure.error
    assert later in [info.name for info in manager.plugins] and manager.strict_exit_code() == 1
    assert failure.describe().startswith(f"plugin '{later}': surface '{later}_surface' withdrawn: ")


EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"
INTERRUPTS_AT_IMPORT = "raise KeyboardInterrupt\n"
EXITS_WHILE_REGISTERING = """
import sys
from esper_core import hookimpl
from esper_core.registry import SeedFamily
from tests.toy_plugin import build_toy_seed

@hookimpl
def esper_register_seed_families(register):
    register(SeedFamily(name="before_exit", build=build_toy_seed, topologies=("image",)))
    sys.exit(4)
"""


def test_sys_exit_and_keyboard_interrupt_in_a_plugin_are_named_failures(fake_entry_points):
    fake_entry_points(exits=EXITS_AT_IMPORT, interrupts=INTERRUPTS_AT_IMPORT, late=EXITS_WHILE_REGISTERING, good=GOOD)
    manager = PluginManager()
    failures = {failure.name: failure for failure in manager.failures}
    assert set(failures) == {"exits", "interrupts", "late"}
    assert failures["exits"].stage == "import" and "sys.exit(3)" in failures["exits"].error
    assert failures["interrupts"].stage == "import" and "KeyboardInterrupt" in failures["interrupts"].error
    assert failures["late"].stage == "register" and "sys.exit(4)" in failures["late"].error
    assert "before_exit" not in manager.registry.entries["seed_families"]
    assert "extra_family" in manager.registry.entries["seed_families"]


def test_a_sys_exit_in_an_environment_plugin_module_is_a_named_failure(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "exiting_plugin_module.py").write_text(EXITS_AT_IMPORT)
    monkeypatch.setenv(plugin_module.PLUGIN_MODULES_ENV, "exiting_plugin_module")
    manager = PluginManager(autoload=False)
    (failure,) = manager.failures
    assert failure.name == "exiting_plugin_module" and "sys.exit(3)" in failure.error


def test_esper_plugins_survives_a_plugin_that_exits_at_import_and_lists_clashes(tmp_path, monkeypatch, capsys):
    """The probe of issue 12: `esper plugins` with a plugin calling sys.exit(3) at import exited 3, silently."""
    from esper_core import cli

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "exits_at_import.py").write_text(EXITS_AT_IMPORT)
    (tmp_path / "second_toy.py").write_text(INTRUDER.replace('name="norm"', 'name="toy_conv"'))
    monkeypatch.setenv(plugin_module.DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.setenv(plugin_module.PLUGIN_MODULES_ENV, "exits_at_import,tests.toy_plugin,second_toy")
    assert cli.main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(f["name"], f["stage"]) for f in data["failures"]] == [("exits_at_import", "import")]
    assert "sys.exit(3)" in data["failures"][0]["error"]
    assert data["clashes"] == [{
        "kind": "seed_families", "name": "toy_conv", "plugins": ["tests.toy_plugin", "second_toy"],
        "qualified": ["tests.toy_plugin:toy_conv", "second_toy:toy_conv"],
    }]
    assert cli.main(["plugins", "--json", "--strict"]) == 1
