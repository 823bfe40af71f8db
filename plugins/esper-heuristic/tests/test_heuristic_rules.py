"""Scenario tests of the heuristic's rules, one hand-built environment state at a time."""

from __future__ import annotations

import json

import pytest

from esper_core.leyline import (
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    LifecycleOp,
    SeedStage,
    Tempo,
)
from esper_heuristic import Rule

TRAINING = SeedStage.TRAINING
BLENDING = SeedStage.BLENDING
HOLDING = SeedStage.HOLDING


# -- (d) germinate on plateau ----------------------------------------------------------------------


def test_plateau_germinates_the_cheapest_seed_family_in_earliest_dormant_slot_with_configured_heads(kit):
    policy = kit.heuristic()
    decision = kit.decide(policy, kit.observation(epoch=10))
    action = decision.action
    assert decision.rule is Rule.GERMINATE
    assert action.op is LifecycleOp.GERMINATE
    assert (action.slot, action.blueprint) == (0, 0)
    assert action.style is BlendStyle.ADD
    assert action.tempo is Tempo.STANDARD
    assert action.alpha_target is AlphaTarget.FULL
    assert action.alpha_curve is AlphaCurve.LINEAR
    assert action.alpha_speed is AlphaSpeed.INSTANT  # irrelevant to GERMINATE: pinned to 0


def test_germination_picks_the_cheapest_configured_seed_family_not_the_first_listed_and_configured_heads(kit):
    # sizes: conv_light 100, conv_heavy 200, attention 300; listing attention first does not make it first
    policy = kit.heuristic(
        seed_families=("attention", "conv_light"), style="gate", tempo="slow",
        alpha_target="three_quarters", alpha_curve="cosine",
    )
    occupied = {0: kit.slot(0, TRAINING, epochs_in_stage=0)}
    action = kit.decide(policy, kit.observation(epoch=10, slots=occupied)).action
    assert action.op is LifecycleOp.GERMINATE
    assert action.slot == 1
    assert kit.seed_families[action.blueprint] == "conv_light"
    assert (action.style, action.tempo) == (BlendStyle.GATE, Tempo.SLOW)
    assert (action.alpha_target, action.alpha_curve) == (AlphaTarget.THREE_QUARTERS, AlphaCurve.COSINE)
    # the configured list still restricts the candidates: conv_light left out, conv_heavy is the cheapest
    restricted = kit.heuristic(seed_families=("attention", "conv_heavy"))
    action = kit.decide(restricted, kit.observation(epoch=10, slots=occupied)).action
    assert kit.seed_families[action.blueprint] == "conv_heavy"


def test_germination_respects_the_blueprint_mask_per_slot(kit):
    policy = kit.heuristic()
    # slot 0 accepts only 'attention'; slot 1 accepts everything
    allowed = [[False, False, True], [True, True, True], [True, True, True]]
    action = kit.decide(policy, kit.observation(epoch=10), seed_family_allowed=allowed).action
    assert (action.op, action.slot, kit.seed_families[action.blueprint]) == (LifecycleOp.GERMINATE, 0, "attention")
    # slot 0 accepts nothing: the next slot is used
    allowed = [[False, False, False], [True, True, True], [True, True, True]]
    action = kit.decide(policy, kit.observation(epoch=11), seed_family_allowed=allowed).action
    assert (action.op, action.slot, action.blueprint) == (LifecycleOp.GERMINATE, 1, 0)


def test_no_germination_while_the_metric_still_improves(kit):
    policy = kit.heuristic(plateau_delta=0.01, plateau_window=3)
    observation = kit.observation(epoch=10, metric_history=kit.rising_history(10, step=0.02))
    assert kit.decide(policy, observation).rule is Rule.WAIT
    # the same history with a stall over the last 3 epochs is a plateau
    stalled = kit.rising_history(7, step=0.02) + (0.24, 0.245, 0.249)
    assert kit.decide(policy, kit.observation(epoch=10, metric_history=stalled)).rule is Rule.GERMINATE


def test_no_plateau_verdict_before_the_window_is_filled(kit):
    policy = kit.heuristic(warmup_epochs=0, plateau_window=3)
    assert kit.decide(policy, kit.observation(epoch=2)).rule is Rule.WAIT  # 3 values: nothing before the window
    assert kit.decide(policy, kit.observation(epoch=3)).rule is Rule.GERMINATE


def test_no_germination_before_warmup(kit):
    policy = kit.heuristic(warmup_epochs=8, plateau_window=2)
    assert kit.decide(policy, kit.observation(epoch=6)).rule is Rule.WAIT  # 7 epochs done
    assert kit.decide(policy, kit.observation(epoch=7)).rule is Rule.GERMINATE  # 8 epochs done


def test_no_germination_too_near_the_episode_end(kit):
    policy = kit.heuristic(min_training_epochs=2, tempo="standard", holding_patience=5)
    needed = 2 + Tempo.STANDARD.epochs + 5
    last_epoch = kit.episode_length - 1 - needed
    assert policy.config.epochs_to_verdict(policy.min_training_epochs) == needed
    assert kit.decide(policy, kit.observation(epoch=last_epoch)).rule is Rule.GERMINATE
    assert kit.decide(policy, kit.observation(epoch=last_epoch + 1)).rule is Rule.WAIT


def test_no_germination_without_free_seeds(kit):
    policy = kit.heuristic(max_seeds=1)
    observation = kit.observation(epoch=10, slots={2: kit.slot(2, SeedStage.FOSSILIZED)})
    decision = kit.decide(policy, observation, max_seeds=1)
    assert decision.rule is Rule.WAIT
    # every slot occupied, max_seeds not the limit
    full = {index: kit.slot(index, SeedStage.FOSSILIZED) for index in range(3)}
    assert kit.decide(policy, kit.observation(epoch=11, slots=full)).rule is Rule.WAIT


# -- (c) advance -----------------------------------------------------------------------------------


def test_training_seed_past_min_epochs_advances(kit):
    policy = kit.heuristic(min_training_epochs=2)
    young = kit.observation(epoch=10, slots={1: kit.slot(1, TRAINING, epochs_in_stage=1)},
                            metric_history=kit.rising_history(10))
    assert kit.decide(policy, young).rule is Rule.WAIT
    ready = kit.observation(epoch=11, slots={1: kit.slot(1, TRAINING, epochs_in_stage=2)},
                            metric_history=kit.rising_history(11))
    action = kit.decide(policy, ready).action
    assert (action.op, action.slot) == (LifecycleOp.ADVANCE, 1)
    irrelevant = {head: value for head, value in action.head_values().items() if head not in ("op", "slot")}
    assert set(irrelevant.values()) == {0}


def test_advance_picks_the_longest_incubated_seed_and_outranks_germination(kit):
    policy = kit.heuristic()
    slots = {0: kit.slot(0, TRAINING, epochs_in_stage=3), 1: kit.slot(1, TRAINING, epochs_in_stage=6)}
    action = kit.decide(policy, kit.observation(epoch=10, slots=slots)).action  # plateau too
    assert (action.op, action.slot) == (LifecycleOp.ADVANCE, 1)


# -- (b) fossilize and holding patience -----------------------------------------------------------


def test_holding_seed_with_contribution_at_threshold_fossilizes(kit):
    policy = kit.heuristic(fossilize_threshold=0.01)
    slots = {2: kit.slot(2, HOLDING, contribution=0.01)}
    action = kit.decide(policy, kit.observation(epoch=10, slots=slots)).action
    assert (action.op, action.slot) == (LifecycleOp.FOSSILIZE, 2)


@pytest.mark.parametrize("contribution", [0.009, 0.0, None])
def test_holding_seed_below_threshold_or_unmeasured_is_not_fossilized(kit, contribution):
    policy = kit.heuristic(fossilize_threshold=0.01, holding_patience=5)
    slots = {2: kit.slot(2, HOLDING, contribution=contribution)}
    observation = kit.observation(epoch=10, slots=slots, metric_history=kit.rising_history(10))
    assert kit.decide(policy, observation).rule is Rule.WAIT


def test_fossilize_picks_the_highest_contribution_and_outranks_advance(kit):
    policy = kit.heuristic(fossilize_threshold=0.01)
    slots = {
        0: kit.slot(0, HOLDING, contribution=0.02),
        1: kit.slot(1, HOLDING, contribution=0.05),
        2: kit.slot(2, TRAINING, epochs_in_stage=9),
    }
    action = kit.decide(policy, kit.observation(epoch=10, slots=slots)).action
    assert (action.op, action.slot) == (LifecycleOp.FOSSILIZE, 1)


def test_holding_patience_prunes_a_seed_that_never_earns_fossilization(kit):
    policy = kit.heuristic(fossilize_threshold=0.01, holding_patience=3, prune_threshold=0.05)
    rules = []
    for epoch, contribution in zip(range(10, 14), (0.0, None, 0.005, 0.005)):
        slots = {1: kit.slot(1, HOLDING, contribution=contribution)}
        observation = kit.observation(epoch=epoch, slots=slots, metric_history=kit.rising_history(epoch))
        rules.append(kit.decide(policy, observation))
    assert [decision.rule for decision in rules] == [Rule.WAIT, Rule.WAIT, Rule.PRUNE_PATIENCE, Rule.PRUNE_PATIENCE]
    assert (rules[2].action.op, rules[2].action.slot) == (LifecycleOp.PRUNE, 1)


def test_holding_patience_restarts_when_the_seed_leaves_holding(kit):
    policy = kit.heuristic(fossilize_threshold=0.01, holding_patience=2)
    stages = (HOLDING, BLENDING, HOLDING, HOLDING)
    rules = []
    for epoch, stage in zip(range(10, 14), stages):
        slots = {1: kit.slot(1, stage, contribution=0.0)}
        observation = kit.observation(epoch=epoch, slots=slots, metric_history=kit.rising_history(epoch))
        rules.append(kit.decide(policy, observation).rule)
    assert rules == [Rule.WAIT, Rule.WAIT, Rule.WAIT, Rule.PRUNE_PATIENCE]


def test_holding_patience_counts_each_seed_separately(kit):
    policy = kit.heuristic(fossilize_threshold=0.01, holding_patience=2)
    first = {1: kit.slot(1, HOLDING, contribution=0.0, seed_id="old")}
    kit.decide(policy, kit.observation(epoch=10, slots=first, metric_history=kit.rising_history(10)))
    replaced = {1: kit.slot(1, HOLDING, contribution=0.0, seed_id="new")}
    observation = kit.observation(epoch=11, slots=replaced, metric_history=kit.rising_history(11))
    assert kit.decide(policy, observation).rule is Rule.WAIT


# -- (a) prune on damage ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [BLENDING, HOLDING])
def test_negative_contribution_prunes_instantly_by_default(kit, stage):
    policy = kit.heuristic(prune_threshold=0.01)
    slots = {1: kit.slot(1, stage, contribution=-0.02)}
    decision = kit.decide(policy, kit.observation(epoch=10, slots=slots))
    assert decision.rule is Rule.PRUNE_DAMAGE
    assert (decision.action.op, decision.action.slot) == (LifecycleOp.PRUNE, 1)
    assert decision.action.alpha_speed is AlphaSpeed.INSTANT


def test_contribution_within_the_prune_threshold_is_tolerated(kit):
    policy = kit.heuristic(prune_threshold=0.01, holding_patience=10)
    slots = {1: kit.slot(1, BLENDING, contribution=-0.01), 2: kit.slot(2, BLENDING, contribution=None)}
    observation = kit.observation(epoch=10, slots=slots, metric_history=kit.rising_history(10))
    assert kit.decide(policy, observation).rule is Rule.WAIT


def test_scheduled_prune_uses_the_configured_blend_out(kit):
    policy = kit.heuristic(prune_alpha_speed="medium", prune_alpha_curve="sigmoid")
    slots = {0: kit.slot(0, HOLDING, contribution=-0.5)}
    action = kit.decide(policy, kit.observation(epoch=10, slots=slots)).action
    assert (action.op, action.alpha_speed, action.alpha_curve) == (
        LifecycleOp.PRUNE, AlphaSpeed.MEDIUM, AlphaCurve.SIGMOID,
    )


def test_prune_outranks_fossilize_advance_and_germinate_and_picks_the_worst_seed(kit):
    policy = kit.heuristic(prune_threshold=0.01, fossilize_threshold=0.01)
    slots = {
        0: kit.slot(0, HOLDING, contribution=0.2),  # would fossilize
        1: kit.slot(1, BLENDING, contribution=-0.02),
        2: kit.slot(2, HOLDING, contribution=-0.3),
    }
    action = kit.decide(policy, kit.observation(epoch=10, slots=slots)).action
    assert (action.op, action.slot) == (LifecycleOp.PRUNE, 2)
    slots = {0: kit.slot(0, TRAINING, epochs_in_stage=5), 1: kit.slot(1, BLENDING, contribution=-0.02)}
    action = kit.decide(policy, kit.observation(epoch=11, slots=slots)).action
    assert (action.op, action.slot) == (LifecycleOp.PRUNE, 1)


def test_a_seed_already_blending_out_is_not_pruned_again(kit):
    policy = kit.heuristic(prune_threshold=0.01)
    slots = {1: kit.slot(1, BLENDING, contribution=-0.2, blend_out=True)}
    observation = kit.observation(epoch=10, slots=slots, metric_history=kit.rising_history(10))
    assert kit.decide(policy, observation).rule is Rule.WAIT


# -- seed family cooldown -------------------------------------------------------------------------


def _pruned_slot_stage(epoch: int, pruned_seen_at: int) -> SeedStage | None:
    """Slot 0 after a prune first seen at ``pruned_seen_at``: 3 embargo epochs, RESETTING, then DORMANT."""
    age = epoch - pruned_seen_at
    if age < 3:
        return SeedStage.EMBARGOED
    if age == 3:
        return SeedStage.RESETTING
    return None


def test_recently_pruned_seed_family_is_skipped_until_its_cooldown_ends(kit):
    policy = kit.heuristic(seed_family_cooldown_epochs=6)
    chosen = {}
    for epoch in range(10, 18):
        stage = _pruned_slot_stage(epoch, pruned_seen_at=10)
        slots = {} if stage is None else {0: kit.slot(0, stage, seed_family="conv_light", seed_id="gone")}
        slots[1] = kit.slot(1, SeedStage.FOSSILIZED, seed_family="attention")
        action = kit.decide(policy, kit.observation(epoch=epoch, slots=slots)).action
        assert action.op is LifecycleOp.GERMINATE
        chosen[epoch] = kit.seed_families[action.blueprint]
    assert [chosen[epoch] for epoch in range(10, 16)] == ["conv_heavy"] * 6
    assert [chosen[epoch] for epoch in (16, 17)] == ["conv_light"] * 2


def test_a_long_embargo_counts_the_prune_once(kit):
    policy = kit.heuristic(seed_family_cooldown_epochs=2)
    for epoch in range(10, 13):
        slots = {0: kit.slot(0, SeedStage.EMBARGOED, seed_family="conv_light", seed_id="gone")}
        action = kit.decide(policy, kit.observation(epoch=epoch, slots=slots)).action
        expected = "conv_heavy" if epoch < 12 else "conv_light"
        assert kit.seed_families[action.blueprint] == expected, epoch


def test_when_every_allowed_seed_family_cools_down_the_heuristic_waits(kit):
    policy = kit.heuristic(seed_families=("conv_light",), seed_family_cooldown_epochs=3)
    rules = []
    for epoch in range(10, 14):
        stage = _pruned_slot_stage(epoch, pruned_seen_at=10)
        slots = {} if stage is None else {0: kit.slot(0, stage, seed_family="conv_light", seed_id="gone")}
        rules.append(kit.decide(policy, kit.observation(epoch=epoch, slots=slots)).rule)
    assert rules == [Rule.WAIT, Rule.WAIT, Rule.WAIT, Rule.GERMINATE]


def test_prunes_are_remembered_per_environment(kit):
    policy = kit.heuristic(n_envs=2, seed_family_cooldown_epochs=10)
    pruned = kit.observation(epoch=10, env_id=0,
                             slots={0: kit.slot(0, SeedStage.EMBARGOED, seed_family="conv_light", seed_id="x")})
    clean = kit.observation(epoch=10, env_id=1)
    policy.act([pruned, clean], kit.masks([pruned, clean]))
    first, second = policy.last_decisions
    assert kit.seed_families[first.action.blueprint] == "conv_heavy"
    assert (second.action.slot, kit.seed_families[second.action.blueprint]) == (0, "conv_light")


def test_begin_episode_forgets_prunes(kit):
    policy = kit.heuristic(seed_family_cooldown_epochs=10)
    slots = {0: kit.slot(0, SeedStage.EMBARGOED, seed_family="conv_light", seed_id="x")}
    assert kit.seed_families[kit.decide(policy, kit.observation(epoch=10, slots=slots)).action.blueprint] == "conv_heavy"
    policy.begin_episode(1, 1)
    assert kit.seed_families[kit.decide(policy, kit.observation(epoch=11)).action.blueprint] == "conv_light"


# -- state -----------------------------------------------------------------------------------------


def _scripted_epoch(kit, epoch):
    """An environment where a conv_light seed was pruned at 10 and a seed in slot 1 holds from 11 on."""
    slots = {1: kit.slot(1, HOLDING, contribution=0.0, seed_id="holder", seed_family="attention")}
    if epoch <= 12:
        slots[0] = kit.slot(0, SeedStage.EMBARGOED, seed_family="conv_light", seed_id="gone")
    return kit.observation(epoch=epoch, slots=slots)


def test_state_dict_round_trip_keeps_memory_and_resumes_exactly(kit):
    options = {"holding_patience": 6, "seed_family_cooldown_epochs": 5, "fossilize_threshold": 0.01}
    original = kit.heuristic(**options)
    for epoch in range(10, 13):
        kit.decide(original, _scripted_epoch(kit, epoch))
    state = json.loads(json.dumps(original.state_dict()))  # plain values: survives any checkpoint format
    assert state["envs"][0]["memory"] == {
        "holding_without_verdict": {"holder": 3},
        "pruned_seeds_in_recovery": ["gone"],
        "seed_family_pruned_at": {"conv_light": 10},
        "ladder_trials": {},
        "ladder_ceiling": {},
        "live_seeds": {"r0c1": ["holder", "attention", 0.0, 300]},
        "subtarget_trials": {},
        "subtarget_ceiling": {},
        "subtarget_schedule": {},
    }
    assert state["evidence"] == {slot_id: {"target": None, "last": None, "ended": 0} for slot_id in kit.slot_ids}
    resumed = kit.heuristic(**options)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == original.state_dict()
    fresh = kit.heuristic(**options)
    resumed_decisions = []
    for epoch in range(13, 17):
        observation = _scripted_epoch(kit, epoch)
        expected = kit.decide(original, observation)
        resumed_decisions.append(kit.decide(resumed, observation))
        assert resumed_decisions[-1] == expected
        assert resumed.state_dict() == original.state_dict()
    # conv_light cools down until epoch 15; the holder runs out of patience at its 6th holding epoch (15)
    summary = [
        (decision.rule, kit.seed_families[decision.action.blueprint] if decision.rule is Rule.GERMINATE else None)
        for decision in resumed_decisions
    ]
    assert summary == [
        (Rule.GERMINATE, "conv_heavy"),
        (Rule.GERMINATE, "conv_heavy"),
        (Rule.PRUNE_PATIENCE, None),
        (Rule.PRUNE_PATIENCE, None),
    ]
    # without the memory the decision differs (this would catch a state_dict that forgot it)
    forgetful = kit.decide(fresh, _scripted_epoch(kit, 13))
    assert kit.seed_families[forgetful.action.blueprint] == "conv_light"


def test_load_state_dict_rejects_foreign_state(kit):
    policy = kit.heuristic()
    with pytest.raises(ValueError, match="expected"):
        policy.load_state_dict({"generator_state": None, "last_batch_size": None})


# -- protocol details ------------------------------------------------------------------------------


def test_wait_pins_every_head_to_zero(kit):
    policy = kit.heuristic()
    observation = kit.observation(epoch=1)
    action = kit.decide(policy, observation).action
    assert action.op is LifecycleOp.WAIT
    assert set(action.head_values().values()) == {0}


def test_record_and_end_episode(kit):
    policy = kit.heuristic()
    with pytest.raises(RuntimeError, match="before act"):
        policy.record([0.0], terminal=False)
    kit.decide(policy, kit.observation(epoch=1))
    policy.record([0.5], terminal=False)
    with pytest.raises(ValueError, match="2 rewards for 1"):
        policy.record([0.5, 0.1], terminal=True)
    assert policy.end_episode(0) == {}


def test_act_rejects_observations_from_another_action_space(kit):
    policy = kit.heuristic()
    observation = kit.observation(epoch=1, seed_families=("conv_light", "conv_heavy", "other"))
    with pytest.raises(ValueError, match="built for"):
        policy.act([observation], kit.masks([observation]))


def test_act_before_begin_episode_names_the_missing_call(kit):
    from esper_heuristic import HeuristicConfig, HeuristicPolicy

    policy = HeuristicPolicy(HeuristicConfig(), kit.context())
    observation = kit.observation(epoch=1)
    with pytest.raises(KeyError, match="begin_episode"):
        policy.act([observation], kit.masks([observation]))
