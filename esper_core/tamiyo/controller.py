"""The controller interface every policy plugin implements, and the context it is built with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from esper_core.kasmina.slot import LifecycleSettings
from esper_core.leyline import FactoredAction, SlotConfig
from esper_core.tamiyo.masks import ActionMasks
from esper_core.tamiyo.observation import EnvObservation
from esper_core.tasks import TaskInfo


@attrs.frozen
class PolicyContext:
    """Handed to a policy's ``build``: the run's action space and where to compute."""

    slot_config: SlotConfig
    blueprints: tuple[str, ...]
    surface_codes: dict[str, int]
    n_envs: int
    episode_length: int
    max_seeds: int
    lifecycle: LifecycleSettings
    task_info: TaskInfo
    device: torch.device
    seed: int
    #: the size (parameters in use, the size rule) each blueprint has at birth in each enabled slot:
    #: ``blueprint_params[slot][blueprint]``, in slot order and ``blueprints`` order
    blueprint_params: tuple[tuple[int, ...], ...]


@runtime_checkable
class Controller(Protocol):
    """A Tamiyo controller: one decision per environment per epoch.

    ``act`` returns one ``FactoredAction`` per environment; an action the masks forbid is executed
    as WAIT and observed as failed. ``record`` reports each environment's reward after the actions
    were applied; ``end_episode`` closes a round (learners update there and return their metrics).
    ``state_dict``/``load_state_dict`` must capture everything needed for an exact resume.
    """

    def begin_episode(self, round_index: int, n_envs: int) -> None: ...

    def act(self, observations: Sequence[EnvObservation], masks: ActionMasks) -> list[FactoredAction]: ...

    def record(self, rewards: Sequence[float], terminal: bool) -> None: ...

    def end_episode(self, round_index: int) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
