"""The ``static`` policy: WAIT for every environment, whatever the state; no options; state round-trips."""

from __future__ import annotations

import pytest

from esper_core.leyline import LifecycleOp, SeedStage
from esper_heuristic import StaticPolicy, StaticPolicyConfig


def test_static_waits_for_every_environment(kit):
    policy = StaticPolicy(StaticPolicyConfig(), kit.context(n_envs=3))
    policy.begin_episode(0, 3)
    observations = [
        kit.observation(epoch=10, env_id=0),  # a plateau with free slots: the heuristic would germinate
        kit.observation(epoch=10, env_id=1, slots={0: kit.slot(0, SeedStage.HOLDING, contribution=0.5, env_id=1)}),
        kit.observation(epoch=10, env_id=2, slots={1: kit.slot(1, SeedStage.TRAINING, epochs_in_stage=9, env_id=2)}),
    ]
    masks = kit.masks(observations)
    assert bool(masks.op[:, int(LifecycleOp.GERMINATE)].any())
    actions = policy.act(observations, masks)
    assert len(actions) == 3
    for env, action in enumerate(actions):
        assert action.op is LifecycleOp.WAIT and set(action.head_values().values()) == {0}
        assert masks.allows(env, action)
    policy.record([0.0, 0.1, 0.2], terminal=True)
    with pytest.raises(ValueError, match="2 rewards for 3"):
        policy.record([0.0, 0.1], terminal=True)
    assert policy.end_episode(0) == {}


def test_static_state_round_trips_and_rejects_foreign_state(kit):
    policy = StaticPolicy(StaticPolicyConfig(), kit.context())
    policy.begin_episode(0, 1)
    observation = kit.observation(epoch=3)
    policy.act([observation], kit.masks([observation]))
    restored = StaticPolicy(StaticPolicyConfig(), kit.context())
    restored.load_state_dict(policy.state_dict())
    assert restored.state_dict() == policy.state_dict() == {"last_batch_size": 1}
    restored.record([0.0], terminal=False)  # resumes mid-epoch like the original
    with pytest.raises(ValueError, match="expected"):
        restored.load_state_dict({"envs": [], "last_batch_size": None})


def test_static_rejects_observations_from_another_action_space(kit):
    policy = StaticPolicy(StaticPolicyConfig(), kit.context())
    policy.begin_episode(0, 1)
    observation = kit.observation(epoch=1, seed_families=("conv_light", "conv_heavy", "other"))
    with pytest.raises(ValueError, match="built for"):
        policy.act([observation], kit.masks([observation]))
