"""The seed family choice follows evidence gathered in this run: start cheap, escalate when a seed paid a lot,
stay when it paid modestly, fall back after one that did not pay; fossilize only seeds that pay their price."""

from __future__ import annotations

import json

import pytest

from esper_core.leyline import LifecycleOp, SeedStage
from esper_heuristic import HeuristicConfig, HeuristicPolicy, Rule

HOLDING = SeedStage.HOLDING
# the kit's sizes: conv_light 100, conv_heavy 200, attention 300 parameters (prices 0.001, 0.002, 0.003)


def germinated(kit, policy, epoch=10, **observation_options):
    decision = kit.decide(policy, kit.observation(epoch=epoch, **observation_options))
    assert decision.rule is Rule.GERMINATE, decision
    return decision.action.slot, policy.context.seed_families[decision.action.blueprint]


def end_a_seed(kit, policy, *, family, contribution, fossilize, epoch=10, seed_id="s"):
    """Slot 0 holds a seed of ``family`` measured at ``contribution``; it is then seen FOSSILIZED
    (``fossilize``) or EMBARGOED (pruned)."""
    holding = {0: kit.slot(0, HOLDING, contribution=contribution, seed_family=family, seed_id=seed_id)}
    observation = kit.observation(epoch=epoch, slots=holding, metric_history=kit.rising_history(epoch))
    decision = kit.decide(policy, observation)
    end = SeedStage.FOSSILIZED if fossilize else SeedStage.EMBARGOED
    after = {0: kit.slot(0, end, seed_family=family, seed_id=seed_id)}
    kit.decide(policy, kit.observation(epoch=epoch + 1, slots=after, metric_history=kit.rising_history(epoch + 1)))
    return decision


@pytest.mark.parametrize(
    ("families", "sizes", "expected"),
    [
        (("conv_light", "conv_heavy", "attention"), (100, 200, 300), "conv_light"),
        (("attention", "conv_heavy", "conv_light"), (300, 200, 100), "conv_light"),  # the list reversed
        (("conv_light", "conv_heavy", "attention"), (300, 50, 200), "conv_heavy"),  # size, not position
        (("conv_light", "conv_heavy", "attention"), (300, 100, 100), "conv_heavy"),  # a tie: list order
    ],
)
def test_first_germination_picks_the_cheapest_seed_family_regardless_of_list_order(kit, families, sizes, expected):
    context = kit.context(seed_families=families, seed_family_params=sizes)
    policy = HeuristicPolicy(HeuristicConfig(), context)
    policy.begin_episode(0, 1)
    assert germinated(kit, policy, seed_families=families) == (0, expected)


def test_a_size_tie_follows_the_configured_preference_order(kit):
    policy = kit.heuristic(seed_families=("attention", "conv_heavy"), seed_family_params=(300, 100, 100))
    assert germinated(kit, policy) == (0, "attention")


@pytest.mark.parametrize(
    ("contribution", "next_family", "verdict"),
    [(0.05, "conv_heavy", "paid_well"), (0.0015, "conv_light", "paid")],  # price 0.001, escalate above 0.002
)
def test_a_fossilized_seed_that_paid_a_lot_escalates_its_slot_and_a_modest_one_stays(
    kit, contribution, next_family, verdict
):
    policy = kit.heuristic(fossilize_threshold=0.001)
    decision = end_a_seed(kit, policy, family="conv_light", contribution=contribution, fossilize=True)
    assert decision.rule is Rule.FOSSILIZE
    evidence = policy.evidence("r0c0")
    assert (evidence.target, evidence.ended) == (next_family, 1)
    assert evidence.last == ["s", "conv_light", contribution, pytest.approx(0.001), verdict]
    policy.begin_episode(1, 1)  # the evidence outlives the episode
    assert germinated(kit, policy, epoch=12) == (0, next_family)
    # evidence is per slot: slot 1 has seen nothing and starts cheap
    slot_0_busy = {0: kit.slot(0, SeedStage.TRAINING, epochs_in_stage=0, seed_family=next_family)}
    assert germinated(kit, policy, epoch=12, slots=slot_0_busy) == (1, "conv_light")


def test_after_a_pruned_seed_that_did_not_pay_the_slot_falls_back(kit):
    policy = kit.heuristic(holding_patience=1)
    end_a_seed(kit, policy, family="conv_light", contribution=0.05, fossilize=True)
    policy.begin_episode(1, 1)
    assert germinated(kit, policy, epoch=12) == (0, "conv_heavy")
    # conv_heavy costs 0.002; it contributes 0.0015 (above fossilize_threshold? no matter: below its price)
    decision = end_a_seed(kit, policy, family="conv_heavy", contribution=0.0015, fossilize=False, epoch=20,
                          seed_id="h")
    assert decision.rule is Rule.PRUNE_PATIENCE
    evidence = policy.evidence("r0c0")
    assert (evidence.target, evidence.last[-1], evidence.ended) == ("conv_light", "unpaid", 2)
    policy.begin_episode(2, 1)
    assert germinated(kit, policy, epoch=12) == (0, "conv_light")


def test_a_seed_that_vanishes_unmeasured_counts_as_unpaid(kit):
    policy = kit.heuristic()
    end_a_seed(kit, policy, family="conv_light", contribution=0.05, fossilize=True)
    training = {0: kit.slot(0, SeedStage.TRAINING, seed_family="conv_heavy", seed_id="t")}
    kit.decide(policy, kit.observation(epoch=20, slots=training, metric_history=kit.rising_history(20)))
    kit.decide(policy, kit.observation(epoch=21, metric_history=kit.rising_history(21)))  # gone: DORMANT
    assert policy.evidence("r0c0").target == "conv_light"


def test_when_the_target_is_not_allowed_a_cheaper_candidate_comes_first(kit):
    policy = kit.heuristic()
    end_a_seed(kit, policy, family="conv_light", contribution=0.05, fossilize=True)
    end_a_seed(kit, policy, family="conv_heavy", contribution=0.05, fossilize=True, epoch=20, seed_id="h")
    assert policy.evidence("r0c0").target == "attention"
    policy.begin_episode(1, 1)
    allowed = [[True, True, False], [True, True, True], [True, True, True]]
    assert germinated(kit, policy, epoch=12) == (0, "attention")
    decision = kit.decide(policy, kit.observation(epoch=13), seed_family_allowed=allowed)
    assert (decision.action.slot, kit.seed_families[decision.action.blueprint]) == (0, "conv_heavy")


def test_the_evidence_survives_state_dict_and_load_state_dict(kit):
    original = kit.heuristic()
    holding = {0: kit.slot(0, HOLDING, contribution=0.05, seed_family="conv_light", seed_id="s")}
    kit.decide(original, kit.observation(epoch=10, slots=holding, metric_history=kit.rising_history(10)))
    # saved while the seed is alive: the resumed policy must still see its end
    state = json.loads(json.dumps(original.state_dict()))
    resumed = kit.heuristic()
    resumed.load_state_dict(state)
    fossilized = {0: kit.slot(0, SeedStage.FOSSILIZED, seed_family="conv_light", seed_id="s")}
    for policy in (original, resumed):
        kit.decide(policy, kit.observation(epoch=11, slots=fossilized, metric_history=kit.rising_history(11)))
    assert resumed.state_dict() == original.state_dict()
    assert resumed.evidence("r0c0").target == "conv_heavy"
    # a second save/load between episodes carries the target
    again = kit.heuristic()
    again.load_state_dict(json.loads(json.dumps(resumed.state_dict())))
    again.begin_episode(1, 1)
    assert germinated(kit, again, epoch=12) == (0, "conv_heavy")
    fresh = kit.heuristic()
    assert germinated(kit, fresh, epoch=12) == (0, "conv_light")


def test_load_state_dict_rejects_evidence_for_another_run(kit):
    policy = kit.heuristic()
    state = policy.state_dict()
    state["evidence"]["r0c0"]["target"] = "mystery"
    with pytest.raises(ValueError, match="not a candidate seed family"):
        kit.heuristic().load_state_dict(state)
    del state["evidence"]["r0c0"]
    with pytest.raises(ValueError, match="evidence covers slots"):
        kit.heuristic().load_state_dict(state)


@pytest.mark.parametrize(("contribution", "rule"), [(0.008, Rule.PRUNE_PATIENCE), (0.012, Rule.FOSSILIZE)])
def test_a_seed_below_its_price_is_pruned_not_fossilized(kit, contribution, rule):
    # 1,000 parameters at 0.01 per 1,000: the price is 0.01, above fossilize_threshold (0.005)
    policy = kit.heuristic(fossilize_threshold=0.005, holding_patience=2)
    decisions = []
    for epoch in (10, 11):
        slots = {0: kit.slot(0, HOLDING, contribution=contribution, seed_params=1000)}
        observation = kit.observation(epoch=epoch, slots=slots, metric_history=kit.rising_history(epoch))
        decisions.append(kit.decide(policy, observation))
    if rule is Rule.FOSSILIZE:
        assert decisions[0].rule is Rule.FOSSILIZE and decisions[0].action.op is LifecycleOp.FOSSILIZE
    else:
        assert [decision.rule for decision in decisions] == [Rule.WAIT, Rule.PRUNE_PATIENCE]
        assert decisions[1].action.op is LifecycleOp.PRUNE


def test_a_free_price_fossilizes_at_the_threshold_again(kit):
    policy = kit.heuristic(price_per_kparam=0.0, fossilize_threshold=0.005)
    slots = {0: kit.slot(0, HOLDING, contribution=0.008, seed_params=1000)}
    assert kit.decide(policy, kit.observation(epoch=10, slots=slots)).rule is Rule.FOSSILIZE
