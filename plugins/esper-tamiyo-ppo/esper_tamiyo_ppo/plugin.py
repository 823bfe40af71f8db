"""Entry-point module of esper-tamiyo-ppo: registers the learned ``ppo`` policy."""

from __future__ import annotations

from esper_core.hookspecs import PolicyRegistrar, hookimpl
from esper_core.registry import PolicyKind

from esper_tamiyo_ppo.config import PPOConfig
from esper_tamiyo_ppo.policy import PPOPolicy


@hookimpl
def esper_register_policies(register: PolicyRegistrar) -> None:
    register(
        PolicyKind(
            name="ppo",
            build=PPOPolicy,
            config_class=PPOConfig,
            learns=True,
            description=(
                "Policy V2 (Obs V3 features, LSTM, factored masked heads, V and detached Q(s, op)) "
                "trained by clipped PPO over sequence minibatches"
            ),
        )
    )
