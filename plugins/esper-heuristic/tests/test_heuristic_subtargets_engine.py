"""The subtarget rule and the adalora_schedule baseline through the real engine, on the testing kit's toy inventory seeds."""

from __future__ import annotations

import pytest

from esper_core.config import parse_config
from esper_core.leyline import LifecycleOp, SeedStage
from esper_core.testing import (
    comparable,
    events_of,
    merge_sections,
    resume_run,
    start_run,
    toy_inventory,
    toy_plugin_manager,
    toy_run_data,
)
from esper_heuristic import AdaLoRASchedulePolicy, HeuristicPolicy, Rule
from esper_heuristic import plugin as heuristic_plugin

#: A lifecycle fast enough for a 16-epoch toy episode: germinate at once, blend in 3 epochs, and a price so
#: high that no toy seed pays for more than one group.
LIFECYCLE = {
    "warmup_epochs": 0, "plateau_delta": 1.0, "tempo": "fast", "holding_patience": 4, "price_per_kparam": 1000.0,
    "fossilize_threshold": 0.0, "prune_threshold": 1.0,
}


@pytest.fixture
def manager():
    return toy_plugin_manager(heuristic_plugin, toy_inventory)


def config(manager, tmp_path, policy, **sections):
    data = toy_run_data(
        tmp_path / "runs", run={"name": "heuristic-inventory", "episode_length": 16},
        morphogenesis={"seed_families": ["toy_groups"], "min_training_epochs": 1, "embargo_epochs": 1},
        policy=policy,
    )
    return parse_config(merge_sections(data, sections), manager)


def record_decisions(monkeypatch, policy_class):
    """Every (observation, decision) the engine's policy makes."""
    seen = []
    original = policy_class.act

    def act(self, observations, masks):
        actions = original(self, observations, masks)
        seen.extend(zip(observations, self.last_decisions))
        return actions

    monkeypatch.setattr(policy_class, "act", act)
    return seen


def test_a_seed_that_does_not_pay_gives_up_its_least_important_group_through_the_engine(manager, tmp_path, monkeypatch):
    seen = record_decisions(monkeypatch, HeuristicPolicy)
    run = start_run(config(manager, tmp_path, {"name": "heuristic", **LIFECYCLE}), manager)
    disables = [(obs, decision) for obs, decision in seen if decision.rule is Rule.DISABLE_RENT]
    assert disables
    for observation, decision in disables:
        report = observation.slots[decision.action.slot]
        assert report.stage is SeedStage.HOLDING and report.subtarget_active_count > 1
        enabled = [i for i, on in enumerate(report.subtarget_active_mask) if on]
        least = min(enabled, key=lambda i: (report.subtarget_importance[i], -i))
        assert decision.action.subtarget == least
    records = events_of(run)
    taken = [r["data"] for r in records if r["event"] == "ACTION_TAKEN"
             and r["data"]["action"]["op"] in ("ENABLE_SUBTARGET", "DISABLE_SUBTARGET")]
    assert len(taken) == len(disables) and all(action["success"] for action in taken)
    assert len([r for r in records if r["event"] == "SEED_SUBTARGET_CHANGED"]) == len(taken)

    seen.clear()
    start_run(config(manager, tmp_path / "off", {"name": "heuristic", **LIFECYCLE, "subtarget_ops": False}), manager)
    assert seen and not any(decision.action.op in (LifecycleOp.ENABLE_SUBTARGET, LifecycleOp.DISABLE_SUBTARGET)
                            for _obs, decision in seen)


def test_the_adalora_schedule_runs_and_resumes_exactly(manager, tmp_path, monkeypatch):
    seen = record_decisions(monkeypatch, AdaLoRASchedulePolicy)
    lifecycle = {**LIFECYCLE, "price_per_kparam": 0.0}  # every seed pays: only the schedule disables groups
    policy = {"name": "adalora_schedule", **lifecycle, "start_epoch": 0, "interval": 1, "budget_fraction": 0.5}
    reference = start_run(config(manager, tmp_path / "a", policy), manager)
    scheduled = [(obs, decision) for obs, decision in seen if decision.rule is Rule.SCHEDULE_DISABLE]
    assert scheduled
    for observation, decision in scheduled:
        report = observation.slots[decision.action.slot]
        assert report.stage is not SeedStage.FOSSILIZED and report.subtarget_active_count > 1
    assert not any(decision.rule in (Rule.DISABLE_RENT, Rule.ENABLE_PAYING) for _obs, decision in seen)
    created = []
    from esper_core.errors import RunAborted

    with pytest.raises(RunAborted):
        start_run(config(manager, tmp_path / "b", policy, faults={"abort": {"round": 0, "epoch": 9}}), manager,
                  on_run_dir=created.append)
    resumed = resume_run(created[0], manager)
    assert comparable(events_of(resumed)) == comparable(events_of(reference))
