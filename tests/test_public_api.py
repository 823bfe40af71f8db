"""The public API surface: plugins in this repository import only documented esper_core modules, and only names in their ``__all__``."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import esper_core

REPO = Path(__file__).resolve().parents[1]

#: The modules a plugin may import, each with an explicit ``__all__`` (docs/plugin-author-guide.md,
#: "What a plugin may import"). Everything else in esper_core is internal and may change in any release.
DOCUMENTED_MODULES: tuple[str, ...] = (
    "esper_core",
    "esper_core.config",
    "esper_core.errors",
    "esper_core.hookspecs",
    "esper_core.kasmina",
    "esper_core.leyline",
    "esper_core.leyline.telemetry",
    "esper_core.plugins",
    "esper_core.registry",
    "esper_core.runs",
    "esper_core.simic",
    "esper_core.tamiyo",
    "esper_core.tasks",
    "esper_core.telemetry",
    "esper_core.testing",
    "esper_core.testing.toy_inventory",
    "esper_core.validators",
)

PLUGIN_FILES = sorted(path for root in ("plugins", "contrib") for path in (REPO / root).rglob("*.py"))


def _is_submodule(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except ModuleNotFoundError:
        return False


def _esper_imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every esper_core import in ``path``; names is () for ``import module``.

    ``from esper_core.leyline import telemetry`` counts as an import of the module
    ``esper_core.leyline.telemetry`` (a submodule), not of a name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(
                (node.lineno, alias.name, ()) for alias in node.names if alias.name.split(".")[0] == "esper_core"
            )
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "esper_core":
                continue
            names = tuple(alias.name for alias in node.names)
            submodules = [name for name in names if _is_submodule(f"{node.module}.{name}")]
            found.extend((node.lineno, f"{node.module}.{name}", ()) for name in submodules)
            names = tuple(name for name in names if name not in submodules)
            if not names:
                continue
            found.append((node.lineno, node.module, names))
    return found


def test_the_scan_covers_the_plugins_and_their_tests():
    names = {path.relative_to(REPO).as_posix() for path in PLUGIN_FILES}
    assert "plugins/esper-cnn/esper_cnn/plugin.py" in names
    assert any(name.startswith("plugins/esper-cnn/tests/") for name in names)
    assert "contrib/template/my_seed_plugin/plugin.py" in names


def test_every_documented_module_declares_its_public_names():
    missing = []
    for module_name in DOCUMENTED_MODULES:
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None)
        if not isinstance(exported, (list, tuple)) or not exported:
            missing.append(f"{module_name} has no __all__")
            continue
        missing.extend(f"{module_name}.__all__ lists '{name}', which it does not define"
                       for name in exported if not hasattr(module, name))
    assert not missing, "\n".join(missing)


def test_plugins_import_only_documented_modules_and_names():
    offenders = []
    exports: dict[str, set[str] | None] = {}
    for path in PLUGIN_FILES:
        where = path.relative_to(REPO).as_posix()
        for line, module_name, names in _esper_imports(path):
            if module_name not in DOCUMENTED_MODULES:
                offenders.append(f"{where}:{line}: {module_name} is not a documented module")
                continue
            if module_name not in exports:
                exported = getattr(importlib.import_module(module_name), "__all__", None)
                exports[module_name] = set(exported) if exported else None
            public = exports[module_name]
            if public is None:  # test_every_documented_module_declares_its_public_names names the module
                continue
            for name in names:
                if name == "*" or name not in public:
                    offenders.append(f"{where}:{line}: {module_name}.{name} is not in {module_name}.__all__")
    assert not offenders, f"{len(offenders)} imports of internal esper_core names:\n" + "\n".join(offenders)


def test_plugins_do_not_import_this_repository_s_test_package():
    offenders = []
    for path in PLUGIN_FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            modules = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            offenders.extend(
                f"{path.relative_to(REPO).as_posix()}:{node.lineno}: imports {module}"
                for module in modules if module.split(".")[0] in {"tests", "benchmarks"}
            )
    assert not offenders, "a plugin must run outside this repository (use esper_core.testing):\n" + "\n".join(offenders)


def test_the_core_ships_its_type_information():
    assert (Path(esper_core.__file__).parent / "py.typed").is_file()
    text = (REPO / "pyproject.toml").read_text()
    assert 'esper_core = ["py.typed"]' in text


@pytest.mark.parametrize("module_name", ["esper_core", "esper_core.registry", "esper_core.hookspecs", "esper_core.plugins"])
def test_the_plugin_system_modules_export_what_the_docs_name(module_name):
    module = importlib.import_module(module_name)
    expected = {
        "esper_core": {"hookimpl", "PLUGIN_API_VERSION", "__version__"},
        "esper_core.registry": {"TopologyKind", "LadderKind", "LadderSpec", "SeedFamily", "HostFamily", "MAX_TOPOLOGY_CODE", "MAX_LADDER_CODE"},
        "esper_core.hookspecs": {"hookimpl", "HostRegistrar", "SeedFamilyRegistrar", "TopologyRegistrar", "LadderKindRegistrar"},
        "esper_core.plugins": {"PluginManager", "PluginFailure", "ENTRY_POINT_GROUP"},
    }[module_name]
    assert expected <= set(module.__all__)
