"""The heuristic with a channel-group ladder: grow one group while the contribution pays its rent, shrink when it stops."""

from __future__ import annotations

import attrs

from esper_core.leyline import LifecycleOp, SeedMetrics, SeedStage
from esper_heuristic import HeuristicConfig, HeuristicPolicy, Rule

#: parameters in use per active group: the rent of level k is price_per_kparam (0.01) * k
PARAMS_PER_GROUP = 1000


def group_slot(kit, slot, *, level, contribution, velocity, stage=SeedStage.HOLDING, seed_id="channel-seed"):
    """A channel_groups ladder seed at ``level`` of 4 whose size is ``level`` groups of 1,000 parameters."""
    report = kit.slot(slot, stage, contribution=contribution, seed_id=seed_id)
    return attrs.evolve(
        report, internal_kind="channel_groups", internal_level=level, internal_max_level=4,
        seed_params=PARAMS_PER_GROUP * level, internal_effective_params=PARAMS_PER_GROUP * level,
        metrics=SeedMetrics(counterfactual_contribution=contribution, contribution_velocity=velocity),
    )


def decide_at(kit, policy, epoch, report):
    """One decision with the ladder seed in slot 0 and a rising metric (so no germination interferes)."""
    observation = kit.observation(epoch=epoch, slots={0: report}, metric_history=kit.rising_history(epoch))
    return kit.decide(policy, observation)


def test_a_paying_seed_grows_one_group_per_decision_up_to_its_top_level(kit):
    policy = kit.heuristic(ladder_min_gain=0.005, ladder_patience=1)
    contributions = {1: 0.03, 2: 0.05, 3: 0.07, 4: 0.09}  # each above its rent 0.01 * level, each a gain of 0.02
    for epoch, level in zip(range(8, 11), (1, 2, 3)):
        decision = decide_at(kit, policy, epoch, group_slot(kit, 0, level=level, contribution=contributions[level], velocity=0.02))
        assert decision.rule is Rule.GROW_RISING and decision.action.op is LifecycleOp.GROW_INTERNAL
        assert decision.action.slot == 0 and f"level {level} -> {level + 1}" in decision.reason
    top = decide_at(kit, policy, 11, group_slot(kit, 0, level=4, contribution=contributions[4], velocity=0.02))
    assert top.rule is Rule.FOSSILIZE  # at the top level there is nothing left to grow: the paying seed is kept


def test_a_rising_seed_that_does_not_pay_its_rent_is_not_grown(kit):
    policy = kit.heuristic(ladder_min_gain=0.005, ladder_patience=1, holding_patience=5)
    unpaid = group_slot(kit, 0, level=1, contribution=0.009, velocity=0.02)  # rent 0.01
    assert decide_at(kit, policy, 8, unpaid).rule is Rule.WAIT


def test_a_seed_that_stops_paying_shrinks_one_group_per_decision_then_is_pruned_at_level_one(kit):
    policy = kit.heuristic(ladder_min_gain=0.005, ladder_patience=1, holding_patience=3)
    first = decide_at(kit, policy, 8, group_slot(kit, 0, level=3, contribution=0.02, velocity=-0.01))  # rent 0.03
    assert first.rule is Rule.SHRINK_RENT and first.action.op is LifecycleOp.SHRINK_INTERNAL
    assert first.action.slot == 0 and "level 3 -> 2" in first.reason
    second = decide_at(kit, policy, 9, group_slot(kit, 0, level=2, contribution=0.015, velocity=-0.005))  # rent 0.02
    assert second.rule is Rule.SHRINK_RENT and "level 2 -> 1" in second.reason
    # level 1 still does not pay (rent 0.01): no level left to give back, so rule 3 prunes it
    last = decide_at(kit, policy, 10, group_slot(kit, 0, level=1, contribution=0.004, velocity=-0.01))
    assert last.rule is Rule.PRUNE_PATIENCE and last.action.op is LifecycleOp.PRUNE


def test_a_seed_shrunk_for_its_rent_is_not_grown_back_and_the_ceiling_survives_a_checkpoint(kit):
    options = {"ladder_min_gain": 0.005, "ladder_patience": 1}
    policy = kit.heuristic(**options)
    assert decide_at(kit, policy, 8, group_slot(kit, 0, level=3, contribution=0.02, velocity=0.0)).rule is Rule.SHRINK_RENT
    restored = kit.heuristic(**options)
    restored.load_state_dict(policy.state_dict())
    assert restored.state_dict() == policy.state_dict()
    # level 2 pays (rent 0.02) and rises, but level 3 already did not pay: it is kept at 2 and fossilized
    paying = group_slot(kit, 0, level=2, contribution=0.03, velocity=0.02)
    for candidate in (policy, restored):
        decision = decide_at(kit, candidate, 9, paying)
        assert decision.rule is Rule.FOSSILIZE


def test_a_growth_on_trial_is_judged_by_its_gain_not_shrunk_for_rent_at_once(kit):
    policy = kit.heuristic(ladder_min_gain=0.005, ladder_patience=2)
    assert decide_at(kit, policy, 8, group_slot(kit, 0, level=1, contribution=0.03, velocity=0.02)).rule is Rule.GROW_RISING
    # one epoch later the new group has not paid yet (0.015 < rent 0.02): the trial still runs
    assert decide_at(kit, policy, 9, group_slot(kit, 0, level=2, contribution=0.015, velocity=-0.015)).rule is Rule.WAIT
    judged = decide_at(kit, policy, 10, group_slot(kit, 0, level=2, contribution=0.016, velocity=0.001))
    assert judged.rule is Rule.SHRINK_UNPAID and judged.action.op is LifecycleOp.SHRINK_INTERNAL


def test_a_fossilized_ladder_seed_is_never_acted_on(kit):
    policy = kit.heuristic(ladder_min_gain=0.005, ladder_patience=1)
    for level, contribution in ((3, 0.001), (2, 0.5)):  # not paying its rent; paying and rising
        fossil = group_slot(kit, 0, level=level, contribution=contribution, velocity=0.05, stage=SeedStage.FOSSILIZED)
        assert decide_at(kit, policy, 8 + level, fossil).rule is Rule.WAIT


def test_channel_ladder_is_germinated_when_it_is_the_configured_seed_family(kit):
    families = ("conv_light", "conv_ladder", "channel_ladder")
    context = kit.context(seed_families=families)
    policy = HeuristicPolicy(HeuristicConfig(seed_families=["channel_ladder"]), context)
    policy.begin_episode(0, 1)
    decision = kit.decide(policy, kit.observation(epoch=8, seed_families=families))
    assert decision.rule is Rule.GERMINATE and decision.action.op is LifecycleOp.GERMINATE
    assert families[decision.action.blueprint] == "channel_ladder" and decision.action.slot == 0


def test_a_run_with_the_cnn_host_grows_and_shrinks_channel_ladder_seeds_one_group_at_a_time(tmp_path):
    """Engine level: the real ``cnn`` host and ``channel_ladder`` seed family under the heuristic."""
    from esper_cnn import plugin as cnn_plugin

    from esper_core.config import parse_config
    from esper_core.testing import engine_policy, events_of, final_checkpoint, start_run, toy_plugin_manager, toy_run_data
    from esper_heuristic import plugin as heuristic_plugin

    data = toy_run_data(
        tmp_path,
        run={"envs": 2, "episode_length": 16, "rounds": 1, "seed": 0},
        host={"name": "cnn", "channels": [8, 8], "pool": [True, False]},
        morphogenesis={"seed_families": ["channel_ladder"], "min_training_epochs": 1, "embargo_epochs": 1},
        seed_families={"channel_ladder": {"group_size": 2}},
        policy={
            "name": "heuristic", "seed_families": ["channel_ladder"], "warmup_epochs": 1, "plateau_window": 1,
            "plateau_delta": 1.0, "price_per_kparam": 0.0, "ladder_min_gain": 0.0, "ladder_patience": 1,
            "holding_patience": 3, "tempo": "fast",
        },
    )
    manager = toy_plugin_manager(cnn_plugin, heuristic_plugin)
    config = parse_config(data, manager)
    run_dir = start_run(config, manager)
    records = events_of(run_dir)
    germinated = [r["data"] for r in records if r["event"] == "SEED_GERMINATED"]
    assert germinated and {d["blueprint_id"] for d in germinated} == {"channel_ladder"}
    assert {(d["internal_level"], d["internal_group_size"]) for d in germinated} == {(1, 2)}
    changes = [r["data"] for r in records if r["event"] == "SEED_INTERNAL_LEVEL_CHANGED"]
    ops = [r["data"]["action"]["op"] for r in records if r["event"] == "ACTION_TAKEN" and r["data"]["success"]]
    assert all(abs(d["to_level"] - d["from_level"]) == 1 for d in changes)  # one group per decision
    assert sum(d["to_level"] > d["from_level"] for d in changes) == ops.count("GROW_INTERNAL") > 0
    assert sum(d["to_level"] < d["from_level"] for d in changes) == ops.count("SHRINK_INTERNAL")
    fossilized_at = {(r["data"]["env_id"], r["data"]["seed_id"]): r["data"]["epoch"] for r in records
                     if r["event"] == "SEED_FOSSILIZED"}
    assert all(d["epoch"] < fossilized_at.get((d["env_id"], d["seed_id"]), 10**9) for d in changes)  # fossils are frozen
    state = final_checkpoint(run_dir)["policy"]  # the policy's memory is checkpointable
    restored = engine_policy(config, manager)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
