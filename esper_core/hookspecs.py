"""The pluggy hook specifications every Esper plugin implements (prefix ``esper_``, entry-point group ``esper``).

Each registration hook receives a ``register`` callable owned by the core. Call it once per item with
the matching record from :mod:`esper_core.registry`; it validates the record and rejects a name that
another plugin already registered, naming both plugins. Hooks return nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "esper"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[Any], None]


@hookspec
def esper_register_hosts(register: Register) -> None:
    """Register host network families.

    :param register: call with an :class:`esper_core.registry.HostFamily` per host. ``build(config,
        task_info)`` must return an ``nn.Module`` implementing :class:`esper_core.kasmina.host.HostModule`:
        ordered ``injection_specs()`` and explicit segment routing ``forward_to`` / ``forward_from``.
    """


@hookspec
def esper_register_surfaces(register: Register) -> None:
    """Register injection surface kinds (where on a host a slot sits).

    :param register: call with an :class:`esper_core.registry.SurfaceKind` per surface: a name, a
        stable integer code (it enters observations) and the host families that can expose it.
    """


@hookspec
def esper_register_seed_families(register: Register) -> None:
    """Register seed families (blueprints).

    :param register: call with an :class:`esper_core.registry.SeedFamily` per family.
        ``build(channels, topology, config)`` must return a shape-preserving module that is the
        identity at birth and deterministic; :mod:`esper_core.testing` checks this.
    """


@hookspec
def esper_register_policies(register: Register) -> None:
    """Register controllers (Tamiyo policies), heuristic or learned.

    :param register: call with an :class:`esper_core.registry.PolicyKind` per controller.
        ``build(config, context)`` returns an :class:`esper_core.tamiyo.Controller`.
    """


@hookspec
def esper_register_tasks(register: Register) -> None:
    """Register tasks: data, loss, metric and a default host.

    :param register: call with an :class:`esper_core.registry.TaskKind` per task.
        ``build(config, context)`` returns an :class:`esper_core.tasks.Task`.
    """


@hookspec
def esper_register_rewards(register: Register) -> None:
    """Register reward modes for controllers that learn.

    :param register: call with an :class:`esper_core.registry.RewardKind` per mode.
        ``build(config, context)`` returns an :class:`esper_core.simic.RewardFunction`.
    """


@hookspec
def esper_register_telemetry_sinks(register: Register) -> None:
    """Register telemetry sinks (console, files, dashboards).

    :param register: call with an :class:`esper_core.registry.SinkKind` per sink.
        ``build(config, context)`` returns an :class:`esper_core.telemetry.TelemetrySink`.
    """
