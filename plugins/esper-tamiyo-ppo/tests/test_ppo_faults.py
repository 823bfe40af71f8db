"""Defect 6 of issue 12: non-finite observations, rewards, batches, losses or steps never reach the policy's
parameters; each one skipped is counted under ``anomalies/`` in the round's metrics."""

from __future__ import annotations

import random

import attrs
import torch

from esper_core.leyline import LifecycleOp
from esper_core.testing import start_run
from esper_tamiyo_ppo import ppo as ppo_module
from esper_tamiyo_ppo.ppo import ppo_update

NAN = float("nan")
INF = float("inf")


def parameters_finite(policy) -> bool:
    return all(bool(torch.isfinite(parameter).all()) for parameter in policy.network.parameters())


def snapshot(policy) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in policy.network.state_dict().items()}


def play_corrupted_round(kit, policy, *, seed: int, round_index: int) -> dict[str, float]:
    """A round in which environment 0 observes NaN and +inf losses at epoch 2 and environment 1 is paid
    a NaN reward at epoch 3."""
    rng = random.Random(seed)
    policy.begin_episode(round_index, 2)
    for epoch in range(kit.episode_length - 1):
        observations, masks = kit.random_batch(rng, epoch, 2)
        if epoch == 2:
            observations[0] = attrs.evolve(observations[0], val_loss=NAN, train_loss=INF)
        policy.act(observations, masks)
        rewards = [rng.uniform(-1.0, 1.0), NAN if epoch == 3 else rng.uniform(-1.0, 1.0)]
        policy.record(rewards, terminal=epoch == kit.episode_length - 2)
    return policy.end_episode(round_index)


def test_a_nan_observation_and_a_nan_reward_mid_episode_leave_the_policy_finite_and_acting(kit):
    policy = kit.policy(seed=5, learning_rate=1e-3)
    metrics = play_corrupted_round(kit, policy, seed=5, round_index=0)
    assert metrics["anomalies/non_finite_observations"] == 1.0
    assert metrics["anomalies/non_finite_rewards"] == 1.0
    assert metrics["anomalies/non_finite_skipped"] == 2.0
    assert policy.updates == 1 and metrics["charts/minibatch_steps"] == 8.0  # the update still ran
    assert all(value == value for value in (metrics["value_loss"], metrics["policy_loss"], metrics["approx_kl"]))
    assert parameters_finite(policy)
    for stats in (policy.normalizer.base, policy.normalizer.slot):
        assert bool(torch.isfinite(stats.mean).all() and torch.isfinite(stats.var).all())
    assert torch.isfinite(torch.tensor(metrics["charts/episode_return"]))

    second = play_corrupted_round(kit, policy, seed=6, round_index=1)
    assert second["anomalies/non_finite_skipped"] == 2.0 and parameters_finite(policy)
    # the policy still decides: a clean round after two corrupted updates is not all WAIT
    actions = kit.play_round(policy, seed=7, round_index=2)
    ops = [action.op for step in actions for action in step]
    assert any(op is not LifecycleOp.WAIT for op in ops), ops
    assert parameters_finite(policy)


def test_a_batch_with_a_non_finite_advantage_is_not_learned_from(kit):
    policy = kit.policy(seed=1)
    batch = kit.rollout_batch(policy, seed=1)
    corrupted = attrs.evolve(batch, advantages=batch.advantages.clone().index_fill_(1, torch.tensor([0]), NAN))
    before = snapshot(policy)
    metrics = ppo_update(policy.network, policy.optimizer, corrupted, policy.config, policy.generator)
    assert metrics["anomalies/non_finite_batches"] == 1.0 and metrics["charts/minibatch_steps"] == 0.0
    assert "value_loss" not in metrics  # nothing was evaluated
    after = policy.network.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_minibatch_with_a_non_finite_loss_is_skipped(kit, monkeypatch):
    policy = kit.policy(seed=2)
    batch = kit.rollout_batch(policy, seed=2)
    original = ppo_module.ppo_losses
    calls = []

    def nan_on_third_call(network, minibatch, config):
        terms = original(network, minibatch, config)
        calls.append(1)
        return attrs.evolve(terms, loss=terms.loss * NAN) if len(calls) == 3 else terms

    monkeypatch.setattr(ppo_module, "ppo_losses", nan_on_third_call)
    metrics = ppo_update(policy.network, policy.optimizer, batch, policy.config, policy.generator)
    assert len(calls) == 8  # 4 epochs x 2 minibatches, all evaluated
    assert metrics["anomalies/non_finite_minibatches"] == 1.0
    assert metrics["charts/minibatch_steps"] == 7.0
    assert parameters_finite(policy)
    assert all(bool(torch.isfinite(value).all()) for state in policy.optimizer.state.values()
               for value in state.values() if isinstance(value, torch.Tensor))


def test_an_update_that_leaves_a_non_finite_parameter_is_reverted(kit, monkeypatch):
    policy = kit.policy(seed=3)
    batch = kit.rollout_batch(policy, seed=3)
    before = snapshot(policy)
    optimizer_before = policy.optimizer.state_dict()["state"]
    assert optimizer_before == {}  # a fresh Adam: the revert must also bring this back
    real_step = policy.optimizer.step
    steps = []

    def poisoned_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        steps.append(1)
        if len(steps) == 5:
            with torch.no_grad():
                next(policy.network.parameters()).fill_(INF)
        return result

    monkeypatch.setattr(policy.optimizer, "step", poisoned_step)
    metrics = ppo_update(policy.network, policy.optimizer, batch, policy.config, policy.generator)
    assert metrics["anomalies/non_finite_updates_reverted"] == 1.0
    after = policy.network.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert policy.optimizer.state_dict()["state"] == {}


def test_with_the_governor_off_a_nan_host_does_not_poison_the_policy(manager, run_config, kit):
    """The probe of issue 12: before the fix all 99,304 parameters became NaN and every later decision
    was WAIT."""
    config = run_config(run={"rounds": 2}, governor={"enabled": False},
                        faults={"host_nan": [{"round": 0, "epoch": 2, "env": 0}]})
    run_dir = start_run(config, manager)
    network = kit.final_policy_state(run_dir)["network"]
    assert all(bool(torch.isfinite(tensor).all()) for tensor in network.values() if tensor.is_floating_point())
    updates = kit.policy_updates(run_dir)
    assert len(updates) == 2 and updates[0]["anomalies/non_finite_observations"] > 0
    assert all(metrics["anomalies/non_finite_updates_reverted"] == 0.0 for metrics in updates)
