"""Scenario tests of the ``random`` baseline: uniform valid choices, pinned heads, seeding and resume."""

from __future__ import annotations

from collections import Counter

import attrs
import pytest
import torch

from esper_core.leyline import CAUSAL_RELEVANCE, LifecycleOp, SeedStage
from esper_heuristic import RandomPolicy, RandomPolicyConfig


#: The subtarget head size of the every-op state (its HOLDING seed has an inventory of 3 of these groups).
K = 4


def _every_op_state(kit):
    """One environment where every op is allowed: a DORMANT slot, a TRAINING ladder seed at level 1 of 3
    (it can grow and shrink) and a HOLDING seed with an inventory of 3 groups, 0 and 2 enabled (it can
    enable group 1 and disable 0 or 2)."""
    ladder = attrs.evolve(
        kit.slot(1, SeedStage.TRAINING), internal_kind="conv_stages", internal_level=1, internal_max_level=3
    )
    holding = attrs.evolve(
        kit.slot(2, SeedStage.HOLDING, contribution=0.0), subtarget_kind="cnn_channel_group", subtarget_count=3,
        subtarget_active_count=2, subtarget_active_mask=(True, False, True), subtarget_importance=(0.1, 0.0, 0.2),
    )
    slots = {1: ladder, 2: holding}
    observation = kit.observation(epoch=5, slots=slots)
    return [observation], kit.masks([observation], subtarget_count=K)


def _policy(kit, *, seed=0, wait_probability=None):
    policy = RandomPolicy(RandomPolicyConfig(wait_probability=wait_probability), kit.context(seed=seed, subtarget_count=K))
    policy.begin_episode(0, 1)
    return policy


def test_draws_are_roughly_uniform_over_allowed_ops_and_valid_targets(kit):
    observations, masks = _every_op_state(kit)
    policy = _policy(kit)
    actions = [policy.act(observations, masks)[0] for _ in range(3000)]
    ops = Counter(action.op for action in actions)
    assert set(ops) == set(LifecycleOp)
    for op in LifecycleOp:
        assert 240 < ops[op] < 360, ops  # 3000 / 10 = 300 each
    slots_by_op = {op: {action.slot for action in actions if action.op is op} for op in LifecycleOp}
    assert slots_by_op[LifecycleOp.GERMINATE] == {0}
    assert slots_by_op[LifecycleOp.ADVANCE] == {1}
    assert slots_by_op[LifecycleOp.FOSSILIZE] == {2}
    assert slots_by_op[LifecycleOp.PRUNE] == {1, 2}
    assert slots_by_op[LifecycleOp.GROW_INTERNAL] == slots_by_op[LifecycleOp.SHRINK_INTERNAL] == {1}
    assert slots_by_op[LifecycleOp.ENABLE_SUBTARGET] == slots_by_op[LifecycleOp.DISABLE_SUBTARGET] == {2}
    picks = {op: Counter(action.subtarget for action in actions if action.op is op)
             for op in (LifecycleOp.ENABLE_SUBTARGET, LifecycleOp.DISABLE_SUBTARGET)}
    assert set(picks[LifecycleOp.ENABLE_SUBTARGET]) == {1}  # the one disabled group
    assert set(picks[LifecycleOp.DISABLE_SUBTARGET]) == {0, 2}  # the enabled groups, about evenly
    assert min(picks[LifecycleOp.DISABLE_SUBTARGET].values()) > 0.35 * ops[LifecycleOp.DISABLE_SUBTARGET]
    germinations = [action for action in actions if action.op is LifecycleOp.GERMINATE]
    assert {action.blueprint for action in germinations} == {0, 1, 2}
    assert {int(action.tempo) for action in germinations} == {0, 1, 2}


def test_irrelevant_heads_are_pinned_to_zero(kit):
    observations, masks = _every_op_state(kit)
    policy = _policy(kit)
    for _ in range(500):
        action = policy.act(observations, masks)[0]
        for head, value in action.head_values().items():
            if head not in CAUSAL_RELEVANCE[action.op]:
                assert value == 0, (action.op, head)


@pytest.mark.parametrize(("probability", "low", "high"), [(0.0, 0, 0), (1.0, 1000, 1000), (0.5, 430, 570)])
def test_wait_probability(kit, probability, low, high):
    observations, masks = _every_op_state(kit)
    policy = _policy(kit, wait_probability=probability)
    waits = sum(policy.act(observations, masks)[0].op is LifecycleOp.WAIT for _ in range(1000))
    assert low <= waits <= high


def test_wait_probability_falls_back_to_wait_only_when_nothing_else_is_allowed(kit):
    observation = kit.observation(epoch=5, slots={index: kit.slot(index, SeedStage.FOSSILIZED) for index in range(3)})
    policy = _policy(kit, wait_probability=0.0)
    assert policy.act([observation], kit.masks([observation], subtarget_count=K))[0].op is LifecycleOp.WAIT


def test_same_seed_same_actions_other_seed_other_actions(kit):
    observations, masks = _every_op_state(kit)
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        policy = _policy(kit, seed=seed)
        runs[name] = [policy.act(observations, masks)[0] for _ in range(50)]
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_state_dict_restores_the_generator(kit):
    observations, masks = _every_op_state(kit)
    original = _policy(kit, seed=3)
    for _ in range(17):
        original.act(observations, masks)
    state = original.state_dict()
    expected = [original.act(observations, masks)[0] for _ in range(40)]
    resumed = _policy(kit, seed=99)
    resumed.load_state_dict(state)
    assert [resumed.act(observations, masks)[0] for _ in range(40)] == expected


def test_state_dict_is_a_snapshot_not_a_live_view(kit):
    observations, masks = _every_op_state(kit)
    policy = _policy(kit)
    state = policy.state_dict()
    snapshot = state["generator_state"].clone()
    policy.act(observations, masks)
    assert torch.equal(state["generator_state"], snapshot)


def test_load_state_dict_rejects_foreign_state(kit):
    policy = _policy(kit)
    with pytest.raises(ValueError, match="expected"):
        policy.load_state_dict({"envs": [], "last_batch_size": None})


def test_record_and_end_episode(kit):
    observations, masks = _every_op_state(kit)
    policy = _policy(kit)
    with pytest.raises(RuntimeError, match="before act"):
        policy.record([1.0], terminal=False)
    policy.act(observations, masks)
    policy.record([1.0], terminal=True)
    with pytest.raises(ValueError, match="0 rewards for 1"):
        policy.record([], terminal=True)
    assert policy.end_episode(0) == {}

