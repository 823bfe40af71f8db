"""The subtarget head: masked sampling, causal relevance, its own entropy coefficient and floor, the unlock round, exact resume, and version 4 checkpoints that decide as before."""

from __future__ import annotations

import json
import random
from pathlib import Path

import attrs
import pytest
import torch

from esper_core.errors import CheckpointError
from esper_core.leyline import HEADS, FactoredAction, LifecycleOp, SeedStage
from esper_core.runs import load_checkpoint, save_checkpoint
from esper_core.testing import action_masks, observation, policy_context, slot_report
from esper_tamiyo_ppo import PPOConfig, PPOPolicy, ppo_losses
from esper_tamiyo_ppo.network import HEAD_INDEX
from esper_tamiyo_ppo.ppo import entropy_boosts

K = 4
SUBTARGET = HEAD_INDEX["subtarget"]
ENABLE, DISABLE = LifecycleOp.ENABLE_SUBTARGET, LifecycleOp.DISABLE_SUBTARGET
REPO = Path(__file__).resolve().parents[3]


def with_inventory(report, mask, importance=None):
    """``report`` with an inventory of ``len(mask)`` groups (True = enabled)."""
    return attrs.evolve(
        report, subtarget_kind="cnn_channel_group", subtarget_count=len(mask), subtarget_active_count=sum(mask),
        subtarget_active_mask=tuple(mask), subtarget_importance=tuple(importance or [0.5] * len(mask)),
        epochs_since_subtarget_change=None,
    )


def inventory_batch(kit, rng: random.Random, epoch: int, n_envs: int, *, k: int = K):
    """Observations whose live seeds have inventories of 1..k groups with random masks, and their masks."""
    observations = []
    for env in range(n_envs):
        reports = []
        for index in range(len(kit.slot_ids)):
            stage = rng.choice([SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING,
                                SeedStage.FOSSILIZED])
            report = kit.slot_report(index, stage, family=rng.randrange(3), env_id=env,
                                     contribution=rng.choice([None, rng.uniform(-0.1, 0.1)]))
            if stage is not SeedStage.DORMANT:
                count = rng.randint(1, k)
                report = with_inventory(report, [rng.random() < 0.5 for _ in range(count)],
                                        [rng.random() for _ in range(count)])
            reports.append(report)
        obs = kit.observation(epoch, reports, env_id=env, metric=rng.uniform(0.2, 0.9))
        observations.append(attrs.evolve(obs, subtarget_count=k))
    return observations, action_masks(observations, max_seeds=3, subtarget_count=k)


def play_inventory_round(kit, policy, *, seed, round_index=0, close=True, k=K):
    rng = random.Random(seed)
    n_envs = policy.context.n_envs
    policy.begin_episode(round_index, n_envs)
    actions = []
    for epoch in range(kit.episode_length - 1):
        observations, masks = inventory_batch(kit, rng, epoch, n_envs, k=k)
        actions.append(policy.act(observations, masks))
        policy.record([rng.uniform(-1.0, 1.0) for _ in range(n_envs)], terminal=epoch == kit.episode_length - 2)
    if close:
        policy.end_episode(round_index)
    return actions


def test_the_subtarget_head_picks_only_indices_the_masks_allow_for_the_chosen_op(kit):
    policy = kit.policy(seed=3, n_envs=4, subtarget_count=K, learn=False)
    rng = random.Random(5)
    picked = {ENABLE: set(), DISABLE: set()}
    for round_index in range(6):
        policy.begin_episode(round_index, 4)
        for epoch in range(kit.episode_length - 1):
            observations, masks = inventory_batch(kit, rng, epoch, 4)
            # only the subtarget ops and WAIT: the head is exercised at every decision it can be
            masks = attrs.evolve(masks, op=masks.op & torch.tensor(
                [op in (LifecycleOp.WAIT, ENABLE, DISABLE) for op in LifecycleOp]))
            for env, action in enumerate(policy.act(observations, masks)):
                assert masks.allows(env, action), action
                if action.op in (ENABLE, DISABLE):
                    report = observations[env].slots[action.slot]
                    enabled = report.subtarget_active_mask[action.subtarget]
                    assert enabled is (action.op is DISABLE)  # enable a disabled group, disable an enabled one
                    picked[action.op].add(action.subtarget)
                else:
                    assert action.subtarget == 0
            policy.record([0.0] * 4, terminal=epoch == kit.episode_length - 2)
        policy.end_episode(round_index)
    assert picked[ENABLE] == set(range(K)) and picked[DISABLE] == set(range(K))


def test_only_the_subtarget_ops_give_the_subtarget_head_log_prob_and_entropy(kit):
    policy = kit.policy(seed=2, subtarget_count=K)
    play_inventory_round(kit, policy, seed=4, close=False)
    policy.buffer.close_round()
    batch = policy.buffer.sequences(0.99, 0.95, 0)
    z, _ = policy.network.encode(batch.base, batch.slots, batch.blueprint_ids,
                                 (batch.h0.unsqueeze(0), batch.c0.unsqueeze(0)))
    actions = batch.actions[batch.valid]
    with torch.no_grad():
        log_prob, entropies = policy.network.evaluate(z[batch.valid], actions, batch.valid_masks())
    uses = (actions[:, 0] == int(ENABLE)) | (actions[:, 0] == int(DISABLE))
    assert bool(uses.any()) and bool((~uses).any())
    assert bool((entropies[~uses, SUBTARGET] == 0.0).all()) and bool((actions[~uses, SUBTARGET] == 0).all())
    choices = batch.valid_masks().subtarget[uses].sum(dim=-1)
    assert bool((entropies[uses & (batch.valid_masks().subtarget.sum(dim=-1) > 1), SUBTARGET] > 0.0).all())
    assert bool((choices >= 1).all())
    assert torch.allclose(log_prob, batch.log_prob[batch.valid], atol=1e-5)  # stored and re-evaluated agree


def test_the_subtarget_head_has_its_own_entropy_coefficient_and_floor(kit):
    policy = kit.policy(seed=2, subtarget_count=K)
    play_inventory_round(kit, policy, seed=4, close=False)
    policy.buffer.close_round()
    batch = policy.buffer.sequences(0.99, 0.95, 0)
    with torch.no_grad():
        base = ppo_losses(policy.network, batch, PPOConfig(subtarget_entropy_coef=0.0))
        raised = ppo_losses(policy.network, batch, PPOConfig(subtarget_entropy_coef=0.5))
        shared = ppo_losses(policy.network, batch, PPOConfig(entropy_coef=0.5))
    boost = 1.0 + (PPOConfig().entropy_floor_boost - 1.0) * float(base.entropy_below_floor[SUBTARGET])
    bonus = float(base.entropy[SUBTARGET]) * boost
    assert bonus > 0.0
    assert float(base.loss - raised.loss) == pytest.approx(0.5 * bonus, rel=1e-4)
    # unset, the subtarget head follows entropy_coef like every other head
    others = float((shared.entropy * (1.0 + 4.0 * shared.entropy_below_floor)).sum()) - bonus
    assert float(base.loss - shared.loss) == pytest.approx(0.49 * others + 0.5 * bonus - 0.0, rel=1e-3)

    norm_sum = torch.full((len(HEADS),), 0.5)
    norm_count = torch.ones(len(HEADS))
    boosts = entropy_boosts(norm_sum, norm_count, PPOConfig(entropy_floor=0.25, subtarget_entropy_floor=0.75))
    assert boosts[SUBTARGET] == 5.0 and bool((torch.cat([boosts[:SUBTARGET], boosts[SUBTARGET + 1:]]) == 1.0).all())
    assert entropy_boosts(norm_sum, norm_count, PPOConfig(entropy_floor=0.75))[SUBTARGET] == 5.0  # unset: shared


def test_an_update_reports_the_subtarget_heads_entropy(kit):
    policy = kit.policy(seed=1, subtarget_count=K)
    play_inventory_round(kit, policy, seed=3, close=False)
    metrics = policy.end_episode(0)
    assert metrics["entropy/subtarget"] > 0.0
    assert 0.0 < metrics["charts/entropy_norm/subtarget"] <= 1.0
    assert "charts/entropy_floor_boosted/subtarget" in metrics
    assert "obs/slot/subtarget_active_frac" in metrics and "obs/slot/subtarget_importance_norm" in metrics
    without = kit.policy(seed=1)  # K = 1, no inventories: the head is never relevant, so not reported
    kit.play_round(without, seed=3, close=False)
    assert "entropy/subtarget" not in without.end_episode(0)


def test_before_the_unlock_round_the_policy_never_uses_the_subtarget_ops(kit):
    policy = kit.policy(seed=0, n_envs=4, subtarget_count=K, subtarget_unlock_round=2, learn=False)
    rng = random.Random(1)
    for round_index in range(3):
        ops = set()
        policy.begin_episode(round_index, 4)
        for epoch in range(kit.episode_length - 1):
            observations, masks = inventory_batch(kit, rng, epoch, 4)
            masks = attrs.evolve(masks, op=masks.op & torch.tensor(
                [op in (LifecycleOp.WAIT, ENABLE, DISABLE) for op in LifecycleOp]))
            ops |= {action.op for action in policy.act(observations, masks)}
            policy.record([0.0] * 4, terminal=epoch == kit.episode_length - 2)
        policy.end_episode(round_index)
        if round_index < 2:
            assert ops == {LifecycleOp.WAIT}, round_index
        else:
            assert {ENABLE, DISABLE} <= ops


def test_the_unlock_mask_is_stored_with_the_decision(kit):
    policy = kit.policy(seed=0, subtarget_count=K, subtarget_unlock_round=1)
    play_inventory_round(kit, policy, seed=2, close=False)
    stored = torch.stack([step["op_mask"] for step in policy.buffer.steps])
    assert not bool(stored[..., int(ENABLE)].any()) and not bool(stored[..., int(DISABLE)].any())
    assert bool(stored[..., int(LifecycleOp.WAIT)].all())


def test_a_resumed_policy_with_inventories_continues_exactly(kit, tmp_path):
    reference = kit.policy(seed=7, subtarget_count=K, rounds_per_update=2)
    play_inventory_round(kit, reference, seed=1, round_index=0)
    reference_actions = play_inventory_round(kit, reference, seed=2, round_index=1)

    interrupted = kit.policy(seed=7, subtarget_count=K, rounds_per_update=2)
    play_inventory_round(kit, interrupted, seed=1, round_index=0)
    rng = random.Random(2)
    interrupted.begin_episode(1, 2)
    actions = []
    observations, masks = inventory_batch(kit, rng, 0, 2)
    actions.append(interrupted.act(observations, masks))
    save_checkpoint(tmp_path / "state.pt", {"policy": interrupted.state_dict()})
    resumed = kit.policy(seed=99, subtarget_count=K, rounds_per_update=2)
    resumed.load_state_dict(load_checkpoint(tmp_path / "state.pt")["policy"])
    for epoch in range(kit.episode_length - 1):
        if epoch:
            observations, masks = inventory_batch(kit, rng, epoch, 2)
            actions.append(resumed.act(observations, masks))
        resumed.record([rng.uniform(-1.0, 1.0) for _ in range(2)], terminal=epoch == kit.episode_length - 2)
    resumed.end_episode(1)
    assert actions == reference_actions
    assert any(action.op in (ENABLE, DISABLE) for step in actions for action in step)
    assert resumed.updates == reference.updates == 1
    for name, tensor in reference.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[name]), name
    for generator in ("generator", "subtarget_generator"):
        assert torch.equal(getattr(reference, generator).get_state(), getattr(resumed, generator).get_state())


def test_a_checkpoint_for_another_subtarget_head_size_is_refused(kit, tmp_path):
    trained = kit.policy(seed=1, subtarget_count=K)
    save_checkpoint(tmp_path / "k4.pt", {"policy": trained.state_dict()})
    with pytest.raises(CheckpointError, match="n_subtargets 4 vs 2"):
        kit.policy(subtarget_count=2, checkpoint=str(tmp_path / "k4.pt"), learn=False)


# -- version 4 checkpoints: examples/growth/digits-ppo.pt decides exactly as before ----------------------

DIGITS = REPO / "examples" / "growth" / "digits-ppo.pt"
#: The decisions the plugin at state version 4 (before the subtarget ops) took with digits-ppo.pt on the
#: observations below (written by that plugin; heads op..alpha_curve per environment per epoch).
LEGACY_DECISIONS = Path(__file__).parent / "data" / "digits_ppo_v4_decisions.json"
DIGITS_SLOTS = ("r0c0", "r0c1")
DIGITS_FAMILIES = ("conv_small", "conv_light", "conv_heavy")
LEGACY_OPS = 8  # the ops of state versions 3 and 4 (WAIT .. SHRINK_INTERNAL)


def digits_observations(rng, epoch, n_envs, episode_length=20):
    """Seeded observations of the digits-ppo run's shape (2 slots, 3 seed families), every old lever varied."""
    stages = [SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED]
    observations = []
    for env in range(n_envs):
        reports = []
        for index in range(len(DIGITS_SLOTS)):
            stage = rng.choice(stages)
            report = slot_report(
                index, stage, env_id=env, family=rng.choice(DIGITS_FAMILIES), slot_ids=DIGITS_SLOTS,
                seed_families=DIGITS_FAMILIES, alpha=rng.random() if stage is not SeedStage.DORMANT else 0.0,
                seed_params=rng.randrange(50, 800) if stage is not SeedStage.DORMANT else None,
                effective_params=rng.uniform(0, 500), contribution=rng.choice([None, rng.uniform(-0.05, 0.15)]),
                epochs_in_stage=rng.randrange(0, 6), seed_age_epochs=rng.randrange(0, 10),
            )
            if stage is not SeedStage.DORMANT:
                report = attrs.evolve(report, metrics=attrs.evolve(
                    report.metrics, seed_grad_norm=rng.uniform(0, 2), host_grad_norm=rng.uniform(0.1, 2),
                    contribution_velocity=rng.choice([None, rng.uniform(-0.02, 0.02)])))
            reports.append(report)
        history = tuple(rng.uniform(0.3, 0.9) for _ in range(epoch + 1))
        obs = observation(epoch, reports, env_id=env, metric_history=history, val_loss=rng.uniform(0.2, 2.0),
                          train_loss=rng.uniform(0.2, 2.0), episode_length=episode_length, max_seeds=2,
                          host_params=1234, slot_ids=DIGITS_SLOTS, seed_families=DIGITS_FAMILIES)
        last = rng.choice([None, *range(LEGACY_OPS)])
        obs = attrs.evolve(obs, last_action=None if last is None else FactoredAction(op=last, slot=rng.randrange(2)),
                           last_action_success=rng.random() < 0.7, rolled_back=rng.random() < 0.1)
        observations.append(obs)
    return observations


def play_digits(deterministic: bool, seed: int) -> list:
    context = policy_context(n_envs=3, seed=seed, episode_length=20, max_seeds=2, slot_ids=DIGITS_SLOTS,
                             seed_families=DIGITS_FAMILIES)
    policy = PPOPolicy(PPOConfig(checkpoint=str(DIGITS), learn=False, deterministic=deterministic), context)
    rng = random.Random(seed)
    policy.begin_episode(0, 3)
    actions = []
    for epoch in range(19):
        obs = digits_observations(rng, epoch, 3)
        acts = policy.act(obs, action_masks(obs, max_seeds=2))
        actions.append([[value for head, value in action.head_values().items() if head != "subtarget"] for action in acts])
        assert all(action.subtarget == 0 for action in acts)
        policy.record([0.0] * 3, terminal=epoch == 18)
    policy.end_episode(0)
    return actions


@pytest.mark.skipif(not DIGITS.exists(), reason="runs inside the Esper repository only")
def test_the_shipped_version_4_policy_decides_exactly_as_it_did_before_the_subtarget_ops():
    """The op head widens 8 -> 10 and a fresh subtarget head is added; with the new ops masked (no seed
    has an inventory) the argmax and the sampled actions, noise stream included, are the old plugin's."""
    legacy = json.loads(LEGACY_DECISIONS.read_text())
    assert legacy["heads"] == [head for head in HEADS if head != "subtarget"]
    for seed, expected in legacy["deterministic"].items():
        assert play_digits(True, int(seed)) == expected, f"deterministic, seed {seed}"
    for seed, expected in legacy["sampled"].items():
        assert play_digits(False, int(seed)) == expected, f"sampled, seed {seed}"


@pytest.mark.skipif(not DIGITS.exists(), reason="runs inside the Esper repository only")
def test_a_version_4_checkpoint_is_widened_row_by_row():
    saved = load_checkpoint(DIGITS)["policy"]
    context = policy_context(n_envs=1, slot_ids=DIGITS_SLOTS, seed_families=DIGITS_FAMILIES, subtarget_count=K)
    policy = PPOPolicy(PPOConfig(checkpoint=str(DIGITS), learn=False), context)
    network = policy.network.state_dict()
    old_ops = saved["architecture"]["n_ops"]
    assert old_ops == LEGACY_OPS and network["policy_heads.op.2.weight"].shape[0] == len(LifecycleOp)
    for name in ("op_embedding.weight", "policy_heads.op.2.weight", "policy_heads.op.2.bias", "q_head.2.weight"):
        assert torch.equal(network[name][:old_ops], saved["network"][name]), name
    assert network["policy_heads.subtarget.2.weight"].shape[0] == K
    # last_op: the saved "no action yet" column moves to the end; the new ops' columns read nothing
    trunk, old_trunk = network["trunk.0.weight"], saved["network"]["trunk.0.weight"]
    names = [name for name, _size in saved["architecture"]["base_features"]]
    start = sum(size for name, size in saved["architecture"]["base_features"][: names.index("last_op")])
    assert torch.equal(trunk[:, start:start + LEGACY_OPS], old_trunk[:, start:start + LEGACY_OPS])
    assert torch.equal(trunk[:, start + len(LifecycleOp)], old_trunk[:, start + LEGACY_OPS])
    assert not bool(trunk[:, start + LEGACY_OPS:start + len(LifecycleOp)].any())
    assert policy.architecture()["n_subtargets"] == K


# -- through the engine, with the testing kit's toy inventory seeds --------------------------------------


@pytest.fixture
def inventory_run(tmp_path):
    from esper_core.config import parse_config
    from esper_core.testing import merge_sections, toy_inventory, toy_plugin_manager, toy_run_data
    from esper_tamiyo_ppo import plugin as ppo_plugin

    manager = toy_plugin_manager(ppo_plugin, toy_inventory)

    def config(name: str, **sections):
        data = toy_run_data(
            tmp_path / name, run={"name": "ppo-inventory", "rounds": 2},
            morphogenesis={"seed_families": ["toy_groups", "toy_group_ladder"], "min_training_epochs": 1,
                           "embargo_epochs": 1},
            policy={"name": "ppo", "num_minibatches": 2, "min_decisions_per_update": 0, "learning_rate": 1e-3},
        )
        return parse_config(merge_sections(data, sections), manager)

    return manager, config


def test_a_run_with_inventories_uses_the_subtarget_head_and_resumes_exactly(inventory_run, kit):
    from esper_core.errors import RunAborted
    from esper_core.testing import resume_run, start_run

    manager, config = inventory_run
    reference = start_run(config("a"), manager)
    records = kit.events_of(reference)
    taken = [r["data"] for r in records if r["event"] == "ACTION_TAKEN"]
    subtarget_ops = [a for a in taken if a["action"]["op"] in ("ENABLE_SUBTARGET", "DISABLE_SUBTARGET")]
    assert subtarget_ops and all(a["success"] for a in subtarget_ops)  # sampled from the masks: always feasible
    changed = [r for r in records if r["event"] == "SEED_SUBTARGET_CHANGED"]
    assert len(changed) == len(subtarget_ops)
    updates = kit.policy_updates(reference)
    assert any("entropy/subtarget" in update for update in updates)
    state = kit.final_policy_state(reference)
    assert state["architecture"]["n_subtargets"] == 4 and state["version"] == 5

    created = []
    with pytest.raises(RunAborted):
        start_run(config("b", faults={"abort": {"round": 0, "epoch": 4}}), manager, on_run_dir=created.append)
    resumed = resume_run(created[0], manager)
    assert kit.comparable(kit.events_of(resumed)) == kit.comparable(records)


def test_an_unlock_round_keeps_the_subtarget_ops_out_of_the_first_rounds(inventory_run, kit):
    from esper_core.testing import start_run

    manager, config = inventory_run
    run = start_run(config("c", policy={"subtarget_unlock_round": 2}), manager)
    ops = {r["data"]["action"]["op"] for r in kit.events_of(run) if r["event"] == "ACTION_TAKEN"}
    assert not ops & {"ENABLE_SUBTARGET", "DISABLE_SUBTARGET"} and "GERMINATE" in ops
