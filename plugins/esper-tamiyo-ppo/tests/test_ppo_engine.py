"""The ppo policy through the real engine: exact resume after an abort, and evaluation from a saved run."""

from __future__ import annotations

import json

import pytest
import torch

from esper_core.errors import RunAborted
from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT, load_checkpoint
from esper_core.tamiyo import BASE_FEATURES, SLOT_FEATURES, build_features
from esper_core.testing import resume_run, start_run
from esper_tamiyo_ppo import PPOPolicy
from esper_tamiyo_ppo.normalizer import BINARY_FEATURES


@pytest.mark.parametrize("abort_epoch", [4, 7])
def test_resume_after_abort_gives_the_uninterrupted_result(manager, run_config, kit, abort_epoch):
    """Aborted mid-round (epoch 4: buffer and LSTM state half full) or at the round's end (epoch 7),
    with an update in between, the resumed run writes exactly the uninterrupted run's events."""
    sections = {"run": {"rounds": 2}, "policy": {"learning_rate": 1e-3}}
    reference = start_run(run_config(**sections), manager)
    created = []
    with pytest.raises(RunAborted):
        start_run(run_config(**sections, faults={"abort": {"round": 0, "epoch": abort_epoch}}), manager,
                  on_run_dir=created.append)
    resumed = resume_run(created[0], manager)
    expected = kit.comparable(kit.events_of(reference))
    assert kit.comparable(kit.events_of(resumed)) == expected
    assert [event for event, _ in expected].count("POLICY_UPDATED") == 2
    final_a = load_checkpoint(reference / CHECKPOINT_DIR / LATEST_CHECKPOINT)
    final_b = load_checkpoint(resumed / CHECKPOINT_DIR / LATEST_CHECKPOINT)
    for part in ("network", "normalizer", "optimizer", "generator", "counters"):
        assert kit.same_state(final_a["policy"][part], final_b["policy"][part]), part
    assert torch.equal(final_a["rng"]["torch"], final_b["rng"]["torch"])
    assert json.loads((resumed / "summary.json").read_text())["run"]["status"] == "completed"


def test_a_saved_policy_evaluates_a_run_without_changing(manager, run_config, kit):
    trained = start_run(run_config(policy={"learning_rate": 1e-3}), manager)
    saved = kit.final_policy_state(trained)
    for options in ({"deterministic": True}, {"deterministic": False}):
        config = run_config(policy={"checkpoint": str(trained), "learn": False, **options}, run={"rounds": 2})
        evaluation = start_run(config, manager)
        final = kit.final_policy_state(evaluation)
        for part in ("network", "normalizer"):
            assert kit.same_state(final[part], saved[part]), part
        assert final["counters"]["updates"] == 0
        assert final["buffer"] == {"rounds": [], "steps": [], "rewards": [], "terminals": []}
        updates = kit.policy_updates(evaluation)
        learned = {"policy_loss", "value_loss", "approx_kl", "clip_fraction", "entropy"}
        assert len(updates) == 2 and not any(name in learned for metrics in updates for name in metrics)
        actions = [r["data"]["action"]["op"] for r in kit.events_of(evaluation) if r["event"] == "ACTION_TAKEN"]
        assert len(actions) == 2 * 2 * 7


def test_binary_feature_columns_really_are_binary_on_engine_observations(manager, run_config, monkeypatch):
    """The normaliser leaves BINARY_FEATURES alone; they must hold only 0 and 1 in real observations."""
    seen = []
    original = PPOPolicy.act

    def spy(self, observations, masks):
        seen.extend(observations)
        return original(self, observations, masks)

    monkeypatch.setattr(PPOPolicy, "act", spy)
    start_run(run_config(policy={"learning_rate": 1e-2}, run={"rounds": 2}), manager)
    features = build_features(seen)
    assert len(seen) == 2 * 2 * 7
    for layout, values in ((BASE_FEATURES, features.base), (SLOT_FEATURES, features.slots.flatten(0, 1))):
        offset = 0
        for feature in layout:
            block = values[:, offset : offset + feature.size]
            if feature.name in BINARY_FEATURES or feature.name.endswith("_measured"):
                assert bool(((block == 0) | (block == 1)).all()), feature.name
            offset += feature.size
