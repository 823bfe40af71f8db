"""esper-heuristic: Esper's non-learning policies: a rule-based heuristic, a uniform-random baseline
and a static control that never grows."""

from esper_heuristic.heuristic import (
    Decision,
    EndedSeed,
    EnvMemory,
    HeuristicConfig,
    HeuristicPolicy,
    Rule,
    SlotEvidence,
    Verdict,
    seed_family_rungs,
    resolve_seed_family_order,
)
from esper_heuristic.random_policy import RandomPolicy, RandomPolicyConfig
from esper_heuristic.static_policy import StaticPolicy, StaticPolicyConfig

__all__ = [
    "Decision",
    "EndedSeed",
    "EnvMemory",
    "HeuristicConfig",
    "HeuristicPolicy",
    "RandomPolicy",
    "RandomPolicyConfig",
    "Rule",
    "SlotEvidence",
    "StaticPolicy",
    "StaticPolicyConfig",
    "Verdict",
    "seed_family_rungs",
    "resolve_seed_family_order",
]
