"""esper-heuristic: Esper's non-learning controllers, a rule-based heuristic and a uniform-random baseline."""

from esper_heuristic.heuristic import (
    Decision,
    EnvMemory,
    HeuristicConfig,
    HeuristicController,
    Rule,
    resolve_blueprint_order,
)
from esper_heuristic.random_policy import RandomController, RandomPolicyConfig

__all__ = [
    "Decision",
    "EnvMemory",
    "HeuristicConfig",
    "HeuristicController",
    "RandomController",
    "RandomPolicyConfig",
    "Rule",
    "resolve_blueprint_order",
]
