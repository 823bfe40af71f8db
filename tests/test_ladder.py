"""Internal capacity ladders: GROW/SHRINK_INTERNAL mechanics, masks, events, reports, conformance, engine."""

from __future__ import annotations

import json

import pytest
import torch

from esper_core.errors import PluginError, RunAborted
from esper_core.leyline import (
    AlphaTarget,
    BlendStyle,
    FactoredAction,
    LifecycleOp,
    SeedStage,
    TelemetryEventType,
    event_from_dict,
)
from esper_core.registry import LadderSpec, SeedFamily
from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT, load_checkpoint
from esper_core.tamiyo import compute_masks
from esper_core.testing import ConformanceError, check_ladder_family, check_seed_family
from esper_core.tolaria.engine import check_ladder, start_run
from esper_core.telemetry.report import read_events
from tests import toy_plugin
from tests.conftest import make_model

GROW = LifecycleOp.GROW_INTERNAL
SHRINK = LifecycleOp.SHRINK_INTERNAL
LADDER = 1  # seed family (blueprint head) index of toy_ladder in make_model


def ladder_family(build=toy_plugin.build_toy_ladder, ladder=toy_plugin.TOY_LADDER) -> SeedFamily:
    return SeedFamily(name="toy_ladder", build=build, topologies=("image",), ladder=ladder)


def test_the_toy_ladder_passes_the_conformance_kit():
    check_seed_family(ladder_family(), channels=6)


def test_conformance_catches_a_jump_when_growing():
    jumpy = ladder_family(build=lambda c, t, cfg: toy_plugin.ToyLadder(c, rezero_on_grow=False))
    with pytest.raises(ConformanceError, match="growing to level 1 changes the output"):
        check_ladder_family(jumpy, channels=6)


def test_conformance_catches_active_inactive_capacity():
    class Leaky(toy_plugin.ToyLadder):
        def forward(self, x):  # the top branch always runs: inactive capacity is not inert
            return super().forward(x) + 0.0 * self.branches[2](x) + self.scales[2] * torch.tanh(self.branches[2](x))

    with pytest.raises(ConformanceError):
        check_ladder_family(ladder_family(build=lambda c, t, cfg: Leaky(c)), channels=6)


def test_conformance_catches_a_wrong_declaration_and_the_engine_too():
    wrong = ladder_family(ladder=LadderSpec(kind="lora_rank", max_level=3, initial_level=1))
    with pytest.raises(ConformanceError, match="differs from the declared"):
        check_ladder_family(wrong, channels=6)
    with pytest.raises(PluginError, match="declares ladder"):
        check_ladder(wrong, toy_plugin.ToyLadder(6))
    undeclared = SeedFamily(name="sneaky", build=toy_plugin.build_toy_ladder, topologies=("image",))
    with pytest.raises(PluginError, match="declares no ladder"):
        check_ladder(undeclared, toy_plugin.ToyLadder(6))
    with pytest.raises(ValueError, match="'none' means no ladder"):
        LadderSpec(kind="none", max_level=2)


def germinate_ladder(model, slot=0):
    action = FactoredAction(op=LifecycleOp.GERMINATE, slot=slot, blueprint=LADDER, alpha_target=AlphaTarget.FULL)
    assert model.apply(action, score_now=0.1).success
    return model.slots[model.slot_ids[slot]]


def test_grow_and_shrink_move_the_level_and_emit_one_event_each():
    events = []
    model = make_model(events=events)
    slot = germinate_ladder(model)
    report = slot.report()
    assert (report.internal_kind, report.internal_level, report.internal_max_level) == ("conv_stages", 1, 3)
    assert report.internal_effective_params == slot.ladder.internal_effective_params(1) < report.built_params
    assert model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1).success
    assert model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1).success
    failed = model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1)
    assert not failed.success and "outside the ladder 0..3" in failed.reason
    assert model.apply(FactoredAction(op=SHRINK, slot=0), score_now=0.1).success
    changes = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED]
    assert [(c.from_level, c.to_level) for c in changes] == [(1, 2), (2, 3), (3, 2)]
    assert changes[0].internal_effective_params == slot.ladder.internal_effective_params(2)
    assert slot.report().internal_last_direction == -1 and slot.report().epochs_since_internal_change == 0
    model.tick()
    assert slot.report().epochs_since_internal_change == 1


def test_internal_ops_fail_on_dormant_plain_and_fossilized_seeds():
    model = make_model()
    assert "needs a live seed" in model.apply(FactoredAction(op=GROW, slot=1), score_now=0.1).reason
    model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=1, blueprint=0), score_now=0.1)
    assert "no internal ladder" in model.apply(FactoredAction(op=GROW, slot=1), score_now=0.1).reason
    slot = germinate_ladder(model, slot=2)
    slot.tick(); slot.tick()
    assert slot.advance().success
    for _ in range(100):  # a blend lasts a few epochs; fail rather than loop forever
        if slot.stage is SeedStage.HOLDING:
            break
        slot.tick()
    else:
        raise AssertionError("the blend never reached HOLDING")
    assert slot.fossilize().success
    frozen = model.apply(FactoredAction(op=SHRINK, slot=2), score_now=0.1)
    assert not frozen.success and slot.ladder.internal_level == 1


def test_masks_allow_internal_ops_only_where_they_can_succeed():
    model = make_model()
    germinate_ladder(model, slot=0)
    model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=1, blueprint=0), score_now=0.1)
    masks = compute_masks([model.reports()], num_seed_families=2, max_seeds=3)
    assert masks.slot[0, GROW].tolist() == [True, False, False]
    assert masks.slot[0, SHRINK].tolist() == [True, False, False]
    for _ in range(2):
        model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1)
    masks = compute_masks([model.reports()], num_seed_families=2, max_seeds=3)
    assert not masks.op[0, GROW] and masks.op[0, SHRINK]


def test_rent_follows_the_capacity_in_use():
    model = make_model()
    slot = germinate_ladder(model)
    slot._set_alpha(1.0)
    slot.stage = SeedStage.HOLDING  # direct state for the arithmetic only
    at_one = slot.effective_params
    model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1)
    assert slot.effective_params == pytest.approx(2 * at_one)
    assert slot.effective_params < slot.built_params


def test_level_survives_a_lifecycle_round_trip():
    model = make_model(seed=3)
    germinate_ladder(model)
    model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1)
    state, weights = model.lifecycle_record(), model.state_dict()
    clone = make_model(seed=4)
    clone.load_lifecycle_record(state)
    clone.load_state_dict(weights)
    assert clone.reports() == model.reports()
    x = torch.randn(2, 1, 6, 6)
    model.eval(); clone.eval()
    assert torch.equal(model(x), clone(x))


def test_internal_ops_through_the_engine(toy_manager, toy_config):
    script = {
        "1": {"op": 1, "slot": 0, "blueprint": 1, "alpha_target": 2},
        "2": {"op": 6, "slot": 0},
        "3": {"op": 6, "slot": 0},
        "4": {"op": 7, "slot": 0},
        "5": {"op": 6, "slot": 2},  # no seed there: masked, executed as WAIT
    }
    run_dir = start_run(toy_config(policy={"name": "scripted", "script": script}, reward={"name": "shaped"}), toy_manager)
    records = read_events(run_dir / "events.jsonl")
    changes = [r["data"] for r in records if r["event"] == "SEED_INTERNAL_LEVEL_CHANGED" and r["data"]["env_id"] == 0]
    assert [(c["from_level"], c["to_level"]) for c in changes] == [(1, 2), (2, 3), (3, 2)]
    actions = [r["data"] for r in records if r["event"] == "ACTION_TAKEN" and r["data"]["env_id"] == 0]
    assert actions[5]["action"] == {"op": "GROW_INTERNAL", "slot": "r0c2"} and not actions[5]["success"]
    churn = [r["data"]["components"]["churn"] for r in records
             if r["event"] == "REWARD_COMPUTED" and r["data"]["env_id"] == 0 and r["data"]["epoch"] == 5]
    assert churn == [pytest.approx(-0.05)]  # the shrink after epoch 4 undid the grow after epoch 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["internal"]["grow"] == 4 and summary["internal"]["shrink"] == 2


def test_growing_drops_the_seeds_stale_momentum(toy_manager, toy_config):
    """After GROW_INTERNAL the seed's optimizer starts afresh: momentum gathered before the growth (or
    before an earlier shrink) would push the newly enabled, re-zeroed capacity off zero at the next step."""
    script = {"0": {"op": 1, "slot": 0, "blueprint": 1, "alpha_target": 2}, "2": {"op": 6, "slot": 0}}
    states = {}
    for abort_epoch in (1, 2):
        config = toy_config(policy={"name": "scripted", "script": script}, run={"checkpoint_every": 1},
                            faults={"abort": {"round": 0, "epoch": abort_epoch}})
        created = []
        with pytest.raises(RunAborted):
            start_run(config, toy_manager, on_run_dir=created.append)
        env_state = load_checkpoint(created[0] / CHECKPOINT_DIR / LATEST_CHECKPOINT)["env_states"][0]
        (seed_optimizer,) = env_state["seed_optimizers"].values()
        states[abort_epoch] = seed_optimizer["state"]
    assert states[1], "the seed trained for an epoch before the growth: it has momentum"
    assert states[2] == {}, "the growth after epoch 2 dropped it"


def test_events_and_reports_count_parameters_in_use_the_same_way():
    """SEED_GERMINATED, SEED_INTERNAL_LEVEL_CHANGED, SEED_FOSSILIZED and the report agree: the ladder's
    parameters at its level plus a GATE blend's gate; a seed without a ladder uses all its parameters."""
    events = []
    model = make_model(events=events)
    gated = FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=LADDER, style=BlendStyle.GATE,
                           alpha_target=AlphaTarget.FULL)
    assert model.apply(gated, score_now=0.1).success
    slot = model.slots[model.slot_ids[0]]
    assert model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1).success
    gate_params = sum(p.numel() for p in slot.gate.parameters())
    assert gate_params > 0
    in_use = slot.report().internal_effective_params
    assert in_use == slot.ladder.internal_effective_params(2) + gate_params
    changed = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED]
    assert changed[-1].internal_effective_params == in_use
    plain = FactoredAction(op=LifecycleOp.GERMINATE, slot=1, blueprint=0)
    assert model.apply(plain, score_now=0.1).success
    germinated = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_GERMINATED]
    plain_slot = model.slots[model.slot_ids[1]]
    assert germinated[-1].internal_effective_params == plain_slot.seed_params == plain_slot.report().internal_effective_params


def test_every_size_counts_the_capacity_in_use_not_what_is_built():
    """The size rule: a ladder fossilized at level 1 is its level-1 parameters everywhere a size is shown
    (issue 10: a conv_ladder at level 1 reported every stage it had built)."""
    events = []
    model = make_model(events=events)
    slot = germinate_ladder(model)
    level_one = slot.ladder.internal_effective_params(1)
    assert slot.built_params > level_one  # the ladder built levels 2 and 3 up front
    assert model.seed_params() == level_one
    slot._set_alpha(1.0)
    slot.stage = SeedStage.HOLDING  # direct state for the arithmetic only
    assert model.apply(FactoredAction(op=LifecycleOp.FOSSILIZE, slot=0), score_now=0.1).success
    assert model.fossilized_params() == level_one
    assert model.seed_params() == 0
    report = slot.report()
    assert (report.seed_params, report.internal_effective_params, report.built_params) == (
        level_one, level_one, slot.built_params)
    fossilized = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_FOSSILIZED]
    germinated = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_GERMINATED]
    assert fossilized[-1].seed_params == level_one
    assert (germinated[-1].seed_params, germinated[-1].built_params) == (level_one, slot.built_params)


def test_a_grouped_ladder_reports_its_group_size_and_active_groups(monkeypatch):
    """A ladder with the optional ``internal_group_size`` member: the report and the germinate, level-change
    and fossilize events carry the group size and active groups (== level); a ladder without it and a seed
    without a ladder carry None (not meaningful), never 0."""
    monkeypatch.setattr(toy_plugin.ToyLadder, "internal_group_size", 3, raising=False)
    events = []
    model = make_model(events=events)
    slot = germinate_ladder(model)
    report = slot.report()
    assert (report.internal_group_size, report.internal_active_groups, report.internal_level) == (3, 1, 1)
    assert model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1).success
    assert (slot.report().internal_group_size, slot.report().internal_active_groups) == (3, 2)
    assert model.apply(FactoredAction(op=SHRINK, slot=0), score_now=0.1).success
    assert slot.report().internal_active_groups == 1
    changes = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED]
    assert [(c.to_level, c.internal_group_size, c.internal_active_groups) for c in changes] == [(2, 3, 2), (1, 3, 1)]
    (germinated,) = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_GERMINATED]
    assert (germinated.internal_group_size, germinated.internal_active_groups) == (3, 1)
    slot._set_alpha(1.0)
    slot.stage = SeedStage.HOLDING  # direct state: fossilize without running a blend
    assert model.apply(FactoredAction(op=LifecycleOp.FOSSILIZE, slot=0), score_now=0.1).success
    (fossilized,) = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_FOSSILIZED]
    assert (fossilized.internal_group_size, fossilized.internal_active_groups) == (3, 1)
    frozen = model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1)
    assert not frozen.success and slot.report().internal_active_groups == 1
    model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=1, blueprint=0), score_now=0.1)
    plain = model.slots[model.slot_ids[1]].report()
    empty = model.slots[model.slot_ids[2]].report()
    assert (plain.internal_group_size, plain.internal_active_groups) == (None, None)
    assert (empty.internal_group_size, empty.internal_active_groups) == (None, None)


def test_a_ladder_without_groups_reports_none_for_the_group_fields():
    events = []
    model = make_model(events=events)
    slot = germinate_ladder(model)
    assert model.apply(FactoredAction(op=GROW, slot=0), score_now=0.1).success
    report = slot.report()
    assert report.internal_level == 2 and (report.internal_group_size, report.internal_active_groups) == (None, None)
    grouped = [e.payload for e in events if e.event_type in (TelemetryEventType.SEED_GERMINATED,
                                                             TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED)]
    assert len(grouped) == 2
    assert all((p.internal_group_size, p.internal_active_groups) == (None, None) for p in grouped)


def test_event_records_written_before_the_group_fields_still_load():
    """An events.jsonl line from 0.2.0 has no internal_group_size / internal_active_groups: it reads as None."""
    common = {"env_id": 0, "round": 0, "epoch": 3, "slot_id": "r0c0", "seed_id": "s1", "blueprint_id": "conv_ladder"}
    old = [
        ("SEED_INTERNAL_LEVEL_CHANGED", {**common, "from_level": 1, "to_level": 2, "internal_effective_params": 10}),
        ("SEED_GERMINATED", {**common, "style": "ADD", "alpha_target": 1.0, "seed_params": 5, "built_params": 9,
                             "internal_level": 1, "internal_effective_params": 5}),
        ("SEED_FOSSILIZED", {**common, "seed_params": 5, "alpha": 1.0, "contribution": 0.1, "seed_age_epochs": 7,
                             "internal_level": 1, "internal_effective_params": 5}),
    ]
    for name, data in old:
        payload = event_from_dict({"event": name, "time": 1.0, "data": data}).payload
        assert (payload.internal_group_size, payload.internal_active_groups) == (None, None)
    data = {**old[0][1], "internal_group_size": 16, "internal_active_groups": 2}
    payload = event_from_dict({"event": old[0][0], "time": 1.0, "data": data}).payload
    assert (payload.internal_group_size, payload.internal_active_groups) == (16, 2)
