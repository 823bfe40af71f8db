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
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from esper_core import __version__ as CORE_VERSION
from esper_core import hookspecs
from esper_core.errors import PluginError
from esper_core.registry import KINDS, Clash, ItemWithdrawn, Registry

__all__ = [
    "BUILTIN_PLUGIN",
    "CORE_DISTRIBUTION",
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "HOOK_NAMES",
    "ONLY_PLUGINS_ENV",
    "PLUGIN_MODULES_ENV",
    "UNSUPPORTED_HOOK_OPTIONS",
    "Clash",
    "PluginFailure",
    "PluginInfo",
    "PluginManager",
    "core_requirement_problem",
    "distribution_versions",
]

ENTRY_POINT_GROUP = "esper"
#: The distribution of the core; plugins declare the range they support as a dependency on it.
CORE_DISTRIBUTION = "esper-core"
#: Set to any non-empty value to load no entry-point plugins (built-ins only).
DISABLE_AUTOLOAD_ENV = "ESPER_DISABLE_PLUGIN_AUTOLOAD"
#: Comma-separated entry-point names: load only these entry-point plugins.
ONLY_PLUGINS_ENV = "ESPER_PLUGINS"
#: Comma-separated importable module names to load as plugins as well (a plugin under development,
#: not yet packaged). Loaded even when autoload is disabled.
PLUGIN_MODULES_ENV = "ESPER_PLUGIN_MODULES"
#: The name the core's own plugin registers under (the ``plugin`` of ``plugin:name`` for its items).
BUILTIN_PLUGIN = "esper_core"

HOOK_NAMES: tuple[str, ...] = tuple(hook for hook, _cls, _label in KINDS.values())
#: pluggy hook-implementation options that have no meaning on a registration hook (each hook runs
#: once per plugin, in isolation); a plugin that sets one is refused.
UNSUPPORTED_HOOK_OPTIONS: tuple[str, ...] = ("tryfirst", "trylast", "hookwrapper", "wrapper")


@attrs.frozen
class PluginInfo:
    """One loaded plugin and what it registered (what is still registered after every check)."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: tuple[str, ...]
    registered: dict[str, tuple[str, ...]]


@attrs.frozen
class PluginFailure:
    """A plugin, or one item of a plugin, that could not be loaded.

    ``stage`` is 'import', 'version' (its declared esper-core range excludes this core), 'hooks',
    'register' or 'check' (an item refers to a topology or ladder kind nobody registered). ``item``
    names the withdrawn item (``"host 'x'"``) when only that item failed and the plugin's others stay;
    it is None when the whole plugin was refused.
    """

    name: str
    distribution: str | None
    stage: str
    error: str
    item: str | None = None

    def describe(self) -> str:
        where = f" (distribution {self.distribution})" if self.distribution else ""
        if self.item is not None:
            return f"plugin '{self.name}'{where}: {self.item} withdrawn: {self.error}"
        return f"plugin '{self.name}'{where} failed at {self.stage}: {self.error}"


def core_requirement_problem(requires: Iterable[str] | None, core_version: str = CORE_VERSION) -> str | None:
    """Why a distribution's ``Requires-Dist`` lines exclude this core (None when they admit it).

    Only requirements on ``esper-core`` whose marker holds count; one without a version range admits
    every core.
    """
    try:
        version = Version(core_version)
    except InvalidVersion:  # a development checkout with an odd version: nothing to compare
        return None
    for line in requires or ():
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) != CORE_DISTRIBUTION:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            return f"requires {CORE_DISTRIBUTION}{requirement.specifier}, this is {CORE_DISTRIBUTION} {core_version}"
    return None


def _hook_functions(plugin: Any) -> dict[str, tuple[str, Any]]:
    """The hook implementations of ``plugin``: hook name (its ``specname`` or its own) -> (attribute, function)."""
    found = {}
    for attribute in dir(plugin):
        value = getattr(plugin, attribute, None)
        options = getattr(value, hookspecs.PROJECT_NAME + "_impl", None) if callable(value) else None
        if isinstance(options, dict):
            found[options.get("specname") or attribute] = (attribute, value)
    return found


def _one_line(text: str) -> str:
    """``text`` with its lines joined by '; ' (a failure is reported as one line)."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, PluginError):
        return _one_line(str(exc))
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r})"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the plugin"
    return _one_line(f"{type(exc).__name__}: {exc}")


class PluginManager:
    """Loads the built-in plugin, then entry-point plugins (unless disabled), then ``extra`` plugins.

    A plugin that fails to import (``SystemExit`` and ``KeyboardInterrupt`` included), declares an
    esper-core range that excludes this core, declares a hook the core does not know or with an
    option that has no meaning here, or raises while registering is recorded in ``failures`` with its
    name; everything it registered is withdrawn and the other plugins are unaffected. An item whose
    code (or topology / ladder kind name) another plugin already holds, or that names a topology or
    ladder kind nobody registered, is withdrawn alone (a failure with ``item`` set). Two plugins may
    register the same name: both items stay, as ``plugin:name`` (see ``clashes``).
    """

    def __init__(self, *, autoload: bool | None = None, extra: Iterable[Any] = ()) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.plugins: list[PluginInfo] = []
        self.failures: list[PluginFailure] = []
        self._pending: list[tuple[Any, str, str | None, str | None, bool]] = []

        from esper_core import builtin

        self._add(builtin, BUILTIN_PLUGIN, CORE_DISTRIBUTION, CORE_VERSION, builtin=True)
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
            dist = getattr(entry_point, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            dist_version = dist.version if dist is not None else None
            problem = core_requirement_problem(dist.requires) if dist is not None else None
            if problem is not None:  # refused before its module is imported
                self.failures.append(PluginFailure(entry_point.name, dist_name, "version", problem))
                continue
            try:
                module = entry_point.load()
            except BaseException as exc:  # isolation boundary: sys.exit() in a plugin is its failure, not ours
                self.failures.append(PluginFailure(entry_point.name, dist_name, "import", _error_text(exc)))
                continue
            self._add(module, entry_point.name, dist_name, dist_version, builtin=False)

    def _load_env_modules(self) -> None:
        names = [name.strip() for name in os.environ.get(PLUGIN_MODULES_ENV, "").split(",") if name.strip()]
        for name in names:
            try:
                module = importlib.import_module(name)
            except BaseException as exc:  # isolation boundary, as for entry points
                self.failures.append(PluginFailure(name, None, "import", _error_text(exc)))
                continue
            self._add(module, name, None, None, builtin=False)

    def _add(
        self, plugin: Any, name: str, dist: str | None, version: str | None, *, builtin: bool
    ) -> None:
        marked = _hook_functions(plugin)
        marked_attributes = {attribute for attribute, _function in marked.values()}
        unmarked = [
            attr for attr in HOOK_NAMES
            if attr not in marked_attributes and callable(getattr(plugin, attr, None))
        ]
        if unmarked:
            self.failures.append(
                PluginFailure(
                    name, dist, "hooks",
                    f"{', '.join(unmarked)} is not marked with @esper_core.hookimpl",
                )
            )
            return
        unknown = [hook for hook in marked if hook not in HOOK_NAMES]
        if unknown:
            hints = []
            for hook in unknown:
                close = difflib.get_close_matches(hook, HOOK_NAMES, n=1)
                hints.append(f"'{hook}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            self.failures.append(
                PluginFailure(name, dist, "hooks", f"unknown hook {', '.join(hints)}")
            )
            return
        if self._pm.has_plugin(name) or self._pm.is_registered(plugin):
            self.failures.append(
                PluginFailure(name, dist, "hooks", "a plugin with this name or module is already loaded")
            )
            return
        try:
            self._pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:  # pluggy's message spans lines
            self.failures.append(PluginFailure(name, dist, "hooks", _one_line(str(exc))))
            return
        misused = [
            f"{hook_name} is marked {option}=True"
            for hook_name in HOOK_NAMES
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls()
            if impl.plugin is plugin
            for option in UNSUPPORTED_HOOK_OPTIONS
            if getattr(impl, option, False)
        ]
        if misused:
            self._pm.unregister(plugin)
            self.failures.append(
                PluginFailure(
                    name, dist, "hooks",
                    f"{'; '.join(misused)}: registration hooks run once per plugin, in isolation, so "
                    f"{', '.join(UNSUPPORTED_HOOK_OPTIONS)} have no meaning (remove the option)",
                )
            )
            return
        self._pending.append((plugin, name, dist, version, builtin))

    # -- registration ----------------------------------------------------------------------------

    def _register_all(self) -> None:
        loaded: list[tuple[Any, str, str | None, str | None, bool, tuple[str, ...]]] = []
        for plugin, name, dist, version, builtin in self._pending:
            try:
                hooks_used = self._register_plugin(plugin, name, dist)
            except BaseException as exc:  # isolation boundary: withdraw this plugin, keep the rest
                self.registry.remove_plugin(name)
                self._pm.unregister(plugin)
                # the whole plugin failed: its item-level failures say nothing more
                self.failures = [f for f in self.failures if not (f.name == name and f.item is not None)]
                self.failures.append(PluginFailure(name, dist, "register", _error_text(exc)))
                continue
            loaded.append((plugin, name, dist, version, builtin, hooks_used))
        self._pending.clear()
        self._check_references({name: dist for _plugin, name, dist, *_rest in loaded})
        for plugin, name, dist, version, builtin, hooks_used in loaded:
            self.plugins.append(
                PluginInfo(
                    name=name,
                    module=getattr(plugin, "__name__", type(plugin).__name__),
                    distribution=dist,
                    version=version,
                    builtin=builtin,
                    hooks=hooks_used,
                    registered=self.registry.registered_by(name),
                )
            )

    def _register_plugin(self, plugin: Any, name: str, dist: str | None) -> tuple[str, ...]:
        """Call each of ``plugin``'s registration hooks through pluggy, with only this plugin's
        implementation in the call; returns the hooks it implements."""
        others = [other for other in self._pm.get_plugins() if other is not plugin]
        hooks_used = []
        for kind, (hook_name, _record, label) in KINDS.items():
            caller = self._pm.subset_hook_caller(hook_name, remove_plugins=others)
            if not caller.get_hookimpls():
                continue
            hooks_used.append(hook_name)

            def accept(entry: Any, _kind: str = kind, _label: str = label) -> None:
                try:
                    self.registry.add(_kind, entry, name)
                except ItemWithdrawn as exc:  # this item only: the plugin's others stay
                    self.failures.append(
                        PluginFailure(name, dist, "register", str(exc), item=f"{_label} '{entry.name}'")
                    )

            returned = [result for result in caller(register=hookspecs.REGISTRARS[kind](accept)) if result is not None]
            if returned:
                raise PluginError(
                    f"{hook_name} returned {returned[0]!r}; call register(...) with each record instead"
                )
        return tuple(hooks_used)

    def _check_references(self, dists: dict[str, str | None]) -> None:
        """Withdraw each host and seed family that names a topology, ladder kind or subtarget kind nobody registered."""
        topologies = self.registry.entries["topologies"]
        ladder_kinds = self.registry.entries["ladder_kinds"]
        subtarget_kinds = self.registry.entries["subtarget_kinds"]

        def withdraw(kind: str, plugin: str, name: str, problem: str) -> None:
            self.registry.remove(kind, name, plugin)
            label = KINDS[kind][2]
            self.failures.append(PluginFailure(plugin, dists.get(plugin), "check", problem, item=f"{label} '{name}'"))

        def unknown(kind: str, what: str) -> str:
            known = ", ".join(self.registry.names(kind)) or "none registered"
            return f"{KINDS[kind][2]} '{what}' is not registered (known: {known})"

        for plugin, name, host in self.registry.items("hosts"):
            if host.topology not in topologies:
                withdraw("hosts", plugin, name, unknown("topologies", host.topology))
        for plugin, name, family in self.registry.items("seed_families"):
            missing = [topology for topology in family.topologies if topology not in topologies]
            if missing:
                withdraw("seed_families", plugin, name, unknown("topologies", missing[0]))
            elif family.ladder is not None and family.ladder.kind not in ladder_kinds:
                withdraw("seed_families", plugin, name, unknown("ladder_kinds", family.ladder.kind))
            elif family.subtargets is not None and family.subtargets.kind not in subtarget_kinds:
                withdraw("seed_families", plugin, name, unknown("subtarget_kinds", family.subtargets.kind))

    # -- queries ---------------------------------------------------------------------------------

    @property
    def clashes(self) -> list[Clash]:
        """Names two or more plugins registered for one kind (each item stays, as ``plugin:name``)."""
        return self.registry.clashes()

    def strict_exit_code(self) -> int:
        """1 when any plugin (or any plugin's item) failed to load, else 0: for ``esper plugins --strict``.
        Clashes are not failures: every clashing item is loaded and reachable by its qualified name."""
        return 1 if self.failures else 0

    def failure_note(self) -> str:
        """A sentence listing failed plugins, to append to 'unknown name' errors ('' when none)."""
        if not self.failures:
            return ""
        return " (not loaded: " + "; ".join(failure.describe() for failure in self.failures) + ")"

    def lookup(self, kind: str, name: str) -> Any:
        """The registered entry (``name`` plain or ``plugin:name``), or ``PluginError`` with suggestions
        and failed plugins named (or, for a name two plugins registered, both plugins and spellings)."""
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
            "clashes": [
                {"kind": clash.kind, "name": clash.name, "plugins": list(clash.plugins), "qualified": list(clash.qualified)}
                for clash in self.clashes
            ],
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
