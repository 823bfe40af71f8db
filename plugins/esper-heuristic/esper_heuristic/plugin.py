"""Entry-point module of esper-heuristic: registers the ``heuristic`` and ``random`` policies."""

from __future__ import annotations

from esper_core.hookspecs import Register, hookimpl
from esper_core.registry import PolicyKind

from esper_heuristic.heuristic import HeuristicConfig, HeuristicController
from esper_heuristic.random_policy import RandomController, RandomPolicyConfig


@hookimpl
def esper_register_policies(register: Register) -> None:
    register(
        PolicyKind(
            name="heuristic",
            build=HeuristicController,
            config_class=HeuristicConfig,
            learns=False,
            description=(
                "rules: prune damaging seeds, fossilize proven ones, advance incubated ones, "
                "germinate on a validation plateau"
            ),
        )
    )
    register(
        PolicyKind(
            name="random",
            build=RandomController,
            config_class=RandomPolicyConfig,
            learns=False,
            description="uniform-random valid actions, seeded from the run seed (a baseline)",
        )
    )
