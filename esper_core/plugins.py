"""The plugin manager: discovers plugins through entry points, loads each in isolation, fills the registry."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from esper_core import hookspecs
from esper_core.errors import PluginError
from esper_core.registry import KINDS, Registry

ENTRY_POINT_GROUP = "esper"
#: Set to any non-empty value to load no entry-point plugins (built-ins only).
DISABLE_AUTOLOAD_ENV = "ESPER_DISABLE_PLUGIN_AUTOLOAD"
#: Comma-separated entry-point names: load only these entry-point plugins.
ONLY_PLUGINS_ENV = "ESPER_PLUGINS"
#: Comma-separated importable module names to load as plugins as well (a plugin under development,
#: not yet packaged). Loaded even when autoload is disabled.
PLUGIN_MODULES_ENV = "ESPER_PLUGIN_MODULES"

HOOK_NAMES: tuple[str, ...] = tuple(hook for hook, _cls, _label in KINDS.values())


@attrs.frozen
class PluginInfo:
    """One loaded plugin and what it registered."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: tuple[str, ...]
    registered: dict[str, tuple[str, ...]]


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded; ``stage`` is 'import', 'hooks' or 'register'."""

    name: str
    distribution: str | None
    stage: str
    error: str

    def describe(self) -> str:
        where = f" (distribution {self.distribution})" if self.distribution else ""
        return f"plugin '{self.name}'{where} failed at {self.stage}: {self.error}"


def _hook_functions(plugin: Any) -> dict[str, Any]:
    """The attributes of ``plugin`` marked as Esper hook implementations, by name."""
    found = {}
    for attribute in dir(plugin):
        value = getattr(plugin, attribute, None)
        if callable(value) and hasattr(value, hookspecs.PROJECT_NAME + "_impl"):
            found[attribute] = value
    return found


class PluginManager:
    """Loads the built-in plugin, then entry-point plugins (unless disabled), then ``extra`` plugins.

    A plugin that fails to import, declares a hook the core does not know, or raises while
    registering is recorded in ``failures`` with its name; everything it registered is withdrawn
    and the other plugins are unaffected.
    """

    def __init__(self, *, autoload: bool | None = None, extra: Iterable[Any] = ()) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.plugins: list[PluginInfo] = []
        self.failures: list[PluginFailure] = []
        self._pending: list[tuple[Any, str, str | None, str | None, bool]] = []

        from esper_core import builtin

        self._add(builtin, "esper_core", "esper-core", _version("esper-core"), builtin=True)
        if autoload is None:
            autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
        if autoload:
            self._load_entry_points()
        self._load_env_modules()
        for index, plugin in enumerate(extra):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
            self._add(plugin, name, None, None, builtin=False)
        self._register_all()
        self._pm.check_pending()

    # -- discovery -------------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        only = os.environ.get(ONLY_PLUGINS_ENV)
        wanted = {name.strip() for name in only.split(",") if name.strip()} if only else None
        entry_points = sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name
        )
        for entry_point in entry_points:
            if wanted is not None and entry_point.name not in wanted:
                continue
            dist = entry_point.dist
            dist_name = dist.metadata["Name"] if dist is not None else None
            dist_version = dist.version if dist is not None else None
            try:
                module = entry_point.load()
            except Exception as exc:  # isolation boundary: report the plugin by name, load the rest
                self.failures.append(
                    PluginFailure(entry_point.name, dist_name, "import", f"{type(exc).__name__}: {exc}")
                )
                continue
            self._add(module, entry_point.name, dist_name, dist_version, builtin=False)

    def _load_env_modules(self) -> None:
        names = [name.strip() for name in os.environ.get(PLUGIN_MODULES_ENV, "").split(",") if name.strip()]
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception as exc:  # isolation boundary, as for entry points
                self.failures.append(PluginFailure(name, None, "import", f"{type(exc).__name__}: {exc}"))
                continue
            self._add(module, name, None, None, builtin=False)

    def _add(
        self, plugin: Any, name: str, dist: str | None, version: str | None, *, builtin: bool
    ) -> None:
        marked = _hook_functions(plugin)
        unmarked = [
            attr for attr in HOOK_NAMES if attr not in marked and callable(getattr(plugin, attr, None))
        ]
        if unmarked:
            self.failures.append(
                PluginFailure(
                    name, dist, "hooks",
                    f"{', '.join(unmarked)} is not marked with @esper_core.hookimpl",
                )
            )
            return
        unknown = [attr for attr in marked if attr not in HOOK_NAMES]
        if unknown:
            hints = []
            for attr in unknown:
                close = difflib.get_close_matches(attr, HOOK_NAMES, n=1)
                hints.append(f"'{attr}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            self.failures.append(
                PluginFailure(name, dist, "hooks", f"unknown hook {', '.join(hints)}")
            )
            return
        if self._pm.has_plugin(name):
            self.failures.append(
                PluginFailure(name, dist, "hooks", "a plugin with this name is already loaded")
            )
            return
        try:
            self._pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            self.failures.append(PluginFailure(name, dist, "hooks", str(exc)))
            return
        self._pending.append((plugin, name, dist, version, builtin))

    # -- registration ----------------------------------------------------------------------------

    def _register_all(self) -> None:
        for plugin, name, dist, version, builtin in self._pending:
            registered: dict[str, list[str]] = {kind: [] for kind in KINDS}
            hooks_used: list[str] = []
            try:
                for kind, (hook_name, _cls, _label) in KINDS.items():
                    for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                        if impl.plugin_name != name:
                            continue
                        hooks_used.append(hook_name)

                        def register(entry: Any, _kind: str = kind) -> None:
                            self.registry.add(_kind, entry, name)
                            registered[_kind].append(entry.name)

                        impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:  # isolation boundary: withdraw this plugin, keep the rest
                self.registry.remove_plugin(name)
                self._pm.unregister(name=name)
                error = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
                self.failures.append(PluginFailure(name, dist, "register", error))
                continue
            self.plugins.append(
                PluginInfo(
                    name=name,
                    module=getattr(plugin, "__name__", type(plugin).__name__),
                    distribution=dist,
                    version=version,
                    builtin=builtin,
                    hooks=tuple(hooks_used),
                    registered={kind: tuple(names) for kind, names in registered.items() if names},
                )
            )
        self._pending.clear()

    # -- queries ---------------------------------------------------------------------------------

    def failure_note(self) -> str:
        """A sentence listing failed plugins, to append to 'unknown name' errors ('' when none)."""
        if not self.failures:
            return ""
        return " (not loaded: " + "; ".join(failure.describe() for failure in self.failures) + ")"

    def lookup(self, kind: str, name: str) -> Any:
        """The registered entry, or ``PluginError`` with suggestions and failed plugins named."""
        try:
            return self.registry.get(kind, name)
        except KeyError as exc:
            raise PluginError(str(exc.args[0]) + self.failure_note()) from None

    def as_json(self) -> dict[str, Any]:
        return {
            "plugins": [
                {
                    "name": info.name,
                    "module": info.module,
                    "distribution": info.distribution,
                    "version": info.version,
                    "builtin": info.builtin,
                    "hooks": list(info.hooks),
                    "registered": {kind: list(names) for kind, names in info.registered.items()},
                }
                for info in self.plugins
            ],
            "failures": [attrs.asdict(failure) for failure in self.failures],
        }


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def distribution_versions(manager: PluginManager) -> dict[str, str | None]:
    """Versions of every loaded plugin's distribution plus torch, for ``environment.json``."""
    versions: dict[str, str | None] = {}
    for info in manager.plugins:
        if info.distribution:
            versions[info.distribution] = info.version
    for dist in ("torch", "numpy", "pluggy", "attrs", "cattrs"):
        versions[dist] = _version(dist)
    return versions

