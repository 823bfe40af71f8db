"""The versioned plugin API: typed registrars, pluggy options, topology and ladder kind registries, the esper-core range check."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import textwrap
import tomllib
import types
import typing
from pathlib import Path

import pluggy
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import esper_core
from esper_core import hookspecs
from esper_core import plugins as plugin_module
from esper_core.errors import PluginError
from esper_core.plugins import PluginManager, core_requirement_problem
from esper_core.registry import KINDS, LadderKind, LadderSpec, Registry, TopologyKind
from tests.test_plugins import fake_entry_points  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parents[1]


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)
    module = __import__(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


# -- typed registrars ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_hook_is_annotated_with_its_registrar(kind):
    hook_name, record, _label = KINDS[kind]
    registrar = hookspecs.REGISTRARS[kind]
    assert typing.get_type_hints(getattr(hookspecs, hook_name))["register"] is registrar
    assert list(typing.get_type_hints(registrar.__call__).values()) == [record, type(None)]
    assert registrar.__name__ in hookspecs.__all__


def test_the_hook_receives_its_registrar(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, "registrar_probe", """
        from esper_core import hookimpl
        received = {}

        @hookimpl
        def esper_register_policies(register):
            received["policies"] = register

        @hookimpl
        def esper_register_topologies(register):
            received["topologies"] = register
    """)
    PluginManager(autoload=False, extra=[module])
    assert type(module.received["policies"]) is hookspecs.PolicyRegistrar
    assert type(module.received["topologies"]) is hookspecs.TopologyRegistrar


# -- pluggy as pluggy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["tryfirst", "trylast", "hookwrapper", "wrapper"])
def test_ordering_and_wrapper_options_are_refused_naming_plugin_and_hook(tmp_path, monkeypatch, option):
    body = "    yield\n" if option in ("hookwrapper", "wrapper") else "    pass\n"
    module = _module(tmp_path, monkeypatch, f"option_{option}", f"""
from esper_core import hookimpl

@hookimpl({option}=True)
def esper_register_seed_families(register):
{body}""")
    manager = PluginManager(autoload=False, extra=[module])
    (failure,) = manager.failures
    assert failure.name == f"option_{option}" and failure.stage == "hooks"
    assert f"esper_register_seed_families is marked {option}=True" in failure.error
    assert "have no meaning" in failure.error
    assert f"option_{option}" not in [info.name for info in manager.plugins]


def test_registration_goes_through_pluggy_one_plugin_per_call(monkeypatch):
    from tests import toy_plugin

    calls: list[tuple[str, tuple[str, ...]]] = []

    class MonitoredPluginManager(pluggy.PluginManager):
        def __init__(self, project_name: str) -> None:
            super().__init__(project_name)
            self.add_hookcall_monitoring(
                lambda hook_name, impls, kwargs: calls.append((hook_name, tuple(impl.plugin_name for impl in impls))),
                lambda outcome, hook_name, impls, kwargs: None,
            )

    monkeypatch.setattr(plugin_module.pluggy, "PluginManager", MonitoredPluginManager)
    manager = PluginManager(autoload=False, extra=[toy_plugin])
    assert not manager.failures
    assert all(len(plugins) == 1 for _hook, plugins in calls)
    toy_calls = {hook for hook, plugins in calls if plugins == ("tests.toy_plugin",)}
    assert toy_calls == {hook for hook in plugin_module.HOOK_NAMES if hasattr(toy_plugin, hook)}
    assert ("esper_register_topologies", ("esper_core",)) in calls


def test_a_hook_argument_the_spec_lacks_is_one_line_naming_plugin_hook_and_argument(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, "wrong_argument", """
        from esper_core import hookimpl

        @hookimpl
        def esper_register_policies(registry):
            raise AssertionError("never called")
    """)
    manager = PluginManager(autoload=False, extra=[module])
    (failure,) = manager.failures
    assert failure.stage == "hooks" and "\n" not in failure.describe()
    assert "esper_register_policies" in failure.error and "'registry'" in failure.error


def test_specname_is_honoured(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, "specname_plugin", """
        from esper_core import hookimpl
        from esper_core.registry import LadderKind

        @hookimpl(specname="esper_register_ladder_kinds")
        def my_ladder_kinds(register):
            register(LadderKind(name="heads", code=9))
    """)
    manager = PluginManager(autoload=False, extra=[module])
    assert not manager.failures
    assert manager.registry.ladder_kind("heads").code == 9
    assert manager.registry.owner("ladder_kinds", "heads") == "specname_plugin"


def test_a_hook_that_returns_a_record_instead_of_registering_it_fails(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, "returns_record", """
        from esper_core import hookimpl
        from esper_core.registry import LadderKind

        @hookimpl
        def esper_register_ladder_kinds(register):
            return LadderKind(name="heads", code=9)
    """)
    manager = PluginManager(autoload=False, extra=[module])
    (failure,) = manager.failures
    assert failure.stage == "register" and "call register(...) with each record instead" in failure.error


def test_the_same_module_twice_is_refused_not_a_crash(monkeypatch):
    from tests import toy_plugin

    monkeypatch.setenv(plugin_module.PLUGIN_MODULES_ENV, "tests.toy_plugin")
    manager = PluginManager(autoload=False, extra=[toy_plugin, toy_plugin])
    assert [failure.stage for failure in manager.failures] == ["hooks", "hooks"]  # the second and third copy
    assert "already loaded" in manager.failures[0].error


# -- topologies and ladder kinds ---------------------------------------------------------------------

AUDIO = """
from esper_core import hookimpl
from esper_core.registry import HostFamily, LadderKind, LadderSpec, SeedFamily, SubtargetSpec, TopologyKind
from tests.toy_plugin import ToyHost, build_toy_seed

def audio_shape(batch, channels):
    return (batch, channels, 40)

@hookimpl
def esper_register_topologies(register):
    register(TopologyKind(name="audio", code=7, channel_dim=1, gate_pool_dims=(2,), example_shape=audio_shape))

@hookimpl
def esper_register_ladder_kinds(register):
    register(LadderKind(name="filter_banks", code=8))

@hookimpl
def esper_register_hosts(register):
    register(HostFamily(name="wave_host", build=ToyHost, topology="audio"))
    register(HostFamily(name="video_host", build=ToyHost, topology="video"))

@hookimpl
def esper_register_seed_families(register):
    register(SeedFamily(name="wave_seed", build=build_toy_seed, topologies=("audio",),
                        ladder=LadderSpec(kind="filter_banks", max_level=3)))
    register(SeedFamily(name="half_known", build=build_toy_seed, topologies=("audio", "video")))
    register(SeedFamily(name="odd_ladder", build=build_toy_seed, topologies=("image",),
                        ladder=LadderSpec(kind="no_such_ladder", max_level=2)))
    register(SeedFamily(name="odd_groups", build=build_toy_seed, topologies=("image",),
                        subtargets=SubtargetSpec(kind="no_such_groups", max_count=4)))
"""


def test_a_plugin_adds_a_topology_and_a_ladder_kind_and_dangling_names_are_withdrawn(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, "audio_plugin", AUDIO)
    manager = PluginManager(autoload=False, extra=[module])
    registry = manager.registry
    audio = registry.topology("audio")
    assert (audio.code, audio.channel_dim, audio.gate_pool_dims, audio.example_shape(4, 3)) == (7, 1, (2,), (4, 3, 40))
    assert registry.ladder_kind("filter_banks").code == 8
    assert registry.topology("esper_core:image").channel_dim == 1
    assert registry.ladder_kind("conv_stages").code == 1 and registry.ladder_kind("lora_rank").code == 2
    assert registry.names("hosts") == ["wave_host"]
    assert registry.names("seed_families") == ["wave_seed"]
    withdrawn = {failure.item: failure for failure in manager.failures}
    assert set(withdrawn) == {"host 'video_host'", "seed family 'half_known'", "seed family 'odd_ladder'",
                              "seed family 'odd_groups'"}
    assert all(failure.name == "audio_plugin" and failure.stage == "check" for failure in withdrawn.values())
    assert "topology 'video' is not registered" in withdrawn["host 'video_host'"].error
    assert "topology 'video' is not registered" in withdrawn["seed family 'half_known'"].error
    assert "ladder kind 'no_such_ladder' is not registered" in withdrawn["seed family 'odd_ladder'"].error
    assert "subtarget kind 'no_such_groups' is not registered" in withdrawn["seed family 'odd_groups'"].error
    assert "plugin 'audio_plugin': seed family 'odd_ladder' withdrawn" in withdrawn["seed family 'odd_ladder'"].describe()
    info = next(info for info in manager.plugins if info.name == "audio_plugin")
    assert info.registered["hosts"] == ("wave_host",) and info.registered["seed_families"] == ("wave_seed",)
    with pytest.raises(KeyError, match="unknown topology 'video'"):
        registry.topology("video")


def test_a_topology_or_ladder_kind_name_or_code_taken_first_is_kept(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, "squatter", """
        from esper_core import hookimpl
        from esper_core.registry import LadderKind, TopologyKind

        @hookimpl
        def esper_register_topologies(register):
            register(TopologyKind(name="image", code=9, channel_dim=1, gate_pool_dims=(), example_shape=lambda b, c: (b, c)))
            register(TopologyKind(name="flat", code=1, channel_dim=1, gate_pool_dims=(), example_shape=lambda b, c: (b, c)))
            register(TopologyKind(name="table", code=10, channel_dim=1, gate_pool_dims=(), example_shape=lambda b, c: (b, c)))

        @hookimpl
        def esper_register_ladder_kinds(register):
            register(LadderKind(name="lora_rank", code=12))
    """)
    manager = PluginManager(autoload=False, extra=[module])
    registry = manager.registry
    assert registry.topology("image").code == 0 and registry.owner("topologies", "image") == "esper_core"
    assert registry.ladder_kind("lora_rank").code == 2
    assert registry.names("topologies") == ["image", "sequence", "table"]
    errors = {failure.item: failure.error for failure in manager.failures}
    assert set(errors) == {"topology 'image'", "topology 'flat'", "ladder kind 'lora_rank'"}
    assert "'esper_core' registered topology 'image' first" in errors["topology 'image'"]
    assert "topology code 1 is claimed by both 'sequence' (esper_core) and 'flat' (squatter)" in errors["topology 'flat'"]
    assert not manager.clashes


def test_topology_and_ladder_records_validate_their_fields():
    with pytest.raises(ValueError, match="code must be an integer from 1 to 15"):
        LadderKind(name="zero", code=0)
    with pytest.raises(ValueError, match="code must be an integer from 0 to 15"):
        TopologyKind(name="big", code=16, channel_dim=1, gate_pool_dims=(), example_shape=lambda b, c: (b, c))
    with pytest.raises(ValueError, match="contains the channel axis"):
        TopologyKind(name="bad", code=3, channel_dim=1, gate_pool_dims=(1,), example_shape=lambda b, c: (b, c))
    with pytest.raises(ValueError, match="axis 0 is the batch"):
        TopologyKind(name="bad", code=3, channel_dim=0, gate_pool_dims=(), example_shape=lambda b, c: (b, c))
    with pytest.raises(ValueError, match="lower-case"):
        LadderSpec(kind="Conv Stages", max_level=2)
    assert LadderSpec(kind="conv_stages", max_level=2).kind == "conv_stages"
    wrong = TopologyKind(name="wrong", code=3, channel_dim=2, gate_pool_dims=(), example_shape=lambda b, c: (b, c))
    with pytest.raises(PluginError, match=r"plugin 'p': topology 'wrong': example_shape\(2, 3\) returned \(2, 3\), which has no axis 2"):
        Registry().add("topologies", wrong, "p")


# -- the esper-core range a plugin declares ----------------------------------------------------------


def _fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, requires: str) -> None:
    """A distribution 'fake-plugin' under tmp_path whose entry point 'fake' imports fake_plugin_module."""
    monkeypatch.syspath_prepend(str(tmp_path))
    info = tmp_path / "fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: fake-plugin\nVersion: 1.0\nRequires-Dist: {requires}\nRequires-Dist: torch>=2.2\n"
    )
    (info / "entry_points.txt").write_text("[esper]\nfake = fake_plugin_module\n")
    (tmp_path / "fake_plugin_module.py").write_text(textwrap.dedent("""
        from esper_core import hookimpl
        from esper_core.registry import LadderKind

        @hookimpl
        def esper_register_ladder_kinds(register):
            register(LadderKind(name="fake_kind", code=11))
    """))
    sys.modules.pop("fake_plugin_module", None)
    points = list(importlib.metadata.PathDistribution(info).entry_points)
    monkeypatch.setattr(plugin_module.importlib.metadata, "entry_points", lambda group: points)


def test_a_plugin_for_another_core_range_is_refused_before_import(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, monkeypatch, "esper-core<0.2")
    manager = PluginManager(autoload=True)
    (failure,) = manager.failures
    assert (failure.name, failure.distribution, failure.stage) == ("fake", "fake-plugin", "version")
    assert failure.describe() == (
        f"plugin 'fake' (distribution fake-plugin) failed at version: requires esper-core<0.2, "
        f"this is esper-core {esper_core.__version__}"
    )
    assert "fake_plugin_module" not in sys.modules
    assert manager.strict_exit_code() == 1


def test_a_plugin_for_this_core_range_loads(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, monkeypatch, f"esper-core<{int(esper_core.PLUGIN_API_VERSION.split('.')[0]) + 1},>={esper_core.PLUGIN_API_VERSION}")
    manager = PluginManager(autoload=True)
    assert not manager.failures and manager.strict_exit_code() == 0
    assert manager.registry.owner("ladder_kinds", "fake_kind") == "fake"


def test_the_core_requirement_check():
    assert core_requirement_problem(["esper-core>=0.2,<0.3"], "0.2.0") is None
    assert core_requirement_problem(["esper-core"], "0.2.0") is None
    assert core_requirement_problem(["torch>=2.2"], "0.2.0") is None
    assert core_requirement_problem(None, "0.2.0") is None
    assert core_requirement_problem(["esper_core>=0.3"], "0.2.0") == "requires esper-core>=0.3, this is esper-core 0.2.0"
    assert core_requirement_problem(['esper-core<0.1; extra == "old"'], "0.2.0") is None


def test_the_core_version_and_plugin_api_version_agree_with_the_packaging():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == esper_core.__version__
    version = Version(esper_core.__version__)
    assert esper_core.PLUGIN_API_VERSION == f"{version.major}.{version.minor}"
    assert any(Requirement(dep).name == "packaging" for dep in project["dependencies"])


PLUGIN_PROJECTS = sorted([*REPO.glob("plugins/*/pyproject.toml"), *REPO.glob("contrib/*/pyproject.toml")])


@pytest.mark.parametrize("pyproject", PLUGIN_PROJECTS, ids=lambda path: path.parent.name)
def test_every_plugin_in_this_repository_declares_the_core_range(pyproject):
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    (core,) = [Requirement(dep) for dep in dependencies if Requirement(dep).name == "esper-core"]
    major, minor = (int(part) for part in esper_core.PLUGIN_API_VERSION.split("."))
    assert str(core.specifier) == f"<{major}.{minor + 1},>={major}.{minor}" or set(str(core.specifier).split(",")) == {
        f">={major}.{minor}", f"<{major}.{minor + 1}"
    }
    assert core_requirement_problem([str(core)]) is None


# -- the contract's history --------------------------------------------------------------------------


def test_the_changelog_has_a_section_for_this_version():
    text = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(esper_core.__version__)}\]", text, flags=re.MULTILINE)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_hook_says_when_it_was_added(kind):
    hook_name = KINDS[kind][0]
    assert re.search(r"added in \d+\.\d+\.\d+", getattr(hookspecs, hook_name).__doc__)
    section = (REPO / "docs" / "hooks.md").read_text().split(f"## {hook_name}\n", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"[Aa]dded in \d+\.\d+\.\d+", section), f"docs/hooks.md: {hook_name} has no 'added in' note"


def _guide_block(first_line: str) -> str:
    text = (REPO / "docs" / "plugin-author-guide.md").read_text()
    blocks = [block for block in re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
              if block.startswith(first_line + "\n")]
    assert len(blocks) == 1, f"the plugin author guide should have one python block starting with {first_line!r}"
    return blocks[0]


def test_the_guide_s_topology_plugin_registers_and_its_seed_passes_the_conformance_kit(monkeypatch):
    from esper_core.testing import check_seed_family

    module = types.ModuleType("my_audio")
    monkeypatch.setitem(sys.modules, "my_audio", module)
    exec(compile(_guide_block("# my_audio.py"), "<plugin-author-guide.md: my_audio.py>", "exec"), module.__dict__)
    manager = PluginManager(autoload=False, extra=[module])
    assert not manager.failures, [failure.describe() for failure in manager.failures]
    assert manager.registry.topology("audio") is module.AUDIO
    assert manager.registry.ladder_kind("filter_banks") is module.FILTER_BANKS
    assert manager.registry.owner("seed_families", "temporal_conv") == "my_audio"
    for channels in (1, 8):
        check_seed_family(module.TEMPORAL_CONV, channels=channels, registry=manager.registry)
