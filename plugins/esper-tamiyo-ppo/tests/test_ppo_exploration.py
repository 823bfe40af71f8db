"""Exploration defaults: updates gather enough decisions, and the per-head entropy floor boosts only the
head that fell below it."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

from esper_core.leyline import HEADS
from esper_tamiyo_ppo import PPOConfig, ppo_losses
from esper_tamiyo_ppo.policy import rounds_per_update
from esper_tamiyo_ppo.network import HEAD_INDEX, N_OPS, StepMasks
from esper_tamiyo_ppo.ppo import entropy_boosts, normalized_entropy


def test_rounds_per_update_reach_the_minimum_of_decisions():
    config = PPOConfig()
    assert config.min_decisions_per_update == 128 and config.learning_rate == 3e-4
    assert rounds_per_update(config, n_envs=4, episode_length=12) == 3  # 44 decisions a round -> 132
    assert rounds_per_update(config, n_envs=16, episode_length=25) == 1  # 384 a round
    assert rounds_per_update(attrs.evolve(config, rounds_per_update=5), n_envs=16, episode_length=25) == 5
    assert rounds_per_update(attrs.evolve(config, min_decisions_per_update=0), n_envs=1, episode_length=2) == 1


def test_the_policy_accumulates_rounds_until_the_minimum(kit):
    policy = kit.policy(seed=3, min_decisions_per_update=15)  # 2 envs x 5 decisions a round -> 2 rounds
    assert policy.rounds_per_update == 2
    kit.play_round(policy, seed=1, round_index=0)
    assert policy.updates == 0 and len(policy.buffer.rounds) == 1
    kit.play_round(policy, seed=2, round_index=1)
    assert policy.updates == 1 and policy.buffer.rounds == []


def test_entropy_boosts_act_only_below_the_floor_and_only_on_that_head():
    config = PPOConfig(entropy_floor=0.25, entropy_floor_boost=5.0)
    n = len(HEADS)
    norm_sum, count = torch.zeros(n), torch.zeros(n)
    count[HEAD_INDEX["op"]], norm_sum[HEAD_INDEX["op"]] = 4.0, 3.2  # mean 0.8: above
    count[HEAD_INDEX["tempo"]], norm_sum[HEAD_INDEX["tempo"]] = 4.0, 0.4  # mean 0.1: below
    count[HEAD_INDEX["style"]], norm_sum[HEAD_INDEX["style"]] = 4.0, 1.0  # mean 0.25: at the floor, not below
    boosts = entropy_boosts(norm_sum, count, config)  # every other head: no eligible step, no boost
    expected = torch.ones(n)
    expected[HEAD_INDEX["tempo"]] = 5.0
    assert torch.equal(boosts, expected)
    assert torch.equal(entropy_boosts(norm_sum, count, attrs.evolve(config, entropy_floor=0.0)), torch.ones(n))


def test_normalized_entropy_counts_relevant_heads_with_a_choice_only(kit):
    network = kit.policy(seed=0).network
    n_ops, n_slots, n_blueprints = network.head_sizes["op"], network.head_sizes["slot"], network.head_sizes["blueprint"]
    actions = torch.zeros(2, len(HEADS), dtype=torch.long)
    actions[0, HEAD_INDEX["op"]] = 1  # GERMINATE: every head but alpha_speed is relevant
    actions[1, HEAD_INDEX["op"]] = 0  # WAIT: only op
    op_mask = torch.ones(2, n_ops, dtype=torch.bool)
    op_mask[1, 1:] = False  # the WAIT step had no choice of op
    slot_mask = torch.ones(2, n_slots, dtype=torch.bool)
    blueprint_mask = torch.ones(2, n_blueprints, dtype=torch.bool)
    masks = StepMasks(op=op_mask, slot=slot_mask, blueprint=blueprint_mask)
    sizes = torch.tensor([float(network.head_sizes[head]) for head in HEADS])
    entropies = torch.stack([sizes.log(), torch.zeros(len(HEADS))])  # step 0: uniform over every head
    entropies[1, HEAD_INDEX["op"]] = 0.0
    norm_sum, count = normalized_entropy(network, actions, masks, entropies)
    relevant = {"op", "slot", "blueprint", "style", "tempo", "alpha_target", "alpha_curve"}
    for head, index in HEAD_INDEX.items():
        assert float(count[index]) == (1.0 if head in relevant else 0.0), head
        assert float(norm_sum[index]) == pytest.approx(1.0 if head in relevant else 0.0), head


def test_the_floor_raises_only_the_collapsed_heads_bonus_in_the_loss(kit):
    policy = kit.policy(seed=5, entropy_coef=0.01, entropy_floor=0.25, entropy_floor_boost=5.0)
    batch = kit.rollout_batch(policy, seed=5)
    network = policy.network
    with torch.no_grad():  # collapse the op head: one op's logit far above the others
        final = network.policy_heads["op"][-1]
        final.weight.zero_()
        final.bias.zero_()
        final.bias[0] = 8.0
    boosted = ppo_losses(network, batch, policy.config)
    plain = ppo_losses(network, batch, attrs.evolve(policy.config, entropy_floor=0.0))
    floor_hits = boosted.entropy_below_floor
    assert floor_hits[HEAD_INDEX["op"]] == 1.0
    assert float(floor_hits.sum()) == 1.0, {head: float(floor_hits[i]) for head, i in HEAD_INDEX.items()}
    op_entropy = float(boosted.entropy[HEAD_INDEX["op"]])
    assert 0.0 < op_entropy
    difference = float((boosted.loss - plain.loss).detach())
    assert difference == pytest.approx(-0.01 * (5.0 - 1.0) * op_entropy, rel=1e-4, abs=1e-9)
    mean_norm = float(boosted.entropy_norm_sum[HEAD_INDEX["op"]] / boosted.entropy_norm_count[HEAD_INDEX["op"]])
    assert mean_norm < 0.25


def test_update_metrics_report_normalised_entropy_per_head(kit):
    learner = kit.policy(seed=2)
    kit.play_round(learner, seed=2, close=False)
    results = learner.end_episode(0)
    assert results["entropy"] > 0.0  # the sampled action's entropy over its relevant heads, in nats
    for head in HEADS:
        value = results[f"charts/entropy_norm/{head}"]
        assert math.isnan(value) or 0.0 <= value <= 1.0 + 1e-6, (head, value)
        assert 0.0 <= results[f"charts/entropy_floor_boosted/{head}"] <= 1.0
    assert 0.9 < results["charts/entropy_norm/op"] <= 1.0 + 1e-6  # a fresh policy is near uniform
    # entropy/<head> (the metric-key contract) is in nats: the normalised value times ln(choices); it
    # is reported exactly for the heads with at least one relevant step offering a choice
    for head in HEADS:
        assert (f"entropy/{head}" in results) == (not math.isnan(results[f"charts/entropy_norm/{head}"])), head
    assert results["charts/entropy_norm/op"] * math.log(2) - 1e-6 <= results["entropy/op"]
    assert results["entropy/op"] <= results["charts/entropy_norm/op"] * math.log(N_OPS) + 1e-6
