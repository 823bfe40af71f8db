"""What plugins register (one attrs record per kind) and the registry that validates and holds them."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from esper_core.errors import PluginError
from esper_core.leyline import MAX_SUBTARGETS, MAX_SURFACE_CODE

__all__ = [
    "CODED_KINDS",
    "KINDS",
    "MAX_LADDER_CODE",
    "MAX_SUBTARGET_CODE",
    "MAX_SURFACE_CODE",
    "MAX_TOPOLOGY_CODE",
    "QUALIFIER",
    "SHARED_VOCABULARY_KINDS",
    "Clash",
    "HostFamily",
    "ItemWithdrawn",
    "LadderKind",
    "LadderSpec",
    "NoOptions",
    "PolicyKind",
    "Registry",
    "RewardKind",
    "SeedFamily",
    "SinkKind",
    "SubtargetKind",
    "SubtargetSpec",
    "SurfaceKind",
    "TaskKind",
    "TopologyKind",
]

#: Topology codes run 0..MAX_TOPOLOGY_CODE.
MAX_TOPOLOGY_CODE = 15
#: Ladder kind codes run 1..MAX_LADDER_CODE (0 means "no ladder" in observations).
MAX_LADDER_CODE = 15
#: Subtarget kind codes run 1..MAX_SUBTARGET_CODE (0, "none", means "no inventory").
MAX_SUBTARGET_CODE = 15


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

    ``topology`` names a registered ``TopologyKind``, the activation layout at its slots (built in:
    ``"image"``, (B, C, H, W); ``"sequence"``, (B, T, D)); a seed family must support it to be planted in
    this host. A host whose topology is not registered is withdrawn when the plugins are loaded.
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
    """A seed family's internal capacity ladder: its kind (the name of a registered ``LadderKind``,
    e.g. ``"conv_stages"``), its top level and the level seeds start at."""

    kind: str = attrs.field(validator=_valid_name)
    max_level: int
    initial_level: int = 1

    def __attrs_post_init__(self) -> None:
        if self.kind == "none":
            raise ValueError("a ladder needs a ladder kind; 'none' means no ladder")
        if self.max_level < 1:
            raise ValueError(f"a ladder needs max_level >= 1, got {self.max_level}")
        if not 0 <= self.initial_level <= self.max_level:
            raise ValueError(f"initial_level {self.initial_level} is not in 0..{self.max_level}")


def _subtarget_spec(_instance: Any, _attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, SubtargetSpec):
        raise TypeError(f"subtargets must be an esper_core.registry.SubtargetSpec or None, got {value!r}")


@attrs.frozen
class SubtargetSpec:
    """A seed family's subtarget inventory (added in 0.2.1): its kind (the name of a registered
    ``SubtargetKind``, e.g. ``"cnn_channel_group"``) and the most groups a seed of the family exposes
    (1..``MAX_SUBTARGETS``). A built seed's ``subtarget_count`` (K) is at most ``max_count``; the
    run's ``subtarget`` head has the largest ``max_count`` of its seed families as its size."""

    kind: str = attrs.field(validator=_valid_name)
    max_count: int

    def __attrs_post_init__(self) -> None:
        if self.kind == "none":
            raise ValueError("a subtarget inventory needs a subtarget kind; 'none' means no inventory")
        if isinstance(self.max_count, bool) or not isinstance(self.max_count, int) or not (
            1 <= self.max_count <= MAX_SUBTARGETS
        ):
            raise ValueError(f"subtargets max_count must be an integer from 1 to {MAX_SUBTARGETS}, got {self.max_count!r}")


@attrs.frozen
class SeedFamily:
    """A seed family. ``build(channels, topology, config)`` returns a shape-preserving
    module that is the identity at birth. ``topologies`` names registered ``TopologyKind``s (a family
    naming an unregistered one is withdrawn when the plugins are loaded). A family with a ``ladder`` builds an
    ``esper_core.kasmina.LadderModule`` whose capacity the policy moves with GROW_INTERNAL and
    SHRINK_INTERNAL. A family with ``subtargets`` builds an ``esper_core.kasmina.SubtargetInventory``
    (added in 0.2.1) whose groups the policy switches with ENABLE_SUBTARGET and DISABLE_SUBTARGET;
    its ``subtarget_kind`` is ``subtargets.kind`` and its ``subtarget_count`` at most
    ``subtargets.max_count``."""

    name: str = attrs.field(validator=_valid_name)
    build: Callable[..., Any] = attrs.field(validator=_callable)
    topologies: tuple[str, ...]
    config_class: type = attrs.field(default=NoOptions, validator=_is_attrs_class)
    description: str = ""
    ladder: LadderSpec | None = attrs.field(default=None, validator=_ladder_spec)
    subtargets: SubtargetSpec | None = attrs.field(default=None, validator=_subtarget_spec)


@attrs.frozen
class PolicyKind:
    """A policy kind. ``build(config, context: PolicyContext)`` returns a ``Policy``."""

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


def _code_in(low: int, high: int) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{attribute.name} must be an integer from {low} to {high}, got {value!r}")

    return check


def _axis(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an axis index >= 1 (axis 0 is the batch), got {value!r}")


def _int_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _axes(instance: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    for axis in value:
        _axis(instance, attribute, axis)
    if len(set(value)) != len(value):
        raise ValueError(f"{attribute.name} repeats an axis: {value!r}")


@attrs.frozen
class TopologyKind:
    """An activation layout at a slot (added in 0.2.0). Hosts name one in ``HostFamily.topology`` and seed
    families list the ones they accept in ``SeedFamily.topologies``.

    ``code`` is a stable small integer, 0..``MAX_TOPOLOGY_CODE``, unique among topologies.
    ``channel_dim`` is the axis of the channels in an activation (1 for (B, C, H, W), 2 for (B, T, D));
    ``gate_pool_dims`` the axes averaged before a learned blend gate ((2, 3) for image, () for sequence);
    ``example_shape(batch, channels)`` returns a valid activation shape, used by the conformance kit.
    """

    name: str = attrs.field(validator=_valid_name)
    code: int = attrs.field(validator=_code_in(0, MAX_TOPOLOGY_CODE))
    channel_dim: int = attrs.field(validator=_axis)
    gate_pool_dims: tuple[int, ...] = attrs.field(converter=_int_tuple, validator=_axes)
    example_shape: Callable[[int, int], tuple[int, ...]] = attrs.field(validator=_callable)
    description: str = ""

    def __attrs_post_init__(self) -> None:
        if self.channel_dim in self.gate_pool_dims:
            raise ValueError(
                f"topology '{self.name}': gate_pool_dims {self.gate_pool_dims} contains the channel axis {self.channel_dim}"
            )

    def check_example_shape(self) -> tuple[int, ...]:
        """``example_shape(2, 3)``, checked against ``channel_dim`` and ``gate_pool_dims`` (``ValueError`` if not)."""
        shape = self.example_shape(2, 3)
        where = f"topology '{self.name}': example_shape(2, 3) returned {shape!r}"
        if not isinstance(shape, tuple) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in shape
        ):
            raise ValueError(f"{where}; expected a tuple of positive ints")
        if max((self.channel_dim, *self.gate_pool_dims)) >= len(shape):
            raise ValueError(f"{where}, which has no axis {max((self.channel_dim, *self.gate_pool_dims))}")
        if shape[0] != 2 or shape[self.channel_dim] != 3:
            raise ValueError(f"{where}; expected batch 2 on axis 0 and 3 channels on axis {self.channel_dim}")
        return shape


@attrs.frozen
class LadderKind:
    """A kind of internal capacity ladder (added in 0.2.0), named by ``LadderSpec.kind``.

    ``code`` is a stable small integer, 1..``MAX_LADDER_CODE`` (0 means "no ladder" in observations),
    unique among ladder kinds.
    """

    name: str = attrs.field(validator=_valid_name)
    code: int = attrs.field(validator=_code_in(1, MAX_LADDER_CODE))
    description: str = ""


@attrs.frozen
class SubtargetKind:
    """A kind of subtarget inventory group (added in 0.2.1), named by ``SubtargetSpec.kind``.

    ``code`` is a stable small integer, 1..``MAX_SUBTARGET_CODE``, unique among subtarget kinds; 0 and
    the name ``"none"`` are reserved for "no inventory".
    """

    name: str = attrs.field(validator=_valid_name)
    code: int = attrs.field(validator=_code_in(1, MAX_SUBTARGET_CODE))
    description: str = ""

    def __attrs_post_init__(self) -> None:
        if self.name == "none":
            raise ValueError("subtarget kind name 'none' is reserved (it means no inventory)")


#: Registry kind -> (hook name, record class, human label).
KINDS: dict[str, tuple[str, type, str]] = {
    "hosts": ("esper_register_hosts", HostFamily, "host"),
    "surfaces": ("esper_register_surfaces", SurfaceKind, "surface"),
    "seed_families": ("esper_register_seed_families", SeedFamily, "seed family"),
    "policies": ("esper_register_policies", PolicyKind, "policy"),
    "tasks": ("esper_register_tasks", TaskKind, "task"),
    "rewards": ("esper_register_rewards", RewardKind, "reward"),
    "telemetry_sinks": ("esper_register_telemetry_sinks", SinkKind, "telemetry sink"),
    "topologies": ("esper_register_topologies", TopologyKind, "topology"),
    "ladder_kinds": ("esper_register_ladder_kinds", LadderKind, "ladder kind"),
    "subtarget_kinds": ("esper_register_subtarget_kinds", SubtargetKind, "subtarget kind"),
}

#: Kinds whose records carry a ``code`` that must be unique within the kind.
CODED_KINDS: frozenset[str] = frozenset({"surfaces", "topologies", "ladder_kinds", "subtarget_kinds"})
#: Kinds other records refer to by name: one meaning per name, so a second registration of a name is
#: withdrawn (the first keeps it) instead of both being kept under qualified names.
SHARED_VOCABULARY_KINDS: frozenset[str] = frozenset({"topologies", "ladder_kinds", "subtarget_kinds"})
#: Separates the plugin from the item in a qualified name: ``cnn:norm``.
QUALIFIER = ":"


class ItemWithdrawn(PluginError):
    """One registered item conflicts with another plugin's item and is withdrawn; the plugin's other items stay."""


@attrs.frozen
class Clash:
    """Two or more plugins registered the same name for one kind: each item stays, under ``plugin:name``."""

    kind: str
    name: str
    plugins: tuple[str, ...]

    @property
    def qualified(self) -> tuple[str, ...]:
        return tuple(f"{plugin}{QUALIFIER}{self.name}" for plugin in self.plugins)

    def describe(self) -> str:
        label = KINDS[self.kind][2]
        owners = " and ".join(f"'{plugin}'" for plugin in self.plugins)
        spellings = " or ".join(f"'{name}'" for name in self.qualified)
        return f"{label} '{self.name}' is registered by both {owners}; write {spellings}"


class _KindEntries(dict):
    """One kind's entries by lookup name (plain when unique, ``plugin:name`` when clashing); membership and
    indexing also accept ``plugin:name`` for an item whose plain name is unique."""

    def __init__(self, qualified: dict[str, Any]) -> None:
        super().__init__()
        self._qualified = qualified

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in self._qualified

    def __missing__(self, name: str) -> Any:
        return self._qualified[name]


class Registry:
    """Everything the loaded plugins registered, by kind and name, with the plugin that owns each.

    Two plugins may register the same name for one kind (except topologies, ladder kinds and subtarget
    kinds): both items
    are kept, each reachable as ``plugin:name``, and the plain name is ambiguous (``get`` raises
    ``PluginError`` naming both plugins). Names that are not ambiguous work both plain and qualified.
    """

    def __init__(self) -> None:
        #: kind -> {(plugin, name): entry}, in registration order.
        self._items: dict[str, dict[tuple[str, str], Any]] = {kind: {} for kind in KINDS}
        #: kind -> {lookup name: entry}: the plain name when unique, ``plugin:name`` when it clashes.
        self.entries: dict[str, _KindEntries] = {}
        for kind in KINDS:
            self._rebuild(kind)

    # -- changes ---------------------------------------------------------------------------------

    def add(self, kind: str, entry: Any, plugin: str) -> None:
        """Validate ``entry`` and store it as ``plugin``'s.

        Raises ``PluginError`` for a malformed record or a name the same plugin already registered, and
        ``ItemWithdrawn`` (naming both plugins) when the entry's code, or a topology's, ladder kind's or
        subtarget kind's name, is already taken by another item: that entry is not stored, the plugin's others stay.
        """
        record_class: Any
        _hook, record_class, label = KINDS[kind]
        if not isinstance(entry, record_class):
            raise PluginError(
                f"plugin '{plugin}' registered {entry!r} as a {label}; "
                f"expected an esper_core.registry.{record_class.__name__}"
            )
        items = self._items[kind]
        if (plugin, entry.name) in items:
            raise PluginError(f"plugin '{plugin}' registered {label} '{entry.name}' twice")
        if kind == "topologies":
            try:
                entry.check_example_shape()
            except Exception as exc:  # the plugin's callable: report what it did, by plugin
                raise PluginError(f"plugin '{plugin}': {exc}") from None
        if kind in SHARED_VOCABULARY_KINDS:
            for (owner, name), other in items.items():
                if name == entry.name:
                    raise ItemWithdrawn(
                        f"{label} '{entry.name}' of '{plugin}' is withdrawn: '{owner}' registered "
                        f"{label} '{name}' first"
                    )
        if kind in CODED_KINDS:
            for (owner, name), other in items.items():
                if other.code == entry.code:
                    raise ItemWithdrawn(
                        f"{label} code {entry.code} is claimed by both '{name}' ({owner}) and "
                        f"'{entry.name}' ({plugin}); '{entry.name}' is withdrawn"
                    )
        items[(plugin, entry.name)] = entry
        self._rebuild(kind)

    def remove(self, kind: str, name: str, plugin: str) -> None:
        """Drop one item (a cross-check found it refers to something unregistered)."""
        del self._items[kind][(plugin, name)]
        self._rebuild(kind)

    def remove_plugin(self, plugin: str) -> None:
        """Drop everything ``plugin`` registered (used when its registration fails half-way)."""
        for kind, items in self._items.items():
            for key in [key for key in items if key[0] == plugin]:
                del items[key]
            self._rebuild(kind)

    def _rebuild(self, kind: str) -> None:
        items = self._items[kind]
        counts: dict[str, int] = {}
        for _plugin, name in items:
            counts[name] = counts.get(name, 0) + 1
        table = _KindEntries({f"{plugin}{QUALIFIER}{name}": entry for (plugin, name), entry in items.items()})
        for (plugin, name), entry in items.items():
            table[name if counts[name] == 1 else f"{plugin}{QUALIFIER}{name}"] = entry
        self.entries[kind] = table

    # -- queries ---------------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        """Lookup names, sorted: plain names, and ``plugin:name`` for each item of a clashing name."""
        return sorted(dict.keys(self.entries[kind]))

    def items(self, kind: str) -> list[tuple[str, str, Any]]:
        """``(plugin, name, entry)`` for every item of ``kind``, in registration order."""
        return [(plugin, name, entry) for (plugin, name), entry in self._items[kind].items()]

    def registered_by(self, plugin: str) -> dict[str, tuple[str, ...]]:
        """The plain names ``plugin`` registered, by kind (kinds with none left out), in registration order."""
        found = {kind: tuple(name for owner, name in items if owner == plugin) for kind, items in self._items.items()}
        return {kind: names for kind, names in found.items() if names}

    def clashes(self) -> list[Clash]:
        """Every name that two or more plugins registered for one kind."""
        found: list[Clash] = []
        for kind, items in self._items.items():
            owners: dict[str, list[str]] = {}
            for plugin, name in items:
                owners.setdefault(name, []).append(plugin)
            found.extend(Clash(kind, name, tuple(plugins)) for name, plugins in owners.items() if len(plugins) > 1)
        return found

    def clash(self, kind: str, name: str) -> Clash | None:
        """The clash on plain ``name``, or None when at most one plugin registered it."""
        plugins = tuple(plugin for plugin, other in self._items[kind] if other == name)
        return Clash(kind, name, plugins) if len(plugins) > 1 else None

    def get(self, kind: str, name: str) -> Any:
        """The entry called ``name`` (plain, or ``plugin:name``).

        ``KeyError`` with a did-you-mean message when absent; ``PluginError`` naming both plugins and
        the qualified spellings when the plain name is registered by more than one plugin.
        """
        if kind not in KINDS:
            raise KeyError(f"unknown registry kind '{kind}'; known: {', '.join(KINDS)}")
        clash = self.clash(kind, name)
        if clash is not None:
            raise PluginError(clash.describe())
        try:
            return self.entries[kind][name]
        except KeyError:
            raise KeyError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: str) -> str:
        """Why ``name`` is not a lookup name of ``kind``: ambiguous (naming both plugins), or unknown with
        a did-you-mean suggestion."""
        clash = self.clash(kind, name)
        if clash is not None:
            return clash.describe()
        label = KINDS[kind][2]
        known = self.names(kind)
        message = f"unknown {label} '{name}'"
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            message += f" (did you mean '{close[0]}'?)"
        message += f"; known: {', '.join(known) if known else 'none registered'}"
        return message

    def owner(self, kind: str, name: str) -> str:
        """The plugin that registered ``name`` (plain or qualified)."""
        entry = self.get(kind, name)
        plugin, _sep, plain = name.rpartition(QUALIFIER)
        if plugin:
            return plugin
        return next(owner for (owner, other), item in self._items[kind].items() if other == plain and item is entry)

    def topology(self, name: str) -> TopologyKind:
        """The registered topology called ``name`` (``KeyError`` with suggestions when absent)."""
        return self.get("topologies", name)

    def ladder_kind(self, name: str) -> LadderKind:
        """The registered ladder kind called ``name`` (``KeyError`` with suggestions when absent)."""
        return self.get("ladder_kinds", name)

    def subtarget_kind(self, name: str) -> SubtargetKind:
        """The registered subtarget kind called ``name`` (``KeyError`` with suggestions when absent)."""
        return self.get("subtarget_kinds", name)
