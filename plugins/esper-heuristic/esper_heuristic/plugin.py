"""Entry-point module of esper-heuristic: registers the ``heuristic``, ``adalora_schedule``, ``random`` and ``static`` policies."""

from __future__ import annotations

from esper_core.hookspecs import PolicyRegistrar, hookimpl
from esper_core.registry import PolicyKind

from esper_heuristic.adalora_schedule import AdaLoRAScheduleConfig, AdaLoRASchedulePolicy
from esper_heuristic.heuristic import HeuristicConfig, HeuristicPolicy
from esper_heuristic.random_policy import RandomPolicy, RandomPolicyConfig
from esper_heuristic.static_policy import StaticPolicy, StaticPolicyConfig


@hookimpl
def esper_register_policies(register: PolicyRegistrar) -> None:
    register(
        PolicyKind(
            name="heuristic",
            build=HeuristicPolicy,
            config_class=HeuristicConfig,
            learns=False,
            description=(
                "rules: prune damaging seeds, fossilize ones that pay their price, advance incubated ones, "
                "germinate on a validation plateau (start cheap, escalate when growth pays)"
            ),
        )
    )
    register(
        PolicyKind(
            name="adalora_schedule",
            build=AdaLoRASchedulePolicy,
            config_class=AdaLoRAScheduleConfig,
            learns=False,
            description=(
                "the heuristic's lifecycle plus an AdaLoRA-style budget schedule: after a seed with a subtarget "
                "inventory is blended in, disable its least important group every few epochs down to a "
                "parameter budget (a baseline; no learning)"
            ),
        )
    )
    register(
        PolicyKind(
            name="random",
            build=RandomPolicy,
            config_class=RandomPolicyConfig,
            learns=False,
            description="uniform-random valid actions, seeded from the run seed (a baseline)",
        )
    )
    register(
        PolicyKind(
            name="static",
            build=StaticPolicy,
            config_class=StaticPolicyConfig,
            learns=False,
            description="always WAIT: the host trains alone (the never-grows control arm)",
        )
    )
