"""Ladder rules: grow a HOLDING ladder seed while its contribution rises; undo a growth that does not pay."""

from __future__ import annotations

import attrs

from esper_core.leyline import LifecycleOp, SeedMetrics, SeedStage
from esper_heuristic import Rule


def ladder_slot(kit, slot, *, level, contribution, velocity, seed_id="ladder-seed"):
    report = kit.slot(slot, SeedStage.HOLDING, contribution=contribution, seed_id=seed_id)
    return attrs.evolve(
        report, internal_kind="conv_stages", internal_level=level, internal_max_level=4,
        metrics=SeedMetrics(counterfactual_contribution=contribution, contribution_velocity=velocity),
    )


def test_a_rising_ladder_seed_grows_instead_of_fossilizing(kit):
    policy = kit.heuristic(ladder_min_gain=0.005, ladder_patience=2)
    rising = kit.observation(epoch=8, slots={0: ladder_slot(kit, 0, level=1, contribution=0.04, velocity=0.02)})
    decision = kit.decide(policy, rising)
    assert decision.rule is Rule.GROW_RISING and decision.action.op is LifecycleOp.GROW_INTERNAL
    # while the growth is on trial the seed is not fossilized even though it qualifies
    waiting = kit.observation(epoch=9, slots={0: ladder_slot(kit, 0, level=2, contribution=0.045, velocity=0.0)},
                              metric_history=kit.rising_history(9))
    assert kit.decide(policy, waiting).rule is Rule.WAIT


def test_a_growth_that_does_not_pay_is_undone_and_not_retried(kit):
    policy = kit.heuristic(ladder_min_gain=0.005, ladder_patience=2)
    kit.decide(policy, kit.observation(epoch=8, slots={0: ladder_slot(kit, 0, level=1, contribution=0.04, velocity=0.02)}))
    flat = kit.observation(epoch=10, slots={0: ladder_slot(kit, 0, level=2, contribution=0.041, velocity=0.001)})
    decision = kit.decide(policy, flat)
    assert decision.rule is Rule.SHRINK_UNPAID and decision.action.op is LifecycleOp.SHRINK_INTERNAL
    back = kit.observation(epoch=11, slots={0: ladder_slot(kit, 0, level=1, contribution=0.04, velocity=0.02)},
                           metric_history=kit.rising_history(11))
    assert kit.decide(policy, back).rule is Rule.FOSSILIZE  # capped at level 1: no second growth


def test_a_growth_that_pays_is_kept_and_may_grow_again(kit):
    policy = kit.heuristic(ladder_min_gain=0.005, ladder_patience=2)
    kit.decide(policy, kit.observation(epoch=8, slots={0: ladder_slot(kit, 0, level=1, contribution=0.04, velocity=0.02)}))
    paid = kit.observation(epoch=10, slots={0: ladder_slot(kit, 0, level=2, contribution=0.07, velocity=0.02)})
    decision = kit.decide(policy, paid)
    assert decision.rule is Rule.GROW_RISING
    state = policy.state_dict()
    restored = kit.heuristic(ladder_min_gain=0.005, ladder_patience=2)
    restored.load_state_dict(state)
    assert restored.state_dict() == state


def test_a_rising_ladder_seed_that_does_not_pay_its_price_is_not_grown(kit):
    policy = kit.heuristic(ladder_min_gain=0.005, ladder_patience=2, holding_patience=5)
    rising = ladder_slot(kit, 0, level=1, contribution=0.04, velocity=0.02)
    costly = attrs.evolve(rising, seed_params=5000)  # price 0.05
    decision = kit.decide(policy, kit.observation(epoch=8, slots={0: costly}, metric_history=kit.rising_history(8)))
    assert decision.rule is Rule.WAIT
    paying = attrs.evolve(costly, seed_params=3000)  # price 0.03
    assert kit.decide(policy, kit.observation(epoch=9, slots={0: paying})).rule is Rule.GROW_RISING
