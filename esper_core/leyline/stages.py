"""Seed lifecycle stages and the explicit table of allowed transitions between them."""

from __future__ import annotations

import enum

from esper_core.errors import LifecycleError


class SeedStage(enum.IntEnum):
    """Where a slot's seed is in its life. The integer values are stable (they enter observations)."""

    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    HOLDING = 4
    FOSSILIZED = 5
    PRUNED = 6
    EMBARGOED = 7
    RESETTING = 8


#: Every allowed move. Anything not listed here is a bug in the caller and raises ``LifecycleError``.
#:
#: - DORMANT -> GERMINATED: a seed is built in the slot (GERMINATE).
#: - GERMINATED -> TRAINING: automatic at the first lifecycle tick (gate G0: the seed's parameters are finite).
#: - TRAINING -> BLENDING: ADVANCE, gated (G1: enough incubation epochs, healthy seed gradients).
#: - BLENDING -> HOLDING: automatic at a tick once alpha has reached its target (G2).
#: - HOLDING -> BLENDING: SET_ALPHA_TARGET (raise or lower the target) or a scheduled PRUNE (blend out).
#: - HOLDING -> FOSSILIZED: FOSSILIZE; the seed becomes part of the host.
#: - GERMINATED/TRAINING/BLENDING/HOLDING -> PRUNED: PRUNE (instant), or a blend-out reaching alpha 0.
#: - PRUNED -> EMBARGOED -> RESETTING -> DORMANT: one lifecycle clock, one step per epoch tick;
#:   PRUNED -> RESETTING directly when the embargo is zero epochs.
TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
    SeedStage.GERMINATED: frozenset({SeedStage.TRAINING, SeedStage.PRUNED}),
    SeedStage.TRAINING: frozenset({SeedStage.BLENDING, SeedStage.PRUNED}),
    SeedStage.BLENDING: frozenset({SeedStage.HOLDING, SeedStage.PRUNED}),
    SeedStage.HOLDING: frozenset({SeedStage.BLENDING, SeedStage.FOSSILIZED, SeedStage.PRUNED}),
    SeedStage.FOSSILIZED: frozenset(),
    SeedStage.PRUNED: frozenset({SeedStage.EMBARGOED, SeedStage.RESETTING}),
    SeedStage.EMBARGOED: frozenset({SeedStage.RESETTING}),
    SeedStage.RESETTING: frozenset({SeedStage.DORMANT}),
}

#: Stages in which the slot holds a seed module that runs in the forward pass.
LIVE_STAGES = frozenset(
    {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING}
)
#: Stages in which the seed is an incubator: output value is the host's, the seed learns behind it.
INCUBATOR_STAGES = frozenset({SeedStage.GERMINATED, SeedStage.TRAINING})
#: Stages in which the seed's output is blended into the host with a nonzero alpha (ablatable).
BLENDED_STAGES = frozenset({SeedStage.BLENDING, SeedStage.HOLDING})
#: Stages in which the slot is occupied and cannot take a new seed.
OCCUPIED_STAGES = LIVE_STAGES | {SeedStage.FOSSILIZED}
#: Stages the slot passes through after a prune before it is DORMANT again.
RECOVERY_STAGES = frozenset({SeedStage.PRUNED, SeedStage.EMBARGOED, SeedStage.RESETTING})


def check_transition(source: SeedStage, target: SeedStage, *, slot_id: str) -> None:
    """Raise ``LifecycleError`` unless ``source -> target`` is in the transition table."""
    if target not in TRANSITIONS[source]:
        allowed = ", ".join(sorted(stage.name for stage in TRANSITIONS[source])) or "nothing"
        raise LifecycleError(
            f"slot {slot_id}: illegal transition {source.name} -> {target.name} "
            f"(from {source.name} only {allowed} is allowed)"
        )
