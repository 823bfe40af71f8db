"""PPO really learns: clipping and KL act on real rollouts, the Q head stays detached, state round-trips exactly."""

from __future__ import annotations

import random

import pytest
import torch

from esper_core.leyline import SeedStage
from esper_core.runs import load_checkpoint, save_checkpoint
from esper_core.tamiyo import compute_masks
from esper_core.testing import engine_policy, start_run


def test_one_update_on_engine_rollouts_clips_moves_kl_and_changes_the_weights(manager, run_config, kit):
    config = run_config(run={"rounds": 2}, policy={"learning_rate": 1e-3, "rounds_per_update": 2})
    initial = engine_policy(config, manager)
    start = {name: tensor.clone() for name, tensor in initial.network.state_dict().items()}
    run_dir = start_run(config, manager)
    updates = kit.policy_updates(run_dir)
    assert [("clip_fraction" in metrics) for metrics in updates] == [False, True]  # one update, after round 1
    metrics = updates[1]
    assert metrics["clip_fraction"] > 0.0
    assert metrics["approx_kl"] > 0.0
    assert metrics["charts/update_epochs_run"] == 4.0
    assert metrics["charts/minibatch_steps"] == 8.0
    assert metrics["charts/decisions"] == 2 * 2 * 7
    assert metrics["entropy/op"] > 0.0  # nats, per head (the metric-key contract the core reads)
    for name in ("policy_loss", "value_loss", "entropy", "ppo/q_value_loss", "ppo/explained_variance",
                 "charts/SPS", "charts/episode_return"):
        assert name in metrics
    assert metrics["anomalies/non_finite_skipped"] == 0.0
    final = kit.final_policy_state(run_dir)["network"]
    changed = [name for name in start if not torch.equal(start[name], final[name])]
    assert "lstm.weight_ih_l0" in changed and "policy_heads.op.2.weight" in changed and "value_head.2.weight" in changed


def test_target_kl_stops_the_update_early(kit):
    policy = kit.policy(seed=2, target_kl=1e-6, learning_rate=1e-2, update_epochs=10)
    kit.play_round(policy, seed=2, close=False)
    metrics = policy.end_episode(0)
    assert metrics["ppo/kl_early_stop"] == 1.0
    assert metrics["charts/minibatch_steps"] < 20
    assert metrics["charts/update_epochs_run"] < 10


def test_the_q_head_loss_does_not_move_the_trunk(kit):
    policy = kit.policy(seed=4)
    batch = kit.rollout_batch(policy, seed=4)
    network = policy.network
    network.zero_grad(set_to_none=True)
    state = (batch.h0.unsqueeze(0), batch.c0.unsqueeze(0))
    z, _ = network.encode(batch.base, batch.slots, batch.blueprint_ids, state)
    q = network.q_values(z[batch.valid]).gather(-1, batch.actions[batch.valid][:, :1]).squeeze(-1)
    (q - batch.returns[batch.valid]).square().mean().backward()
    assert all(p.grad is None for p in network.trunk_parameters())
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in network.q_parameters())

    # through the whole update: the Q loss's weight changes the Q head only, never anything else
    results = {}
    for q_coef in (0.0, 5.0):
        learner = kit.policy(seed=4, q_coef=q_coef, max_grad_norm=0.05)
        kit.play_round(learner, seed=4)
        results[q_coef] = {name: tensor.clone() for name, tensor in learner.network.state_dict().items()}
    for name, tensor in results[0.0].items():
        same = torch.equal(tensor, results[5.0][name])
        assert same != name.startswith("q_head."), name


def test_state_dict_round_trips_through_a_weights_only_checkpoint_mid_round(kit, tmp_path):
    reference = kit.policy(seed=7, rounds_per_update=2)
    kit.play_round(reference, seed=1, round_index=0)
    reference_actions = kit.play_round(reference, seed=2, round_index=1)

    interrupted = kit.policy(seed=7, rounds_per_update=2)
    kit.play_round(interrupted, seed=1, round_index=0)
    # stop after two decisions of round 1 (one reward still pending), save and restore into a fresh policy
    rng = random.Random(2)
    interrupted.begin_episode(1, 2)
    actions = []
    for epoch in range(2):
        observations, masks = kit.random_batch(rng, epoch, 2)
        actions.append(interrupted.act(observations, masks))
        if epoch == 0:
            interrupted.record([rng.uniform(-1.0, 1.0) for _ in range(2)], terminal=False)
    save_checkpoint(tmp_path / "state.pt", {"policy": interrupted.state_dict()})
    state = load_checkpoint(tmp_path / "state.pt")["policy"]
    resumed = kit.policy(seed=99, rounds_per_update=2)
    resumed.load_state_dict(state)
    resumed.record([rng.uniform(-1.0, 1.0) for _ in range(2)], terminal=False)
    for epoch in range(2, kit.episode_length - 1):
        observations, masks = kit.random_batch(rng, epoch, 2)
        actions.append(resumed.act(observations, masks))
        resumed.record([rng.uniform(-1.0, 1.0) for _ in range(2)], terminal=epoch == kit.episode_length - 2)
    resumed.end_episode(1)
    assert actions == reference_actions
    assert resumed.updates == reference.updates == 1
    for name, tensor in reference.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[name]), name
    assert torch.equal(reference.generator.get_state(), resumed.generator.get_state())


@pytest.mark.parametrize("reward_clip", [2.0, None])
def test_rewards_are_clipped_before_learning_but_returns_are_reported_whole(kit, reward_clip):
    policy = kit.policy(seed=3, reward_clip=reward_clip)
    rng = random.Random(0)
    policy.begin_episode(0, 2)
    observations, masks = kit.random_batch(rng, 0, 2)
    policy.act(observations, masks)
    policy.record([1e6, -0.5], terminal=False)
    stored = policy.buffer.rewards[-1].tolist()
    expected_first = 1e6 if reward_clip is None else reward_clip
    assert stored == pytest.approx([expected_first, -0.5])
    assert policy._episode["returns"].tolist() == pytest.approx([1e6, -0.5])


def test_each_round_reports_the_mean_raw_observation_per_feature(kit):
    """obs/base/* and obs/slot/* are the round's means of the unnormalised Obs V3 features."""
    policy = kit.policy(n_envs=2)
    policy.begin_episode(0, 2)
    holding = [kit.slot_report(0, SeedStage.HOLDING), kit.slot_report(1, SeedStage.DORMANT),
               kit.slot_report(2, SeedStage.DORMANT)]
    for epoch in range(2):
        observations = [kit.observation(epoch, holding, env_id=env, metric=0.25 + 0.5 * env) for env in range(2)]
        masks = compute_masks([obs.slots for obs in observations], num_seed_families=3, max_seeds=3)
        policy.act(observations, masks)
        policy.record([0.0, 0.0], terminal=epoch == 1)
    metrics = policy.end_episode(0)
    assert metrics["obs/slot/alpha"] == pytest.approx(0.5 / 3)  # one slot of three at alpha 0.5
    assert metrics["obs/slot/slot_order_norm"] == pytest.approx(0.5)  # orders 0, 1, 2 of span 2
    assert metrics["obs/slot/internal_level_norm"] == 0.0
    assert metrics["obs/base/val_metric"] == pytest.approx((0.25 + 0.75) / 2)
    assert not any(name.startswith("obs/slot/stage") for name in metrics)  # multi-float blocks are left out
