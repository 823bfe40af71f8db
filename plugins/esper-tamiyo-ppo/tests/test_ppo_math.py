"""GAE, advantage normalisation, sequence chunking and the observation normaliser, checked by hand."""

from __future__ import annotations

import math
import random

import attrs
import pytest
import torch

from esper_core.tamiyo import BASE_FEATURES, SLOT_FEATURES, FeatureBatch
from esper_tamiyo_ppo import (
    ObservationNormalizer,
    RolloutBuffer,
    RunningMeanStd,
    compute_gae,
    explained_variance,
    normalize_advantages,
    ppo_losses,
)
from esper_tamiyo_ppo.buffer import STEP_KEYS
from esper_tamiyo_ppo.normalizer import continuous_columns

REWARDS = torch.tensor([[1.0], [2.0], [3.0]])
VALUES = torch.tensor([[0.5], [1.0], [1.5]])
GAMMA, LAMBDA = 0.9, 0.8  # gamma * lambda = 0.72


def test_gae_matches_a_hand_computed_terminal_episode():
    terminals = torch.tensor([[False], [False], [True]])
    advantages, returns = compute_gae(REWARDS, VALUES, terminals, torch.tensor([99.0]), GAMMA, LAMBDA)
    # delta2 = 3 - 1.5 = 1.5 (terminal: the bootstrap 99 is ignored)
    # delta1 = 2 + 0.9 * 1.5 - 1.0 = 2.35;   A1 = 2.35 + 0.72 * 1.5  = 3.43
    # delta0 = 1 + 0.9 * 1.0 - 0.5 = 1.4;    A0 = 1.4  + 0.72 * 3.43 = 3.8696
    assert torch.allclose(advantages, torch.tensor([[3.8696], [3.43], [1.5]]), atol=1e-5)
    assert torch.allclose(returns, advantages + VALUES)


def test_gae_bootstraps_a_truncated_sequence():
    terminals = torch.tensor([[False], [False], [False]])
    advantages, _ = compute_gae(REWARDS, VALUES, terminals, torch.tensor([2.0]), GAMMA, LAMBDA)
    # delta2 = 3 + 0.9 * 2.0 - 1.5 = 3.3;   A1 = 2.35 + 0.72 * 3.3 = 4.726;   A0 = 1.4 + 0.72 * 4.726 = 4.80272
    assert torch.allclose(advantages, torch.tensor([[4.80272], [4.726], [3.3]]), atol=1e-5)


def test_gae_does_not_leak_across_a_terminal_step():
    terminals = torch.tensor([[False], [True], [False]])
    advantages, _ = compute_gae(REWARDS, VALUES, terminals, torch.tensor([2.0]), GAMMA, LAMBDA)
    # A2 = 3.3 (bootstrapped); A1 = 2 - 1.0 = 1.0 (terminal); A0 = 1.4 + 0.72 * 1.0 = 2.12
    assert torch.allclose(advantages, torch.tensor([[2.12], [1.0], [3.3]]), atol=1e-5)


def test_advantage_normalisation_is_zero_mean_unit_std():
    advantages = torch.tensor([3.0, 5.0, 10.0, -2.0])
    normalized = normalize_advantages(advantages)
    assert abs(float(normalized.mean())) < 1e-6
    assert abs(float(normalized.std(correction=0)) - 1.0) < 1e-5
    assert torch.equal(normalize_advantages(torch.tensor([4.0])), torch.tensor([0.0]))


def test_explained_variance():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)
    assert explained_variance(-returns, returns) == pytest.approx(-3.0)  # 1 - Var(2 r) / Var(r)
    assert math.isnan(explained_variance(returns, torch.ones(4)))


def _at_current_policy(policy, batch):
    """The batch with its stored log-probs replaced by the current network's (ratio exactly 1)."""
    network = policy.network
    with torch.no_grad():
        state = (batch.h0.unsqueeze(0), batch.c0.unsqueeze(0))
        z, _ = network.encode(batch.base, batch.slots, batch.blueprint_ids, state)
        log_prob, _ = network.evaluate(z[batch.valid], batch.actions[batch.valid], batch.valid_masks())
    stored = batch.log_prob.clone()
    stored[batch.valid] = log_prob
    return attrs.evolve(batch, log_prob=stored)


def test_advantages_are_normalised_per_minibatch(kit):
    policy = kit.policy(seed=5)
    batch = _at_current_policy(policy, kit.rollout_batch(policy, seed=5))
    advantages = batch.advantages.clone()
    advantages[0] = 10.0  # sequence 0: constant advantages
    advantages[1] = torch.linspace(-1.0, 3.0, advantages.shape[1])
    batch = attrs.evolve(batch, advantages=advantages)
    first = batch.select(torch.tensor([0]))
    # at ratio 1 the surrogate is -mean(normalised advantages): 0 within any minibatch
    assert abs(float(ppo_losses(policy.network, first, policy.config).policy_loss)) < 1e-5
    assert abs(float(ppo_losses(policy.network, batch, policy.config).policy_loss)) < 1e-5
    raw = attrs.evolve(policy.config, normalize_advantages=False)
    assert float(ppo_losses(policy.network, first, raw).policy_loss) == pytest.approx(-10.0, abs=1e-4)


def _fake_step(t: int, n_envs: int = 2, hidden: int = 4) -> dict[str, torch.Tensor]:
    step = {key: torch.zeros(n_envs) for key in STEP_KEYS}
    step["actions"] = torch.full((n_envs, 8), t, dtype=torch.long)
    step["value"] = torch.full((n_envs,), 0.5 * t)
    step["h"] = torch.full((n_envs, hidden), float(t))
    step["c"] = torch.full((n_envs, hidden), -float(t))
    return step


@pytest.mark.parametrize("sequence_length, chunks", [(0, 1), (2, 3), (5, 1), (7, 1)])
def test_sequences_are_chunked_with_padding_and_stored_hidden_states(sequence_length, chunks):
    buffer = RolloutBuffer(torch.device("cpu"))
    steps = 5
    for t in range(steps):
        buffer.add_step(_fake_step(t))
        buffer.add_reward(torch.tensor([1.0, 2.0]), terminal=t == steps - 1)
    buffer.close_round()
    batch = buffer.sequences(0.9, 0.8, sequence_length)
    length = steps if sequence_length == 0 else sequence_length
    assert batch.num_sequences == 2 * chunks
    assert tuple(batch.actions.shape[:2]) == (2 * chunks, length)
    assert int(batch.valid.sum()) == 2 * steps
    # each chunk starts from the LSTM state stored before its first step
    starts = [k * length for k in range(chunks)]
    assert batch.h0[:chunks, 0].tolist() == [float(t) for t in starts]
    assert batch.c0[chunks:, 0].tolist() == [-float(t) for t in starts]
    # the valid steps, in order, are the original steps
    assert batch.actions[:chunks][batch.valid[:chunks]][:, 0].tolist() == list(range(steps))
    expected, _ = compute_gae(
        torch.tensor([[1.0, 2.0]] * steps), torch.tensor([[0.5 * t] * 2 for t in range(steps)]),
        torch.tensor([[t == steps - 1] * 2 for t in range(steps)]), torch.zeros(2), 0.9, 0.8,
    )
    assert torch.allclose(batch.advantages[chunks:][batch.valid[chunks:]], expected[:, 1])


def test_a_round_must_end_terminal_to_be_learned_from():
    buffer = RolloutBuffer(torch.device("cpu"))
    buffer.add_step(_fake_step(0))
    buffer.add_reward(torch.tensor([1.0, 2.0]), terminal=False)
    buffer.close_round()
    with pytest.raises(RuntimeError, match="non-terminal"):
        buffer.sequences(0.9, 0.8, 0)


def test_running_statistics_match_the_data():
    stats = RunningMeanStd(3, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, generator=generator) * 4 + 2 for n in (5, 17, 1, 40)]
    for batch in batches:
        stats.update(batch)
    data = torch.cat(batches).double()
    assert torch.allclose(stats.mean, data.mean(0), atol=1e-4)
    assert torch.allclose(stats.var, data.var(0, unbiased=False), atol=1e-3)


def test_normaliser_leaves_flags_alone_and_clips():
    base_columns = continuous_columns(BASE_FEATURES)
    slot_columns = continuous_columns(SLOT_FEATURES)
    names = [f.name for f in SLOT_FEATURES for _ in range(f.size)]
    assert not slot_columns[names.index("stage")] and not slot_columns[names.index("contribution_measured")]
    assert slot_columns[names.index("contribution")] and slot_columns[names.index("alpha")]
    normalizer = ObservationNormalizer(clip=3.0, device=torch.device("cpu"))
    rng = random.Random(0)
    rows = torch.tensor([[rng.choice([0.0, 1.0]) for _ in base_columns] for _ in range(50)])
    slots = torch.tensor([[[rng.choice([0.0, 1.0]) for _ in slot_columns]] * 3 for _ in range(50)])
    batch = FeatureBatch(base=rows, slots=slots, blueprint_ids=torch.zeros(50, 3, dtype=torch.long))
    normalizer.update(batch)
    outlier = FeatureBatch(base=rows[:1] * 1000, slots=slots[:1] * 1000, blueprint_ids=batch.blueprint_ids[:1])
    normalized = normalizer.normalize(outlier)
    assert torch.equal(normalized.base[:, ~base_columns], outlier.base[:, ~base_columns])
    assert torch.equal(normalized.slots[..., ~slot_columns], outlier.slots[..., ~slot_columns])
    assert float(normalized.base.abs()[:, base_columns].max()) <= 3.0
    assert float(normalized.base.abs()[:, base_columns].max()) == 3.0


def test_normaliser_statistics_move_only_while_learning(kit):
    for learn, moves in ((True, True), (False, False)):
        policy = kit.policy(learn=learn)
        before = policy.normalizer.state_dict()
        kit.play_round(policy)
        after = policy.normalizer.state_dict()
        assert (not torch.equal(before["base"]["mean"], after["base"]["mean"])) is moves
        assert (not torch.equal(before["slot"]["var"], after["slot"]["var"])) is moves
