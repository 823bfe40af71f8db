"""The ``random`` policy: a seeded, uniform-random valid-action baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from esper_core.leyline import ENUM_HEAD_SIZES, FactoredAction, LifecycleOp, is_relevant
from esper_core.tamiyo import ActionMasks, EnvObservation, PolicyContext
from esper_core.validators import optional, probability

from esper_heuristic.actions import check_batch, pinned_action

#: Enum-valued heads drawn uniformly when relevant to the chosen op, in draw order.
ENUM_HEADS: tuple[str, ...] = ("style", "tempo", "alpha_target", "alpha_speed", "alpha_curve")
#: The ops that pick a subtarget, in the order of ``ActionMasks.subtarget``'s second axis.
SUBTARGET_OPS: tuple[LifecycleOp, LifecycleOp] = (LifecycleOp.ENABLE_SUBTARGET, LifecycleOp.DISABLE_SUBTARGET)


@attrs.frozen(kw_only=True)
class RandomPolicyConfig:
    """Options of the ``random`` policy.

    ``wait_probability``: unset (default) draws the op uniformly over every allowed op, WAIT
    included; set to ``p``, WAIT is chosen with probability ``p`` first and otherwise the op is drawn
    uniformly over the allowed ops other than WAIT (WAIT when there are none).
    """

    wait_probability: float | None = attrs.field(default=None, validator=optional(probability()))


class RandomPolicy:
    """Draws, per environment: the op, then a slot valid for it, then a seed family (the blueprint head) allowed in that
    slot or a subtarget index the op may pick there, then every other head relevant to the op, each
    uniformly; irrelevant heads are 0."""

    def __init__(self, config: RandomPolicyConfig, context: PolicyContext) -> None:
        self.config = config
        self.context = context
        # The generator lives on the CPU whatever the run's device: draws are a handful of integers
        # per environment per epoch, and CPU generator states are portable across machines.
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(context.seed)
        self._last_batch_size: int | None = None

    # -- Policy protocol ---------------------------------------------------------------------------

    def begin_episode(self, round_index: int, n_envs: int) -> None:
        """Nothing carries over between episodes except the generator, which keeps running."""
        if n_envs < 1:
            raise ValueError(f"an episode needs at least one environment, got n_envs={n_envs}")
        self._last_batch_size = None
        return None

    def act(self, observations: Sequence[EnvObservation], masks: ActionMasks) -> list[FactoredAction]:
        check_batch(observations, masks, self.context)
        op_masks = masks.op.cpu()
        slot_masks = masks.slot.cpu()
        blueprint_masks = masks.blueprint.cpu()
        subtarget_masks = masks.subtarget.cpu()
        actions = [
            self._sample(op_masks[env], slot_masks[env], blueprint_masks[env], subtarget_masks[env])
            for env in range(len(observations))
        ]
        self._last_batch_size = len(actions)
        return actions

    def record(self, rewards: Sequence[float], terminal: bool) -> None:
        """The random policy does not learn from rewards; only checks they match the last actions."""
        if self._last_batch_size is None:
            raise RuntimeError("record() called before act() in this episode")
        if len(rewards) != self._last_batch_size:
            raise ValueError(f"got {len(rewards)} rewards for {self._last_batch_size} actions")
        return None

    def end_episode(self, round_index: int) -> dict[str, float]:
        """Nothing to update: the random policy reports no metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"generator_state": self._generator.get_state(), "last_batch_size": self._last_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"generator_state", "last_batch_size"}:
            raise ValueError(
                f"random policy state has keys {sorted(state)}; expected ['generator_state', 'last_batch_size']"
            )
        generator_state = state["generator_state"]
        if not isinstance(generator_state, torch.Tensor) or generator_state.dtype != torch.uint8:
            raise TypeError(f"generator_state must be a uint8 tensor, got {generator_state!r}")
        self._generator.set_state(generator_state.cpu())
        self._last_batch_size = state["last_batch_size"]
        return None

    # -- sampling ----------------------------------------------------------------------------------

    def _sample(
        self, op_mask: torch.Tensor, slot_mask: torch.Tensor, blueprint_mask: torch.Tensor, subtarget_mask: torch.Tensor
    ) -> FactoredAction:
        """One action from one environment's masks: op (n_ops), slot (n_ops, n_slots), blueprint (n_slots, n_bp),
        subtarget (2, n_slots, K)."""
        candidates = op_mask
        wait_probability = self.config.wait_probability
        if wait_probability is not None:
            if self._uniform() < wait_probability:
                return pinned_action(LifecycleOp.WAIT)
            candidates = op_mask.clone()
            candidates[int(LifecycleOp.WAIT)] = False
            if not bool(candidates.any()):
                return pinned_action(LifecycleOp.WAIT)
        op = LifecycleOp(self._choose(candidates, "op"))
        if op is LifecycleOp.WAIT:
            return pinned_action(LifecycleOp.WAIT)
        heads: dict[str, int] = {"slot": self._choose(slot_mask[int(op)], f"slot for {op.name}")}
        if is_relevant(op, "blueprint"):
            heads["blueprint"] = self._choose(blueprint_mask[heads["slot"]], f"blueprint in slot {heads['slot']}")
        if is_relevant(op, "subtarget"):
            direction = SUBTARGET_OPS.index(op)
            heads["subtarget"] = self._choose(subtarget_mask[direction, heads["slot"]], f"subtarget for {op.name}")
        for head in ENUM_HEADS:
            if is_relevant(op, head):
                heads[head] = self._draw_index(ENUM_HEAD_SIZES[head])
        return pinned_action(op, **heads)

    def _choose(self, allowed: torch.Tensor, what: str) -> int:
        """A uniformly drawn index among the True entries of a 1-D boolean mask."""
        indices = torch.nonzero(allowed).flatten()
        if indices.numel() == 0:
            raise ValueError(f"the masks allow no {what}; an op the masks allow must have a valid target")
        return int(indices[self._draw_index(int(indices.numel()))])

    def _draw_index(self, size: int) -> int:
        return int(torch.randint(size, (1,), generator=self._generator).item())

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self._generator).item())
