"""The distribution's entry point registers its four policies, and what it registers builds working policies."""

from __future__ import annotations

from esper_core.plugins import PluginManager
from esper_core.tamiyo import Policy
from esper_heuristic import (
    AdaLoRAScheduleConfig,
    AdaLoRASchedulePolicy,
    HeuristicConfig,
    HeuristicPolicy,
    RandomPolicy,
    RandomPolicyConfig,
    StaticPolicy,
    StaticPolicyConfig,
)


def test_entry_point_registers_heuristic_adalora_schedule_random_and_static():
    manager = PluginManager()
    assert [failure for failure in manager.failures if failure.distribution == "esper-heuristic"] == []
    names = manager.registry.names("policies")
    assert {"heuristic", "adalora_schedule", "random", "static"} <= set(names)
    assert manager.registry.owner("policies", "heuristic") == "heuristic"
    assert manager.registry.owner("policies", "adalora_schedule") == "heuristic"
    assert manager.registry.owner("policies", "random") == "heuristic"
    assert manager.registry.owner("policies", "static") == "heuristic"
    info = next(plugin for plugin in manager.plugins if plugin.name == "heuristic")
    assert info.distribution == "esper-heuristic"
    assert info.registered == {"policies": ("heuristic", "adalora_schedule", "random", "static")}


def test_registered_policies_build_non_learning_policies(kit):
    manager = PluginManager()
    expected = {
        "heuristic": (HeuristicConfig, HeuristicPolicy),
        "adalora_schedule": (AdaLoRAScheduleConfig, AdaLoRASchedulePolicy),
        "random": (RandomPolicyConfig, RandomPolicy),
        "static": (StaticPolicyConfig, StaticPolicy),
    }
    for name, (config_class, policy_class) in expected.items():
        kind = manager.lookup("policies", name)
        assert kind.learns is False
        assert kind.config_class is config_class
        policy = kind.build(kind.config_class(), kit.context())
        assert isinstance(policy, policy_class)
        assert isinstance(policy, Policy)
