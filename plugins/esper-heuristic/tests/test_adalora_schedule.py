"""The ``adalora_schedule`` baseline on synthetic reports: disable the least important group on a fixed schedule down to a parameter budget, then let the heuristic's lifecycle finish the seed."""

from __future__ import annotations

import json
import re

import attrs
import pytest

from esper_core.config import structure_section
from esper_core.leyline import LifecycleOp, SeedMetrics, SeedStage
from esper_heuristic import AdaLoRAScheduleConfig, AdaLoRASchedulePolicy, Rule

K = 4
PER_GROUP = 100


def seed_report(kit, mask, importance, *, contribution=0.02, stage=SeedStage.HOLDING, seed_id="inv", ladder=False):
    report = kit.slot(0, stage, contribution=contribution, seed_id=seed_id, seed_params=PER_GROUP * sum(mask))
    report = attrs.evolve(
        report, alpha=1.0, subtarget_kind="lora_rank_block", subtarget_count=len(mask),
        subtarget_active_count=sum(mask), subtarget_active_mask=tuple(mask), subtarget_importance=tuple(importance),
        metrics=SeedMetrics(counterfactual_contribution=contribution),
    )
    if ladder:
        report = attrs.evolve(report, internal_kind="lora_rank", internal_level=sum(mask), internal_max_level=len(mask))
    return report


def schedule_policy(kit, **options):
    options.setdefault("holding_patience", 30)
    return kit.heuristic(subtarget_count=K, policy_class=AdaLoRASchedulePolicy, config_class=AdaLoRAScheduleConfig,
                         **options)


def run(kit, policy, *, first_epoch, epochs, importance=(0.4, 0.1, 0.3, 0.2), ladder=False, velocity=None):
    """Feed the policy one HOLDING seed per epoch whose mask follows the policy's own subtarget actions."""
    mask = [True] * K
    decisions = []
    for epoch in range(first_epoch, first_epoch + epochs):
        report = seed_report(kit, mask, [value if on else 0.0 for value, on in zip(importance, mask)], ladder=ladder)
        if velocity is not None:
            report = attrs.evolve(report, metrics=attrs.evolve(report.metrics, contribution_velocity=velocity))
        decision = kit.decide(policy, kit.observation(epoch=epoch, slots={0: report},
                                                      metric_history=kit.rising_history(epoch)))
        decisions.append((epoch, decision))
        if decision.action.op is LifecycleOp.DISABLE_SUBTARGET:
            mask[decision.action.subtarget] = False
        if decision.action.op is LifecycleOp.FOSSILIZE:
            break
    return decisions, mask


def test_the_schedule_disables_the_least_important_group_every_interval_down_to_the_budget(kit):
    policy = schedule_policy(kit, start_epoch=2, interval=3, budget_fraction=0.5)
    decisions, mask = run(kit, policy, first_epoch=10, epochs=12)
    summary = [(epoch, decision.rule, decision.action.subtarget) for epoch, decision in decisions
               if decision.rule is not Rule.WAIT]
    # blended in (first seen HOLDING) at 10: disables at 12 and 15 (group 1, then group 3), 400 -> 200
    # parameters in use = 0.5 x 400: the schedule is done and the seed, paying, is fossilized
    assert summary == [(12, Rule.SCHEDULE_DISABLE, 1), (15, Rule.SCHEDULE_DISABLE, 3), (16, Rule.FOSSILIZE, 0)]
    assert mask == [True, False, True, False]


def test_the_schedule_never_disables_the_last_group(kit):
    policy = schedule_policy(kit, start_epoch=0, interval=1, budget_fraction=0.01)
    decisions, mask = run(kit, policy, first_epoch=10, epochs=8)
    disables = [epoch for epoch, decision in decisions if decision.rule is Rule.SCHEDULE_DISABLE]
    assert disables == [10, 11, 12] and mask == [True, False, False, False]  # the most important group stays
    assert decisions[-1][1].rule is Rule.FOSSILIZE


def test_a_budget_of_one_changes_nothing_and_seeds_without_an_inventory_are_not_scheduled(kit):
    decisions, mask = run(kit, schedule_policy(kit, budget_fraction=1.0), first_epoch=10, epochs=3)
    assert decisions[0][1].rule is Rule.FOSSILIZE and mask == [True] * K
    plain = kit.slot(0, SeedStage.HOLDING, contribution=0.02, seed_id="plain")
    decision = kit.decide(schedule_policy(kit), kit.observation(epoch=10, slots={0: plain},
                                                                metric_history=kit.rising_history(10)))
    assert decision.rule is Rule.FOSSILIZE


def test_a_ladder_seed_under_schedule_is_not_grown_back(kit):
    policy = schedule_policy(kit, start_epoch=0, interval=2, budget_fraction=0.5, ladder_min_gain=0.001)
    decisions, _mask = run(kit, policy, first_epoch=10, epochs=6, ladder=True, velocity=0.01)
    assert all(decision.rule is not Rule.GROW_RISING for _epoch, decision in decisions)
    assert [decision.rule for _epoch, decision in decisions][:2] == [Rule.SCHEDULE_DISABLE, Rule.WAIT]


def test_fossils_are_never_scheduled(kit):
    policy = schedule_policy(kit, start_epoch=0)
    fossil = seed_report(kit, [True] * K, [0.4, 0.1, 0.3, 0.2], stage=SeedStage.FOSSILIZED)
    decision = kit.decide(policy, kit.observation(epoch=10, slots={0: fossil}, metric_history=kit.rising_history(10)))
    assert decision.rule is Rule.WAIT
    assert policy.state_dict()["envs"][0]["memory"]["subtarget_schedule"] == {}


def test_the_schedule_survives_a_checkpoint(kit):
    original = schedule_policy(kit, start_epoch=2, interval=3, budget_fraction=0.5)
    run(kit, original, first_epoch=10, epochs=3)  # started at 10, first disable at 12
    state = json.loads(json.dumps(original.state_dict()))
    assert state["envs"][0]["memory"]["subtarget_schedule"] == {"inv": [10, 400, 15]}
    resumed = schedule_policy(kit, start_epoch=2, interval=3, budget_fraction=0.5)
    resumed.load_state_dict(state)
    report = seed_report(kit, [True, False, True, True], [0.4, 0.0, 0.3, 0.2])
    for epoch in (13, 14, 15):
        observation = kit.observation(epoch=epoch, slots={0: report}, metric_history=kit.rising_history(epoch))
        assert kit.decide(resumed, observation) == kit.decide(original, observation)
    assert kit.decide(resumed, observation).rule is not Rule.SCHEDULE_DISABLE  # 15 was due: already disabled once


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start_epoch": -1}, "[policy] start_epoch: must be >= 0, got -1"),
        ({"interval": 0}, "[policy] interval: must be >= 1, got 0"),
        ({"budget_fraction": 0.0}, "[policy] budget_fraction: must be a finite number in (0, 1], got 0.0"),
        ({"budget_fraction": 1.5}, "[policy] budget_fraction: must be a finite number in (0, 1], got 1.5"),
        ({"subtarget_ops": True}, "[policy] subtarget_ops: must be false: the adalora_schedule policy replaces the "
                                  "heuristic's subtarget rule with its schedule, got True"),
    ],
)
def test_bad_schedule_options_are_reported(options, message):
    config, problems = structure_section(options, AdaLoRAScheduleConfig, "policy")
    assert config is None and problems == [message], problems


def test_the_heuristic_options_apply_and_are_validated_too():
    config = AdaLoRAScheduleConfig(holding_patience=3, start_epoch=0)
    assert config.holding_patience == 3 and config.subtarget_ops is False
    with pytest.raises(ValueError, match=re.escape("holding_patience must be >= 1, got 0")):
        AdaLoRAScheduleConfig(holding_patience=0)
