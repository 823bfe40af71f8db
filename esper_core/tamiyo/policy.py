"""The ``Policy`` interface every policy plugin implements, and the ``PolicyContext`` it is built with."""

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

#: ``end_episode`` metric keys the core's code reads (the whole contract: ``Policy.end_episode``):
#: ``entropy/<head>`` per action head in nats, e.g. ``entropy/op``.
ENTROPY_METRIC_PREFIX = "entropy/"
VALUE_LOSS_METRIC = "value_loss"
APPROX_KL_METRIC = "approx_kl"


@attrs.frozen
class PolicyContext:
    """Handed to a policy's ``build``: the run's action space and where to compute."""

    slot_config: SlotConfig
    seed_families: tuple[str, ...]
    surface_codes: dict[str, int]
    n_envs: int
    episode_length: int
    max_seeds: int
    lifecycle: LifecycleSettings
    task_info: TaskInfo
    device: torch.device
    seed: int
    #: the size (parameters in use, the size rule) each seed family has at birth in each enabled slot:
    #: ``seed_family_params[slot][family]``, in slot order and ``seed_families`` order
    seed_family_params: tuple[tuple[int, ...], ...]
    #: the size K of the ``subtarget`` head (added in 0.2.1): the largest ``SubtargetSpec.max_count``
    #: among ``seed_families``, 1 when none has an inventory (a head no op then uses)
    subtarget_count: int = 1


@runtime_checkable
class Policy(Protocol):
    """A policy: one decision per environment per epoch (heuristic or learned; the Tamiyo domain).

    ``act`` returns one ``FactoredAction`` per environment; an action the masks forbid is executed
    as WAIT and observed as failed. ``record`` reports each environment's reward after the actions
    were applied; ``end_episode`` closes a round (learners update there and return their metrics).
    ``state_dict``/``load_state_dict`` must capture everything needed for an exact resume.
    """

    def begin_episode(self, round_index: int, n_envs: int) -> None: ...

    def act(self, observations: Sequence[EnvObservation], masks: ActionMasks) -> list[FactoredAction]: ...

    def record(self, rewards: Sequence[float], terminal: bool) -> None: ...

    def end_episode(self, round_index: int) -> dict[str, float]:
        """Close round ``round_index``; a learner updates here. Returns the update's metrics, which the
        engine records as ``POLICY_UPDATED`` (every key, as given; sinks show them under their names).

        The core reads these keys, each optional (a policy that does not learn returns ``{}``):

        - ``entropy/<head>``: the policy's entropy for action head ``<head>`` (a name in
          ``leyline.HEADS``), in nats: the experiment comparison's head entropies, and entropy-collapse
          anomalies;
        - ``entropy``: the entropy of the whole factored action, the sum of the heads' entropies, in nats;
        - ``value_loss``: the critic's loss (value-loss blow-up anomalies);
        - ``policy_loss``: the policy-gradient loss;
        - ``approx_kl``: the approximate KL divergence between the policy before and after the update
          (KL-spike anomalies);
        - ``clip_fraction``: the fraction of samples whose probability ratio was clipped.

        Any other key is the policy's own (e.g. ``ppo/explained_variance``); the core never reads it.
        """
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

