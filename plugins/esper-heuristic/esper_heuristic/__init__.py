"""esper-heuristic: Esper's non-learning policies: a rule-based heuristic, an AdaLoRA-style budget
schedule on top of it, a uniform-random baseline and a static control that never grows."""

from esper_heuristic.adalora_schedule import AdaLoRAScheduleConfig, AdaLoRASchedulePolicy
from esper_heuristic.heuristic import (
    Decision,
    EndedSeed,
    EnvMemory,
    HeuristicConfig,
    HeuristicPolicy,
    Rule,
    SlotEvidence,
    Verdict,
    least_important_group,
    seed_family_rungs,
    resolve_seed_family_order,
)
from esper_heuristic.random_policy import RandomPolicy, RandomPolicyConfig
from esper_heuristic.static_policy import StaticPolicy, StaticPolicyConfig

__all__ = [
    "AdaLoRAScheduleConfig",
    "AdaLoRASchedulePolicy",
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
    "least_important_group",
    "seed_family_rungs",
    "resolve_seed_family_order",
]
