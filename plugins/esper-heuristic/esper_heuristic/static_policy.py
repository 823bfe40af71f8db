"""The ``static`` policy: WAIT for every environment, every epoch (the "never grows" control arm)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from esper_core.leyline import FactoredAction, LifecycleOp
from esper_core.tamiyo import ActionMasks, EnvObservation, PolicyContext

from esper_heuristic.actions import check_batch, pinned_action


@attrs.frozen(kw_only=True)
class StaticPolicyConfig:
    """The ``static`` policy has no options; any key in its ``[policy]`` section is an error."""


class StaticPolicy:
    """Never germinates, never touches a seed: the host trains alone (WAIT is always allowed)."""

    def __init__(self, config: StaticPolicyConfig, context: PolicyContext) -> None:
        self.config = config
        self.context = context
        self._last_batch_size: int | None = None

    def begin_episode(self, round_index: int, n_envs: int) -> None:
        if n_envs < 1:
            raise ValueError(f"an episode needs at least one environment, got n_envs={n_envs}")
        self._last_batch_size = None
        return None

    def act(self, observations: Sequence[EnvObservation], masks: ActionMasks) -> list[FactoredAction]:
        check_batch(observations, masks, self.context)
        self._last_batch_size = len(observations)
        return [pinned_action(LifecycleOp.WAIT) for _ in observations]

    def record(self, rewards: Sequence[float], terminal: bool) -> None:
        """The static policy does not learn; only checks the rewards match the last actions."""
        if self._last_batch_size is None:
            raise RuntimeError("record() called before act() in this episode")
        if len(rewards) != self._last_batch_size:
            raise ValueError(f"got {len(rewards)} rewards for {self._last_batch_size} actions")
        return None

    def end_episode(self, round_index: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"last_batch_size": self._last_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"last_batch_size"}:
            raise ValueError(f"static policy state has keys {sorted(state)}; expected ['last_batch_size']")
        self._last_batch_size = state["last_batch_size"]
        return None
