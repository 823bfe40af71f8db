"""Sampling respects the action masks, pins irrelevant heads, and the masked distributions are exact."""

from __future__ import annotations

import random

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.leyline import CAUSAL_RELEVANCE, HEADS, FactoredAction, LifecycleOp, SeedStage
from esper_core.tamiyo import compute_masks
from esper_tamiyo_ppo import PPOConfig, PPOPolicy, choose, masked_entropy, masked_log_probs, ppo_losses
from esper_tamiyo_ppo.network import HEAD_INDEX, StepMasks

STAGES = list(SeedStage)


@st.composite
def observation_batches(draw):
    """1-3 environments with arbitrary slot stages, blend-outs, seed budgets and seed family topology."""
    seed = draw(st.integers(0, 2**32 - 1))
    n_envs = draw(st.integers(1, 3))
    max_seeds = draw(st.integers(1, 3))
    allowed = draw(st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=3, max_size=3))
    epoch = draw(st.integers(0, 4))
    return seed, n_envs, max_seeds, allowed, epoch


@pytest.mark.parametrize("deterministic", [False, True])
@settings(max_examples=40, deadline=None)
@given(case=observation_batches())
def test_sampled_actions_are_allowed_and_irrelevant_heads_pinned(kit, deterministic, case):
    seed, n_envs, max_seeds, allowed, epoch = case
    rng = random.Random(seed)
    observations = []
    for env in range(n_envs):
        reports = [
            kit.slot_report(
                index, rng.choice(STAGES), family=rng.randrange(3), blend_out=rng.random() < 0.3, env_id=env
            )
            for index in range(3)
        ]
        observations.append(kit.observation(epoch, reports, env_id=env, max_seeds=max_seeds))
    masks = compute_masks([obs.slots for obs in observations], num_seed_families=3, max_seeds=max_seeds,
                          seed_family_allowed=allowed)
    policy = PPOPolicy(
        PPOConfig(learn=False, deterministic=deterministic),
        kit.context(n_envs=n_envs, seed=seed, max_seeds=max_seeds),
    )
    policy.begin_episode(0, n_envs)
    actions = policy.act(observations, masks)
    assert len(actions) == n_envs
    for env, action in enumerate(actions):
        assert isinstance(action, FactoredAction)
        assert masks.allows(env, action), (action, masks.op[env])
        for head, value in action.head_values().items():
            if head not in CAUSAL_RELEVANCE[action.op]:
                assert value == 0, f"{head} is irrelevant to {action.op.name} but holds {value}"


def test_every_op_the_masks_allow_is_eventually_sampled(kit):
    """Masks restrict sampling without starving it: with all ops possible, each one shows up."""
    reports = [
        kit.slot_report(0, SeedStage.DORMANT),
        kit.slot_report(1, SeedStage.TRAINING),
        kit.slot_report(2, SeedStage.HOLDING),
    ]
    obs = [kit.observation(2, reports, env_id=env) for env in range(2)]
    masks = compute_masks([o.slots for o in obs], num_seed_families=3, max_seeds=3)
    policy = PPOPolicy(PPOConfig(learn=False), kit.context(n_envs=2))
    seen = set()
    for _ in range(60):
        policy.begin_episode(0, 2)
        seen.update(action.op for action in policy.act(obs, masks))
        policy.record([0.0, 0.0], terminal=True)
        policy.end_episode(0)
    allowed = {LifecycleOp(index) for index in torch.nonzero(masks.op[0]).flatten().tolist()}
    assert seen == allowed


def test_masked_entries_do_not_contribute_to_the_entropy():
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.7]])
    mask = torch.tensor([[True, False, True, True]])
    expected = torch.distributions.Categorical(logits=logits[mask].view(1, -1)).entropy()
    entropy = masked_entropy(masked_log_probs(logits, mask), mask)
    assert torch.allclose(entropy, expected, atol=1e-6)
    changed = logits.clone()
    changed[0, 1] = 50.0  # a forbidden entry's logit is irrelevant
    assert torch.equal(masked_entropy(masked_log_probs(changed, mask), mask), entropy)
    unmasked = masked_entropy(masked_log_probs(logits, None), None)
    assert not torch.allclose(unmasked, entropy)


def test_masked_probabilities_are_exactly_zero_and_never_sampled():
    logits = torch.tensor([[5.0, 0.0, -3.0]]).repeat(2000, 1)
    mask = torch.tensor([[False, True, True]]).repeat(2000, 1)
    log_probs = masked_log_probs(logits, mask)
    assert float(log_probs[0, 0].exp()) == 0.0
    uniform = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0))
    assert not bool((choose(log_probs, uniform) == 0).any())
    assert bool((choose(log_probs, None) == 1).all())


def test_gumbel_max_sampling_matches_the_distribution():
    log_probs = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).repeat(20000, 1)
    uniform = torch.rand(20000, 4, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(choose(log_probs, uniform), minlength=4).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015)


def _all_allowed(n: int, n_slots: int = 3, n_blueprints: int = 3, n_subtargets: int = 4) -> StepMasks:
    return StepMasks(
        op=torch.ones(n, len(LifecycleOp), dtype=torch.bool),
        slot=torch.ones(n, n_slots, dtype=torch.bool),
        blueprint=torch.ones(n, n_blueprints, dtype=torch.bool),
        subtarget=torch.ones(n, n_subtargets, dtype=torch.bool),
    )


def test_irrelevant_heads_add_no_log_prob_or_entropy(kit):
    policy = kit.policy(subtarget_count=4)
    network = policy.network
    z = torch.randn(len(LifecycleOp), policy.sizes.lstm_hidden)
    actions = torch.zeros(len(LifecycleOp), len(HEADS), dtype=torch.long)
    actions[:, HEAD_INDEX["op"]] = torch.arange(len(LifecycleOp))
    with torch.no_grad():
        log_prob, entropies = network.evaluate(z, actions, _all_allowed(len(LifecycleOp)))
        op_log_probs = torch.log_softmax(network.op_logits(z), dim=-1)
    wait = int(LifecycleOp.WAIT)
    assert torch.allclose(log_prob[wait], op_log_probs[wait, wait])
    for op in LifecycleOp:
        for head, index in HEAD_INDEX.items():
            if head in CAUSAL_RELEVANCE[op]:
                assert float(entropies[int(op), index]) > 0.0
            else:
                assert float(entropies[int(op), index]) == 0.0


@pytest.mark.parametrize("head", ["style", "blueprint", "alpha_speed"])
def test_changing_an_irrelevant_heads_logits_does_not_change_the_loss(kit, head):
    policy = kit.policy(seed=3)
    batch = kit.rollout_batch(policy, seed=3)
    # every step takes one of the ops for which `head` is irrelevant, yet holds a non-zero value in it
    irrelevant_ops = torch.tensor([int(op) for op in LifecycleOp if head not in CAUSAL_RELEVANCE[op]])
    relevant_op = next(op for op in LifecycleOp if head in CAUSAL_RELEVANCE[op])
    actions = batch.actions.clone()
    steps = actions[..., 0].numel()
    actions[..., HEAD_INDEX["op"]] = irrelevant_ops[torch.arange(steps) % len(irrelevant_ops)].view(actions.shape[:-1])
    actions[..., HEAD_INDEX[head]] = 1
    ones = torch.ones_like
    irrelevant_batch = attrs.evolve(
        batch, actions=actions, op_mask=ones(batch.op_mask), slot_mask=ones(batch.slot_mask),
        blueprint_mask=ones(batch.blueprint_mask),
    )
    relevant_actions = actions.clone()
    relevant_actions[0, 0, HEAD_INDEX["op"]] = int(relevant_op)
    relevant_batch = attrs.evolve(irrelevant_batch, actions=relevant_actions)

    network = policy.network
    ppo_losses(network, irrelevant_batch, policy.config).loss.backward()
    head_grads = [p.grad for p in network.policy_heads[head].parameters()]
    assert all(g is None or float(g.abs().max()) == 0.0 for g in head_grads)
    with torch.no_grad():  # compared without autograd on both sides: CPU kernels may differ in the last bit
        before = ppo_losses(network, irrelevant_batch, policy.config)
        before_relevant = ppo_losses(network, relevant_batch, policy.config)
        last = network.policy_heads[head][-1]
        last.bias.add_(torch.linspace(-3.0, 3.0, last.bias.numel()))
        last.weight.mul_(25.0)
        after = ppo_losses(network, irrelevant_batch, policy.config)
        after_relevant = ppo_losses(network, relevant_batch, policy.config)
    assert torch.equal(after.loss, before.loss)
    assert torch.equal(after.entropy, before.entropy)
    assert float(after.approx_kl) == float(before.approx_kl)
    assert not torch.equal(after_relevant.loss, before_relevant.loss)  # the test can fail
