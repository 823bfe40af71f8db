"""esper_core.testing's builders: what plugins' tests build their inputs and toy runs from."""

from __future__ import annotations

import pytest
import torch

from esper_core.leyline import SeedStage
from esper_core.testing import (
    SEED_FAMILIES,
    SLOT_IDS,
    TOY_RUN,
    action_masks,
    comparable,
    merge_sections,
    observation,
    policy_context,
    registered_records,
    same_state,
    slot_report,
    task_info,
    toy_plugin_manager,
    toy_run_data,
)
from esper_core.testing import toy_plugin


def test_registered_records_calls_one_hook_of_one_plugin():
    assert list(registered_records(toy_plugin, "seed_families")) == ["toy_conv", "toy_ladder"]
    assert registered_records(toy_plugin, "hosts")["toy"].build is toy_plugin.ToyHost
    assert registered_records(object(), "hosts") == {}  # no such hook: nothing registered
    with pytest.raises(ValueError, match="unknown registry kind 'host'"):
        registered_records(toy_plugin, "host")


def test_the_toy_plugin_manager_loads_the_toy_plugin_and_the_plugins_given_only():
    extra = type("Extra", (), {})()
    manager = toy_plugin_manager(extra)
    names = [info.name for info in manager.plugins]
    assert "esper_core.testing.toy_plugin" in names and not manager.failures
    assert manager.lookup("tasks", "toy").build is toy_plugin.build_toy_task
    assert not any(name.startswith("esper_cnn") for name in names)  # no entry points


def test_toy_run_data_merges_tables_and_a_policy_of_another_name_replaces_the_table(tmp_path):
    data = toy_run_data(tmp_path, run={"rounds": 3})
    assert data["run"]["rounds"] == 3 and data["run"]["envs"] == TOY_RUN["run"]["envs"]
    assert data["run"]["output_dir"] == str(tmp_path)
    assert TOY_RUN["run"].get("output_dir") is None and TOY_RUN["run"]["rounds"] == 1  # the template is untouched
    assert data["policy"] == {"name": "scripted", "script": {}}
    ppo = merge_sections(data, {"policy": {"name": "ppo", "learning_rate": 0.1}})
    assert ppo["policy"] == {"name": "ppo", "learning_rate": 0.1}
    assert merge_sections(ppo, {"policy": {"gamma": 0.9}})["policy"] == {"name": "ppo", "learning_rate": 0.1, "gamma": 0.9}
    assert ppo["policy"] == {"name": "ppo", "learning_rate": 0.1}  # merge_sections copies


def test_slot_reports_observations_and_masks_fit_the_policy_context():
    context = policy_context(n_envs=2, episode_length=12)
    assert context.slot_config.slot_ids == SLOT_IDS and context.seed_families == SEED_FAMILIES
    assert context.seed_family_params == ((100, 200, 300),) * 3
    training = slot_report(1, SeedStage.TRAINING, family="conv_heavy", epochs_in_stage=2)
    assert (training.seed_id, training.seed_params, training.metrics.seed_age_epochs) == ("seed-r0c1", 200, 2)
    assert slot_report(0).seed_id is None and slot_report(0).seed_params == 0
    seen = observation(3, {1: training}, env_id=1, episode_length=12)
    assert [report.stage for report in seen.slots] == [SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.DORMANT]
    assert seen.metric_history == (0.5,) * 4 and seen.slots[0].env_id == 1
    masks = action_masks([observation(3), seen])
    assert masks.num_envs == 2 and tuple(masks.blueprint.shape[1:]) == (3, 3)


def test_task_info_describes_image_and_language_tasks():
    assert task_info().topology == "image" and task_info().score_basis == "metric"
    language = task_info(topology="sequence", input_shape=(8,), num_classes=11, score_basis="loss")
    assert (language.input_shape, language.num_classes, language.score_basis) == ((8,), 11, "loss")


def test_comparable_drops_wall_clock_values_and_same_state_is_exact():
    records = [
        {"event": "RUN_STARTED", "data": {"seconds": 1.0}},
        {"event": "EPOCH_COMPLETED", "data": {"epoch": 1, "train_seconds": 0.3}},
        {"event": "POLICY_UPDATED", "data": {"round": 0, "metrics": {"charts/SPS": 90.0, "value_loss": 0.5}}},
    ]
    assert comparable(records) == [
        ("EPOCH_COMPLETED", '{"epoch": 1}'),
        ("POLICY_UPDATED", '{"metrics": {"value_loss": 0.5}, "round": 0}'),
    ]
    state = {"a": [torch.ones(2), 1], "b": (2.0,)}
    assert same_state(state, {"a": [torch.ones(2), 1], "b": [2.0]})
    assert not same_state(state, {"a": [torch.ones(2, dtype=torch.float64), 1], "b": (2.0,)})
    assert not same_state(state, {"a": [torch.ones(2), 1.0], "b": (2.0,)})
