"""Helpers the policies share: factored actions with irrelevant heads pinned to 0, batch consistency checks."""

from __future__ import annotations

from collections.abc import Sequence

from esper_core.leyline import HEADS, FactoredAction, LifecycleOp, is_relevant
from esper_core.tamiyo import ActionMasks, EnvObservation, PolicyContext


def pinned_action(op: LifecycleOp, **heads: int) -> FactoredAction:
    """A ``FactoredAction`` for ``op`` with the given relevant heads and every other head pinned to 0.

    ``FactoredAction`` already pins every head to 0 by default; this helper adds the check that only
    heads relevant to ``op`` are set. Passing a head that is irrelevant to ``op`` is a bug and raises
    ``ValueError``.
    """
    irrelevant = sorted(head for head in heads if not is_relevant(op, head))
    if irrelevant:
        raise ValueError(f"heads {', '.join(irrelevant)} are irrelevant to {op.name}; they are pinned to 0")
    values = {head: 0 for head in HEADS if head != "op"}
    values.update(heads)
    return FactoredAction(op=op, **values)


def check_batch(
    observations: Sequence[EnvObservation], masks: ActionMasks, context: PolicyContext
) -> None:
    """Raise ``ValueError`` when the observations and masks do not describe the run's action space."""
    if masks.num_envs != len(observations):
        raise ValueError(
            f"masks cover {masks.num_envs} environments but {len(observations)} observations were given"
        )
    num_slots = context.slot_config.num_slots
    num_families = len(context.seed_families)
    if tuple(masks.slot.shape[1:]) != (len(LifecycleOp), num_slots):
        raise ValueError(
            f"slot mask has shape {tuple(masks.slot.shape)}; expected (E, {len(LifecycleOp)}, {num_slots})"
        )
    if tuple(masks.blueprint.shape[1:]) != (num_slots, num_families):
        raise ValueError(
            f"blueprint mask has shape {tuple(masks.blueprint.shape)}; expected (E, {num_slots}, {num_families})"
        )
    subtargets = context.subtarget_count
    if tuple(masks.subtarget.shape[1:]) != (2, num_slots, subtargets):
        raise ValueError(
            f"subtarget mask has shape {tuple(masks.subtarget.shape)}; expected (E, 2, {num_slots}, {subtargets}) "
            f"(the run's subtarget head has {subtargets} entries)"
        )
    for observation in observations:
        if observation.seed_families != context.seed_families:
            raise ValueError(
                f"environment {observation.env_id} observes seed families {observation.seed_families}; "
                f"the policy was built for {context.seed_families}"
            )
        slot_ids = tuple(report.slot_id for report in observation.slots)
        if slot_ids != context.slot_config.slot_ids:
            raise ValueError(
                f"environment {observation.env_id} reports slots {slot_ids}; "
                f"the policy was built for {context.slot_config.slot_ids}"
            )
