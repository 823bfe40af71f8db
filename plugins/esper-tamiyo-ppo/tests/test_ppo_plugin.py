"""Registration, config validation (`[policy] ...` errors), presets, and checkpoint loading errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esper_core.config import parse_config
from esper_core.errors import CheckpointError, ConfigError
from esper_core.plugins import PluginManager
from esper_core.runs import load_checkpoint, save_checkpoint
from esper_core.tamiyo import Policy
from esper_core.tamiyo import RENAMED_FEATURES, SLOT_FEATURES
from esper_core.testing import engine_policy, policy_context, start_run
from esper_core.validators import InvalidValue
from esper_tamiyo_ppo import PRESETS, PolicyNetwork, PPOConfig, PPOPolicy, parameter_count


def test_entry_point_registers_a_learning_ppo_policy(kit):
    manager = PluginManager()
    assert [failure for failure in manager.failures if failure.distribution == "esper-tamiyo-ppo"] == []
    kind = manager.lookup("policies", "ppo")
    assert kind.learns is True
    assert kind.config_class is PPOConfig
    assert manager.registry.owner("policies", "ppo") == "ppo"
    policy = kind.build(PPOConfig(num_minibatches=2), kit.context())
    assert isinstance(policy, PPOPolicy) and isinstance(policy, Policy)


def _problems(manager, policy: dict) -> list[str]:
    data = {"task": {"name": "toy"}, "sinks": {"memory": {}}, "policy": {"name": "ppo", **policy}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, manager)
    return info.value.problems


def test_bad_values_are_reported_as_policy_errors(manager):
    problems = _problems(manager, {
        "preset": "gpu", "feature_dim": 0, "gamma": 1.5, "clip_coef": -1, "target_kl": 0,
        "entropy_head_weights": {"bogus": 1.0}, "observation_clip": float("inf"),
    })
    assert problems == [
        "[policy] preset: must be one of cpu, baseline, got 'gpu'",
        "[policy] feature_dim: must be >= 1, got 0",
        "[policy] observation_clip: must be a finite number > 0, got inf",
        "[policy] gamma: must be a finite number in [0, 1], got 1.5",
        "[policy] clip_coef: must be a finite number > 0, got -1.0",
        "[policy] entropy_head_weights: unknown head(s) bogus; heads: op, slot, blueprint, style, tempo, "
        "alpha_target, alpha_speed, alpha_curve, subtarget",
        "[policy] target_kl: must be a finite number > 0, got 0.0",
    ]
    assert _problems(manager, {"entropy_head_weights": {"op": -1.0}}) == [
        "[policy] entropy_head_weights: weights must be finite and >= 0; got op=-1.0"
    ]
    assert _problems(manager, {
        "subtarget_entropy_coef": -0.1, "subtarget_entropy_floor": 1.5, "subtarget_unlock_round": -1,
    }) == [
        "[policy] subtarget_entropy_coef: must be a finite number >= 0, got -0.1",
        "[policy] subtarget_entropy_floor: must be a finite number in [0, 1], got 1.5",
        "[policy] subtarget_unlock_round: must be >= 0, got -1",
    ]
    assert _problems(manager, {"update_epochs": 2.5, "lr": 0.1, "learn": "yes"}) == [
        "[policy] learn: expected true or false, got 'yes'",
        "[policy] update_epochs: expected an integer, got 2.5",
        "[policy] unknown key 'lr'",
    ]


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"policy": {"num_minibatches": 3}}, "[policy] num_minibatches: 3 minibatches need at least as many sequences"),
        ({"policy": {"deterministic": True}}, "[policy] deterministic: argmax actions need learn = false"),
        ({"run": {"episode_length": 1}}, "[policy] ppo needs episode_length >= 2"),
    ],
)
def test_options_that_cannot_fit_the_run_fail_before_the_run_starts(run_config, manager, tmp_path, sections, message):
    with pytest.raises(ConfigError) as info:
        start_run(run_config(**sections), manager)
    assert info.value.problems[0].startswith(message)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_chunked_sequences_allow_more_minibatches_than_environments(run_config, manager, kit):
    run_dir = start_run(run_config(policy={"num_minibatches": 4, "sequence_length": 3}), manager)
    assert kit.policy_updates(run_dir)[0]["charts/minibatch_steps"] == 4 * 4


def test_the_config_class_validates_direct_construction_too():
    with pytest.raises(InvalidValue, match="^update_epochs must be an integer, got 2.5$"):
        PPOConfig(update_epochs=2.5)
    with pytest.raises(TypeError, match="'learn'"):
        PPOConfig(learn="yes")
    with pytest.raises(InvalidValue, match="^checkpoint must be a non-empty path"):
        PPOConfig(checkpoint=" ")


def test_explicit_sizes_override_the_preset():
    sizes = PPOConfig(preset="baseline", lstm_hidden=32).sizes()
    assert sizes.feature_dim == PRESETS["baseline"].feature_dim == 512 and sizes.lstm_hidden == 32
    assert PPOConfig().sizes() == PRESETS["cpu"]


@pytest.mark.parametrize("preset, expected", [("cpu", 105_332), ("baseline", 4_114_236)])
def test_preset_parameter_counts_on_three_slots(preset, expected):
    """The README's numbers (3 slots, 3 seed families); a change to the network must update them."""
    assert parameter_count(PolicyNetwork(PRESETS[preset], n_slots=3, n_blueprints=3)) == expected


def test_missing_or_foreign_checkpoints_are_refused_in_one_line(kit, tmp_path, run_config, manager):
    with pytest.raises(CheckpointError, match=r"^\[policy\] checkpoint: checkpoint '.*nowhere.pt' does not exist$"):
        kit.policy(checkpoint=str(tmp_path / "nowhere.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"latest.pt' does not exist"):
        kit.policy(checkpoint=str(tmp_path / "empty"))
    scripted = start_run(run_config(policy={"name": "scripted", "script": {}}), manager)
    with pytest.raises(CheckpointError, match="was not written by the ppo policy"):
        kit.policy(checkpoint=str(scripted))
    save_checkpoint(tmp_path / "bare.pt", {"round": 1})
    with pytest.raises(CheckpointError, match="holds no policy state"):
        kit.policy(checkpoint=str(tmp_path / "bare.pt"))


def test_incompatible_checkpoints_name_the_differences(kit, run_config, manager):
    trained = start_run(run_config(host={"blocks": 2}), manager)
    with pytest.raises(CheckpointError) as info:
        start_run(run_config(policy={"checkpoint": str(trained), "learn": False}), manager)
    message = str(info.value)
    assert "\n" not in message and message.startswith("[policy] checkpoint: checkpoint '")
    assert "slot_ids ['r0c0', 'r0c1'] vs ['r0c0', 'r0c1', 'r0c2']" in message
    small = start_run(run_config(), manager)
    with pytest.raises(CheckpointError, match="feature_dim 64 vs 32; lstm_hidden 64 vs 16"):
        start_run(run_config(policy={"checkpoint": str(small), "feature_dim": 32, "lstm_hidden": 16}), manager)


def test_a_checkpoint_seeds_a_learning_run_with_its_weights(kit, run_config, manager):
    trained = start_run(run_config(), manager)
    saved = kit.final_policy_state(trained)
    config = run_config(policy={"checkpoint": str(trained / "checkpoints" / "latest.pt")})
    policy = engine_policy(config, manager)
    assert kit.same_state(dict(policy.network.state_dict()), saved["network"])
    assert kit.same_state(policy.normalizer.state_dict(), saved["normalizer"])
    assert policy.updates == 0 and saved["counters"]["updates"] == 1  # optimizer, counters, RNG start fresh
    fresh = engine_policy(run_config(), manager)
    assert not torch.equal(fresh.network.lstm.weight_hh_l0, policy.network.lstm.weight_hh_l0)


def _narrowed(state: dict, drop: str) -> dict:
    """``state`` as an older plugin would have saved it: without slot feature ``drop`` (version 3)."""
    offset = 0
    for feature in SLOT_FEATURES:
        if feature.name == drop:
            break
        offset += feature.size
    keep = [index for index in range(state["network"]["slot_encoder.0.weight"].shape[1]) if index != offset]
    network = {**state["network"], "slot_encoder.0.weight": state["network"]["slot_encoder.0.weight"][:, keep]}
    slot_stats = state["normalizer"]["slot"]
    stats_keep = [index for index in range(slot_stats["mean"].numel()) if index != offset]
    normalizer = {**state["normalizer"], "slot": {**slot_stats, "mean": slot_stats["mean"][stats_keep],
                                                  "var": slot_stats["var"][stats_keep]}}
    architecture = {**state["architecture"], "slot_features": [
        [name, size] for name, size in state["architecture"]["slot_features"] if name != drop]}
    return {**state, "version": 3, "network": network, "normalizer": normalizer, "architecture": architecture}


def test_a_checkpoint_of_the_previous_layout_is_widened_and_decides_as_before(kit, tmp_path):
    """A version 3 network (no ladder_kind_norm) loads as a checkpoint: the new feature's column enters
    with zero weight, so the widened policy gives the saved policy's outputs whatever the feature says."""
    trained = kit.policy(seed=4, learning_rate=1e-2)
    kit.play_round(trained, seed=4)
    offset = sum(feature.size for feature in SLOT_FEATURES[: [f.name for f in SLOT_FEATURES].index("ladder_kind_norm")])
    with torch.no_grad():
        trained.network.slot_encoder[0].weight[:, offset] = 0.0  # what the old network could not read
    state = trained.state_dict()
    save_checkpoint(tmp_path / "v3.pt", {"policy": _narrowed(state, "ladder_kind_norm")})
    widened = kit.policy(seed=9, checkpoint=str(tmp_path / "v3.pt"), learn=False, deterministic=True)
    assert kit.same_state(dict(widened.network.state_dict()), dict(trained.network.state_dict()))
    assert kit.same_state(widened.normalizer.state_dict()["slot"]["count"], trained.normalizer.state_dict()["slot"]["count"])
    assert float(widened.normalizer.slot.mean[offset]) == 0.0 and float(widened.normalizer.slot.var[offset]) == 1.0

    broken = _narrowed(state, "ladder_kind_norm")
    broken["architecture"]["slot_features"] = [["no_such_feature", 1], *broken["architecture"]["slot_features"]]
    save_checkpoint(tmp_path / "odd.pt", {"policy": broken})
    with pytest.raises(CheckpointError, match="cannot be widened to this one: it has features this layout lacks "
                                              r"\(no_such_feature\); retrain"):
        kit.policy(checkpoint=str(tmp_path / "odd.pt"))
    resumed = kit.policy(seed=4)
    with pytest.raises(CheckpointError, match="has ppo state version 3; this plugin reads 5"):
        resumed.load_state_dict(_narrowed(state, "ladder_kind_norm"))


def test_the_shipped_growth_policy_loads(kit):
    """examples/growth/digits-ppo.pt (written before ladder_kind_norm) still loads as a checkpoint."""
    path = Path(__file__).resolve().parents[3] / "examples" / "growth" / "digits-ppo.pt"
    if not path.exists():
        pytest.skip("runs inside the Esper repository only")
    architecture = load_checkpoint(path)["policy"]["architecture"]
    context = policy_context(n_envs=1, slot_ids=architecture["slot_ids"], seed_families=architecture["blueprints"])
    policy = PPOPolicy(PPOConfig(checkpoint=str(path), learn=False), context)
    assert policy.architecture()["slot_features"] == [[f.name, f.size] for f in SLOT_FEATURES]


def test_a_state_naming_features_as_before_0_2_0_resumes(kit):
    """0.2.0 renamed metric_delta_since_germination to score_delta_since_germination (it holds the score);
    a resume state that still names the old feature loads, and decides as the policy that wrote it."""
    policy = kit.policy(seed=6)
    state = policy.state_dict()
    old_names = {new: old for old, new in RENAMED_FEATURES.items()}
    architecture = dict(state["architecture"])
    architecture["slot_features"] = [[old_names.get(name, name), size] for name, size in architecture["slot_features"]]
    assert architecture["slot_features"] != state["architecture"]["slot_features"]
    resumed = kit.policy(seed=9)
    resumed.load_state_dict({**state, "architecture": architecture})
    assert resumed.architecture()["slot_features"] == state["architecture"]["slot_features"]
    for mine, theirs in zip(resumed.network.parameters(), policy.network.parameters()):
        assert torch.equal(mine, theirs)
