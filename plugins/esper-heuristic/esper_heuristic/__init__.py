"""esper-heuristic: Esper's non-learning controllers: a rule-based heuristic, a uniform-random baseline
and a static control that never grows."""

from esper_heuristic.heuristic import (
    Decision,
    EndedSeed,
    EnvMemory,
    HeuristicConfig,
    HeuristicController,
    Rule,
    SlotEvidence,
    Verdict,
    blueprint_rungs,
    resolve_blueprint_order,
)
from esper_heuristic.random_policy import RandomController, RandomPolicyConfig
from esper_heuristic.static_policy import StaticController, StaticPolicyConfig

__all__ = [
    "Decision",
    "EndedSeed",
    "EnvMemory",
    "HeuristicConfig",
    "HeuristicController",
    "RandomController",
    "RandomPolicyConfig",
    "Rule",
    "SlotEvidence",
    "StaticController",
    "StaticPolicyConfig",
    "Verdict",
    "blueprint_rungs",
    "resolve_blueprint_order",
]
