"""The pluggy hook specifications every Esper plugin implements (prefix ``esper_``, entry-point group ``esper``).

Each registration hook receives a typed ``register`` callable owned by the core (a registrar: one class
per kind, e.g. :class:`HostRegistrar`). Call it once per item with the matching record from
:mod:`esper_core.registry`; the core validates the record and stores it as the calling plugin's. Hooks
return nothing. Each hook runs once per plugin, in isolation; see docs/hooks.md for the pluggy features
a plugin may use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from esper_core.registry import (
    HostFamily,
    LadderKind,
    PolicyKind,
    RewardKind,
    SeedFamily,
    SinkKind,
    SubtargetKind,
    SurfaceKind,
    TaskKind,
    TopologyKind,
)

__all__ = [
    "PROJECT_NAME",
    "REGISTRARS",
    "HostRegistrar",
    "LadderKindRegistrar",
    "PolicyRegistrar",
    "Register",
    "Registrar",
    "RewardRegistrar",
    "SeedFamilyRegistrar",
    "SinkRegistrar",
    "SubtargetKindRegistrar",
    "SurfaceRegistrar",
    "TaskRegistrar",
    "TopologyRegistrar",
    "hookimpl",
    "hookspec",
]

PROJECT_NAME = "esper"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: Deprecated since 0.2.0 (untyped): annotate with the hook's registrar class instead.
Register = Callable[[Any], None]


class Registrar:
    """Base of the typed ``register`` callables: the core builds one per plugin and hook."""

    __slots__ = ("_accept",)

    def __init__(self, accept: Callable[[Any], None]) -> None:
        self._accept = accept


class HostRegistrar(Registrar):
    """``register`` of :func:`esper_register_hosts` (added in 0.2.0)."""

    __slots__ = ()

    def __call__(self, family: HostFamily) -> None:
        self._accept(family)


class SurfaceRegistrar(Registrar):
    """``register`` of :func:`esper_register_surfaces` (added in 0.2.0)."""

    __slots__ = ()

    def __call__(self, surface: SurfaceKind) -> None:
        self._accept(surface)


class SeedFamilyRegistrar(Registrar):
    """``register`` of :func:`esper_register_seed_families` (added in 0.2.0)."""

    __slots__ = ()

    def __call__(self, family: SeedFamily) -> None:
        self._accept(family)


class PolicyRegistrar(Registrar):
    """``register`` of :func:`esper_register_policies` (added in 0.2.0)."""

    __slots__ = ()

    def __call__(self, policy: PolicyKind) -> None:
        self._accept(policy)


class TaskRegistrar(Registrar):
    """``register`` of :func:`esper_register_tasks` (added in 0.2.0)."""

    __slots__ = ()

    def __call__(self, task: TaskKind) -> None:
        self._accept(task)


class RewardRegistrar(Registrar):
    """``register`` of :func:`esper_register_rewards` (added in 0.2.0)."""

    __slots__ = ()

    def __call__(self, reward: RewardKind) -> None:
        self._accept(reward)


class SinkRegistrar(Registrar):
    """``register`` of :func:`esper_register_telemetry_sinks` (added in 0.2.0)."""

    __slots__ = ()

    def __call__(self, sink: SinkKind) -> None:
        self._accept(sink)


class TopologyRegistrar(Registrar):
    """``register`` of :func:`esper_register_topologies` (added in 0.2.0)."""

    __slots__ = ()

    def __call__(self, topology: TopologyKind) -> None:
        self._accept(topology)


class LadderKindRegistrar(Registrar):
    """``register`` of :func:`esper_register_ladder_kinds` (added in 0.2.0)."""

    __slots__ = ()

    def __call__(self, ladder_kind: LadderKind) -> None:
        self._accept(ladder_kind)


class SubtargetKindRegistrar(Registrar):
    """``register`` of :func:`esper_register_subtarget_kinds` (added in 0.2.1)."""

    __slots__ = ()

    def __call__(self, subtarget_kind: SubtargetKind) -> None:
        self._accept(subtarget_kind)


#: Registry kind (a key of ``esper_core.registry.KINDS``) -> the registrar class its hook receives.
REGISTRARS: dict[str, type[Registrar]] = {
    "hosts": HostRegistrar,
    "surfaces": SurfaceRegistrar,
    "seed_families": SeedFamilyRegistrar,
    "policies": PolicyRegistrar,
    "tasks": TaskRegistrar,
    "rewards": RewardRegistrar,
    "telemetry_sinks": SinkRegistrar,
    "topologies": TopologyRegistrar,
    "ladder_kinds": LadderKindRegistrar,
    "subtarget_kinds": SubtargetKindRegistrar,
}


@hookspec
def esper_register_hosts(register: HostRegistrar) -> None:
    """Register host network families (added in 0.1.0; typed registrar in 0.2.0).

    :param register: call with an :class:`esper_core.registry.HostFamily` per host. ``build(config,
        task_info)`` must return an ``nn.Module`` implementing :class:`esper_core.kasmina.host.HostModule`:
        ordered ``injection_specs()`` and explicit segment routing ``forward_to`` / ``forward_from``.
        ``topology`` must name a registered topology.
    """


@hookspec
def esper_register_surfaces(register: SurfaceRegistrar) -> None:
    """Register injection surface kinds (where on a host a slot sits) (added in 0.1.0).

    :param register: call with an :class:`esper_core.registry.SurfaceKind` per surface: a name, a
        stable integer code (it enters observations) and the host families that can expose it.
    """


@hookspec
def esper_register_seed_families(register: SeedFamilyRegistrar) -> None:
    """Register seed families (added in 0.1.0).

    :param register: call with an :class:`esper_core.registry.SeedFamily` per family.
        ``build(channels, topology, config)`` must return a shape-preserving module that is the
        identity at birth and deterministic; :mod:`esper_core.testing` checks this. Its
        ``topologies``, its ladder's ``kind`` and its subtarget inventory's ``kind`` must name registered
        topologies, ladder kinds and subtarget kinds.
    """


@hookspec
def esper_register_policies(register: PolicyRegistrar) -> None:
    """Register policies, heuristic or learned (added in 0.1.0).

    :param register: call with an :class:`esper_core.registry.PolicyKind` per policy.
        ``build(config, context)`` returns an :class:`esper_core.tamiyo.Policy`.
    """


@hookspec
def esper_register_tasks(register: TaskRegistrar) -> None:
    """Register tasks: data, loss, metric and a default host (added in 0.1.0).

    :param register: call with an :class:`esper_core.registry.TaskKind` per task.
        ``build(config, context)`` returns an :class:`esper_core.tasks.Task`.
    """


@hookspec
def esper_register_rewards(register: RewardRegistrar) -> None:
    """Register reward modes for policies that learn (added in 0.1.0).

    :param register: call with an :class:`esper_core.registry.RewardKind` per mode.
        ``build(config, context)`` returns an :class:`esper_core.simic.RewardFunction`.
    """


@hookspec
def esper_register_telemetry_sinks(register: SinkRegistrar) -> None:
    """Register telemetry sinks (console, files, dashboards) (added in 0.1.0).

    :param register: call with an :class:`esper_core.registry.SinkKind` per sink.
        ``build(config, context)`` returns an :class:`esper_core.telemetry.TelemetrySink`.
    """


@hookspec
def esper_register_topologies(register: TopologyRegistrar) -> None:
    """Register topologies: activation layouts at slots (added in 0.2.0).

    :param register: call with an :class:`esper_core.registry.TopologyKind` per layout: a name, a
        stable code (0..``MAX_TOPOLOGY_CODE``, unique), the channel axis, the axes a blend gate pools
        over and ``example_shape(batch, channels)``. The core registers ``image`` and ``sequence``.
    """


@hookspec
def esper_register_ladder_kinds(register: LadderKindRegistrar) -> None:
    """Register kinds of internal capacity ladder (added in 0.2.0).

    :param register: call with an :class:`esper_core.registry.LadderKind` per kind: a name (what
        ``LadderSpec.kind`` says) and a stable code (1..``MAX_LADDER_CODE``, unique; 0 is "no ladder").
        The core registers ``conv_stages`` (1), ``lora_rank`` (2) and ``channel_groups`` (3).
    """


@hookspec
def esper_register_subtarget_kinds(register: SubtargetKindRegistrar) -> None:
    """Register kinds of subtarget inventory group (added in 0.2.1).

    :param register: call with an :class:`esper_core.registry.SubtargetKind` per kind: a name (what
        ``SubtargetSpec.kind`` says) and a stable code (1..``MAX_SUBTARGET_CODE``, unique; 0 and the name
        ``"none"`` mean "no inventory"). The core registers ``lora_rank_block`` (1),
        ``cnn_channel_group`` (2) and ``attn_head_group`` (3).
    """
