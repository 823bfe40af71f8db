"""The heuristic's subtarget rule on synthetic reports: disable the least important group of a seed that does not pay its rent, enable the lowest disabled group of one that pays comfortably."""

from __future__ import annotations

import json

import attrs
import pytest

from esper_core.leyline import LifecycleOp, SeedMetrics, SeedStage
from esper_heuristic import EnvMemory, Rule

K = 4
HOLDING, BLENDING = SeedStage.HOLDING, SeedStage.BLENDING
#: 100 parameters per enabled group: at the default price (0.01 per 1,000) the rent is 0.001 per group
PER_GROUP = 100


def inventory_slot(kit, mask, importance, *, contribution, stage=HOLDING, alpha=1.0, seed_id="inv", slot=0,
                   velocity=None, ladder=False):
    """A seed with an inventory of ``len(mask)`` groups whose size is 100 parameters per enabled group."""
    report = kit.slot(slot, stage, contribution=contribution, seed_id=seed_id, seed_params=PER_GROUP * sum(mask))
    report = attrs.evolve(
        report, alpha=alpha, subtarget_kind="cnn_channel_group", subtarget_count=len(mask),
        subtarget_active_count=sum(mask), subtarget_active_mask=tuple(mask), subtarget_importance=tuple(importance),
        metrics=SeedMetrics(counterfactual_contribution=contribution, contribution_velocity=velocity),
    )
    if ladder:
        report = attrs.evolve(report, internal_kind="channel_groups", internal_level=sum(mask),
                              internal_max_level=len(mask))
    return report


def heuristic(kit, **options):
    options.setdefault("holding_patience", 20)  # the tests judge the subtarget rule, not rule 3
    return kit.heuristic(subtarget_count=K, **options)


def decide(kit, policy, epoch, *reports):
    return kit.decide(policy, kit.observation(epoch=epoch, slots=dict(enumerate(reports)),
                                              metric_history=kit.rising_history(epoch)))


def test_a_seed_that_does_not_pay_its_rent_disables_its_least_important_enabled_group(kit):
    policy = heuristic(kit)
    # rent of 3 groups: 0.003; the disabled group 3 is the least important overall but is not a candidate
    seed = inventory_slot(kit, [True, True, True, False], [0.5, 0.1, 0.3, 0.0], contribution=0.002)
    decision = decide(kit, policy, 10, seed)
    assert decision.rule is Rule.DISABLE_RENT
    assert (decision.action.op, decision.action.slot, decision.action.subtarget) == (LifecycleOp.DISABLE_SUBTARGET, 0, 1)
    # the change is on trial for subtarget_patience epochs: no second change and no fossilization meanwhile
    after = inventory_slot(kit, [True, False, True, False], [0.5, 0.0, 0.3, 0.0], contribution=0.009)
    assert decide(kit, policy, 11, after).rule is Rule.WAIT
    # judged at epoch 12: it pays comfortably now but may not get its third group back (ceiling 2) ...
    assert decide(kit, policy, 12, after).rule is Rule.FOSSILIZE
    # ... while a seed that still does not pay gives up the next least important group
    policy = heuristic(kit)
    decide(kit, policy, 10, seed)
    unpaid = inventory_slot(kit, [True, False, True, False], [0.5, 0.0, 0.3, 0.0], contribution=0.001)
    decision = decide(kit, policy, 12, unpaid)
    assert decision.rule is Rule.DISABLE_RENT and decision.action.subtarget == 2


def test_ties_in_importance_disable_the_highest_index_and_one_group_is_never_disabled(kit):
    policy = heuristic(kit)
    seed = inventory_slot(kit, [True, True, True, True], [0.2, 0.2, 0.9, 0.2], contribution=-0.001)
    decision = decide(kit, policy, 10, seed)
    assert decision.rule is Rule.DISABLE_RENT and decision.action.subtarget == 3
    last = inventory_slot(kit, [False, False, True, False], [0.0, 0.0, 0.9, 0.0], contribution=-0.001, seed_id="last")
    assert decide(kit, heuristic(kit), 10, last).rule is Rule.WAIT  # rule 3 will prune it, not this rule


def test_a_seed_that_pays_comfortably_enables_its_lowest_disabled_group(kit):
    policy = heuristic(kit, subtarget_enable_margin=3.0, fossilize_threshold=0.05)
    # rent of 2 groups 0.002: 0.0061 > 3 x 0.002, below fossilize_threshold so rule 2 does not end it
    seed = inventory_slot(kit, [True, False, True, False], [0.4, 0.0, 0.6, 0.0], contribution=0.0061)
    decision = decide(kit, policy, 10, seed)
    assert decision.rule is Rule.ENABLE_PAYING
    assert (decision.action.op, decision.action.subtarget) == (LifecycleOp.ENABLE_SUBTARGET, 1)
    modest = inventory_slot(kit, [True, False, True, False], [0.4, 0.0, 0.6, 0.0], contribution=0.005, seed_id="m")
    assert decide(kit, heuristic(kit, subtarget_enable_margin=3.0, fossilize_threshold=0.05), 10, modest).rule \
        is Rule.WAIT  # pays (0.005 > 0.002) but not comfortably
    full = inventory_slot(kit, [True, True, True, True], [0.4, 0.1, 0.6, 0.2], contribution=0.05, seed_id="f")
    assert decide(kit, heuristic(kit, fossilize_threshold=0.5), 10, full).rule is Rule.WAIT  # nothing to enable


def test_a_blending_seed_is_charged_rent_on_its_alpha(kit):
    # 4 groups, rent 0.004 at alpha 1 but 0.001 at alpha 0.25: 0.003 pays comfortably at that alpha
    seed = inventory_slot(kit, [True, True, True, False], [0.4, 0.1, 0.6, 0.0], contribution=0.0025, stage=BLENDING,
                          alpha=0.25)
    assert decide(kit, heuristic(kit), 10, seed).rule is Rule.ENABLE_PAYING
    holding = attrs.evolve(seed, stage=HOLDING, alpha=1.0)
    assert decide(kit, heuristic(kit), 10, holding).rule is Rule.DISABLE_RENT
    # a blending seed that does not pay is not judged yet: its groups are still coming in
    unpaid = attrs.evolve(seed, metrics=SeedMetrics(counterfactual_contribution=0.0))
    assert decide(kit, heuristic(kit), 10, unpaid).rule is Rule.WAIT


def test_fossils_blend_outs_unmeasured_seeds_and_the_off_switch_are_left_alone(kit):
    unpaid = inventory_slot(kit, [True, True, False, False], [0.4, 0.1, 0.0, 0.0], contribution=0.0)
    fossil = attrs.evolve(unpaid, stage=SeedStage.FOSSILIZED)
    assert decide(kit, heuristic(kit), 10, fossil).rule is Rule.WAIT
    leaving = attrs.evolve(unpaid, blend_out=True)
    assert decide(kit, heuristic(kit), 10, leaving).rule is Rule.WAIT
    unmeasured = inventory_slot(kit, [True, True, False, False], [0.4, 0.1, 0.0, 0.0], contribution=None)
    assert decide(kit, heuristic(kit), 10, unmeasured).rule is Rule.WAIT
    assert decide(kit, heuristic(kit, subtarget_ops=False), 10, unpaid).rule is Rule.WAIT


def test_the_rule_is_deterministic_and_its_memory_survives_a_checkpoint(kit):
    seed = inventory_slot(kit, [True, True, True, False], [0.5, 0.1, 0.3, 0.0], contribution=0.002)
    original = heuristic(kit)
    assert decide(kit, original, 10, seed) == decide(kit, heuristic(kit), 10, seed)
    state = json.loads(json.dumps(original.state_dict()))
    memory = state["envs"][0]["memory"]
    assert memory["subtarget_trials"] == {"inv": 10} and memory["subtarget_ceiling"] == {"inv": 2}
    resumed = heuristic(kit)
    resumed.load_state_dict(state)
    forgetful = heuristic(kit)
    pays = inventory_slot(kit, [True, False, True, False], [0.5, 0.0, 0.3, 0.0], contribution=0.0055)
    for epoch in (11, 12):
        expected = decide(kit, original, epoch, pays)
        assert decide(kit, resumed, epoch, pays) == expected
    assert expected.rule is Rule.FOSSILIZE  # capped at 2 groups: the memory kept it from re-enabling
    assert decide(kit, forgetful, 12, pays).rule is Rule.ENABLE_PAYING  # (what a lost memory would do)


def test_a_memory_written_before_the_subtarget_rule_loads_empty():
    old = EnvMemory().to_state()
    for key in ("subtarget_trials", "subtarget_ceiling", "subtarget_schedule"):
        del old[key]
    memory = EnvMemory.from_state(old)
    assert memory.subtarget_trials == {} and memory.subtarget_ceiling == {} and memory.subtarget_schedule == {}


def test_a_ladder_seed_with_an_inventory_is_not_grown_past_a_group_disabled_for_rent(kit):
    policy = heuristic(kit, ladder_min_gain=0.001)
    seed = inventory_slot(kit, [True, True, True, False], [0.5, 0.1, 0.3, 0.0], contribution=0.002, ladder=True)
    assert decide(kit, policy, 10, seed).rule is Rule.DISABLE_RENT
    rising = inventory_slot(kit, [True, False, True, False], [0.5, 0.0, 0.3, 0.0], contribution=0.006,
                            velocity=0.01, ladder=True)
    # paying (0.006 > rent 0.002), rising, level 2 of 4: grow_rising would fire but the ceiling is 2 groups
    assert decide(kit, policy, 12, rising).rule is Rule.FOSSILIZE
    assert decide(kit, heuristic(kit, ladder_min_gain=0.001), 12, rising).rule is Rule.GROW_RISING


def test_masks_are_respected(kit):
    policy = heuristic(kit)
    seed = inventory_slot(kit, [True, True, True, False], [0.5, 0.1, 0.3, 0.0], contribution=0.002)
    observation = kit.observation(epoch=10, slots={0: seed}, metric_history=kit.rising_history(10))
    masks = kit.masks([observation], subtarget_count=K)
    masks.subtarget[0, 1, 0, 1] = False  # DISABLE may not pick group 1 here
    policy.act([observation], masks)
    assert policy.last_decisions[0].rule is Rule.WAIT
    with pytest.raises(ValueError, match=r"subtarget mask has shape \(1, 2, 3, 1\); expected \(E, 2, 3, 4\)"):
        policy.act([observation], kit.masks([observation]))
