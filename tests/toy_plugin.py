"""The core tests' toy plugin: ``esper_core.testing.toy_plugin``, loaded under this module's name.

Core tests register it as ``tests.toy_plugin`` (``PluginManager(extra=[toy_plugin])``,
``ESPER_PLUGIN_MODULES=tests.toy_plugin``) and read its objects here; everything is the testing kit's
own object (``INSTANCES`` and ``MEMORY_EVENTS`` are the same lists). Plugins' tests use
``esper_core.testing.toy_plugin_manager`` instead.
"""

from __future__ import annotations

from esper_core import hookimpl
from esper_core.hookspecs import TaskRegistrar
from esper_core.registry import TaskKind
from esper_core.testing.toy_plugin import (
    INSTANCES,
    MEMORY_EVENTS,
    TOY_LADDER,
    TOY_TASK_INFO,
    MemorySink,
    ScriptedConfig,
    ScriptedPolicy,
    ToyHost,
    ToyHostConfig,
    ToyLadder,
    ToySeed,
    ToySeedConfig,
    ToyTaskConfig,
    build_toy_ladder,
    build_toy_seed,
    build_toy_task,
    esper_register_hosts,
    esper_register_ladder_kinds,
    esper_register_policies,
    esper_register_rewards,
    esper_register_seed_families,
    esper_register_subtarget_kinds,
    esper_register_surfaces,
    esper_register_telemetry_sinks,
    esper_register_topologies,
    toy_signal_shape,
)

__all__ = [
    "INSTANCES",
    "MEMORY_EVENTS",
    "TOY_LADDER",
    "TOY_TASK_INFO",
    "MemorySink",
    "ScriptedConfig",
    "ScriptedPolicy",
    "ToyHost",
    "ToyHostConfig",
    "ToyLadder",
    "ToySeed",
    "ToySeedConfig",
    "ToyTaskConfig",
    "build_toy_ladder",
    "build_toy_seed",
    "build_toy_task",
    "esper_register_hosts",
    "esper_register_ladder_kinds",
    "esper_register_policies",
    "esper_register_rewards",
    "esper_register_seed_families",
    "esper_register_subtarget_kinds",
    "esper_register_surfaces",
    "esper_register_tasks",
    "esper_register_telemetry_sinks",
    "esper_register_topologies",
    "toy_signal_shape",
]


@hookimpl
def esper_register_tasks(register: TaskRegistrar) -> None:
    """The toy task, built through this module's ``build_toy_task`` (so a test can monkeypatch it here)."""
    register(TaskKind(name="toy", build=build_toy_task, default_host="toy", config_class=ToyTaskConfig))
