"""What plugins register (one attrs record per kind) and the registry that validates and holds them."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

import attrs

from esper_core.errors import PluginError
from esper_core.leyline import MAX_SURFACE_CODE, InternalKind


@attrs.frozen
class NoOptions:
    """Config class for components that take no options (any key in their TOML section is an error)."""


def _is_attrs_class(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (isinstance(value, type) and attrs.has(value)):
        raise TypeError(f"{attribute.name} must be an attrs class, got {value!r}")


_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


def _valid_name(_instance: Any, _attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not _NAME_PATTERN.match(value):
        raise ValueError(
            f"name {value!r} must be lower-case letters, digits and underscores, starting with a letter"
        )


def _callable(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{attribute.name} must be callable, got {value!r}")


@attrs.frozen
class HostFamily:
    """A host network family. ``build(config, task_info)`` returns a module implementing ``HostModule``.

    ``topology`` names the activation layout at its slots (``"image"``: (B, C, H, W);
    ``"sequence"``: (B, T, D)); a seed family must support it to be planted in this host.
    """

    name: str = attrs.field(validator=_valid_name)
    build: Callable[..., Any] = attrs.field(validator=_callable)
    topology: str
    config_class: type = attrs.field(default=NoOptions, validator=_is_attrs_class)
    description: str = ""


@attrs.frozen
class SurfaceKind:
    """An injection surface: where on a host a slot sits (segment boundary, post-attention, ...).

    ``code`` is a stable small integer, 0..``MAX_SURFACE_CODE``, that enters observations as
    ``code / MAX_SURFACE_CODE`` (the same value whatever other plugins are installed);
    ``host_families`` lists the hosts that can expose it (empty: any host).
    """

    name: str = attrs.field(validator=_valid_name)
    code: int = attrs.field(validator=attrs.validators.and_(
        attrs.validators.instance_of(int), attrs.validators.ge(0), attrs.validators.le(MAX_SURFACE_CODE)))
    host_families: tuple[str, ...] = ()
    description: str = ""


def _ladder_spec(_instance: Any, _attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, LadderSpec):
        raise TypeError(f"ladder must be an esper_core.registry.LadderSpec or None, got {value!r}")


@attrs.frozen
class LadderSpec:
    """A seed family's internal capacity ladder: its kind, its top level and the level seeds start at."""

    kind: InternalKind = attrs.field(converter=InternalKind)
    max_level: int
    initial_level: int = 1

    def __attrs_post_init__(self) -> None:
        if self.kind is InternalKind.NONE:
            raise ValueError("a ladder needs an internal kind other than NONE")
        if self.max_level < 1:
            raise ValueError(f"a ladder needs max_level >= 1, got {self.max_level}")
        if not 0 <= self.initial_level <= self.max_level:
            raise ValueError(f"initial_level {self.initial_level} is not in 0..{self.max_level}")


@attrs.frozen
class SeedFamily:
    """A seed family (blueprint). ``build(channels, topology, config)`` returns a shape-preserving
    module that is the identity at birth. A family with a ``ladder`` builds an
    ``esper_core.kasmina.LadderModule`` whose capacity the controller moves with GROW_INTERNAL and
    SHRINK_INTERNAL."""

    name: str = attrs.field(validator=_valid_name)
    build: Callable[..., Any] = attrs.field(validator=_callable)
    topologies: tuple[str, ...]
    config_class: type = attrs.field(default=NoOptions, validator=_is_attrs_class)
    description: str = ""
    ladder: LadderSpec | None = attrs.field(default=None, validator=_ladder_spec)


@attrs.frozen
class PolicyKind:
    """A controller. ``build(config, context: PolicyContext)`` returns a ``Controller``."""

    name: str = attrs.field(validator=_valid_name)
    build: Callable[..., Any] = attrs.field(validator=_callable)
    config_class: type = attrs.field(default=NoOptions, validator=_is_attrs_class)
    learns: bool = False
    description: str = ""


@attrs.frozen
class TaskKind:
    """A task: data + loss + metric. ``build(config, context: TaskContext)`` returns a ``Task``."""

    name: str = attrs.field(validator=_valid_name)
    build: Callable[..., Any] = attrs.field(validator=_callable)
    default_host: str
    config_class: type = attrs.field(default=NoOptions, validator=_is_attrs_class)
    description: str = ""


@attrs.frozen
class RewardKind:
    """A reward mode. ``build(config, context: RewardContext)`` returns a ``RewardFunction``.

    ``needs_control``: the engine trains a paired static control environment beside the run's
    environments (same host initial weights and data order, never grows) and passes its scores in
    ``RewardSignals.control_metric`` / ``control_previous_metric``; every environment of a round then
    shares the control's host initial weights and data order, so they differ only by their actions.
    """

    name: str = attrs.field(validator=_valid_name)
    build: Callable[..., Any] = attrs.field(validator=_callable)
    config_class: type = attrs.field(default=NoOptions, validator=_is_attrs_class)
    description: str = ""
    needs_control: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))


@attrs.frozen
class SinkKind:
    """A telemetry sink. ``build(config, context: SinkContext)`` returns a ``TelemetrySink``."""

    name: str = attrs.field(validator=_valid_name)
    build: Callable[..., Any] = attrs.field(validator=_callable)
    config_class: type = attrs.field(default=NoOptions, validator=_is_attrs_class)
    description: str = ""


#: Registry kind -> (hook name, record class, human label).
KINDS: dict[str, tuple[str, type, str]] = {
    "hosts": ("esper_register_hosts", HostFamily, "host"),
    "surfaces": ("esper_register_surfaces", SurfaceKind, "surface"),
    "seed_families": ("esper_register_seed_families", SeedFamily, "seed family"),
    "policies": ("esper_register_policies", PolicyKind, "policy"),
    "tasks": ("esper_register_tasks", TaskKind, "task"),
    "rewards": ("esper_register_rewards", RewardKind, "reward"),
    "telemetry_sinks": ("esper_register_telemetry_sinks", SinkKind, "telemetry sink"),
}


@attrs.define
class Registry:
    """Everything the loaded plugins registered, by kind and name, with the plugin that owns each."""

    entries: dict[str, dict[str, Any]] = attrs.Factory(lambda: {kind: {} for kind in KINDS})
    owners: dict[tuple[str, str], str] = attrs.Factory(dict)

    def add(self, kind: str, entry: Any, plugin: str) -> None:
        """Validate ``entry`` and store it; raise ``PluginError`` naming both plugins on a clash."""
        _hook, record_class, label = KINDS[kind]
        if not isinstance(entry, record_class):
            raise PluginError(
                f"plugin '{plugin}' registered {entry!r} as a {label}; "
                f"expected an esper_core.registry.{record_class.__name__}"
            )
        existing = self.owners.get((kind, entry.name))
        if existing is not None:
            raise PluginError(
                f"{label} '{entry.name}' is registered by both '{existing}' and '{plugin}'"
            )
        if kind == "surfaces":
            for other in self.entries["surfaces"].values():
                if other.code == entry.code:
                    raise PluginError(
                        f"surface code {entry.code} is claimed by both '{other.name}' "
                        f"({self.owners[(kind, other.name)]}) and '{entry.name}' ({plugin})"
                    )
        self.entries[kind][entry.name] = entry
        self.owners[(kind, entry.name)] = plugin

    def remove_plugin(self, plugin: str) -> None:
        """Drop everything ``plugin`` registered (used when its registration fails half-way)."""
        for (kind, name), owner in list(self.owners.items()):
            if owner == plugin:
                del self.entries[kind][name]
                del self.owners[(kind, name)]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> Any:
        """The entry called ``name``; ``KeyError`` with a did-you-mean message when absent."""
        try:
            return self.entries[kind][name]
        except KeyError:
            raise KeyError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: str) -> str:
        label = KINDS[kind][2]
        known = self.names(kind)
        message = f"unknown {label} '{name}'"
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            message += f" (did you mean '{close[0]}'?)"
        message += f"; known: {', '.join(known) if known else 'none registered'}"
        return message

    def owner(self, kind: str, name: str) -> str:
        return self.owners[(kind, name)]

    def surface_code(self, name: str) -> int:
        return self.get("surfaces", name).code
