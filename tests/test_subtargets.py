"""Subtarget inventories (roadmap Phase 3): the registry records, the ops and head, reports, events and masks."""

from __future__ import annotations

import json

import attrs
import pytest
import torch

import esper_core.kasmina
import esper_core.leyline
from esper_core.kasmina import LifecycleSettings, MorphogeneticModel, SlotLifecycleState
from esper_core.leyline import (
    CAUSAL_RELEVANCE,
    EVENT_PAYLOADS,
    HEADS,
    MAX_SUBTARGETS,
    AlphaCurve,
    AlphaTarget,
    FactoredAction,
    LifecycleOp,
    SeedStage,
    SlotConfig,
    TelemetryEventType,
    is_relevant,
)
from esper_core.leyline.telemetry import SeedSubtargetChangedPayload, event_from_dict, event_to_dict
from esper_core.leyline import TelemetryEvent
from esper_core.plugins import PluginManager
from esper_core.registry import ItemWithdrawn, Registry, SeedFamily, SubtargetKind, SubtargetSpec
from esper_core.tamiyo import compute_masks, slot_valid_for
from esper_core.testing import toy_inventory
from esper_core.testing.builders import policy_context, slot_report
from esper_core.telemetry.report import describe_internal_ops
from esper_core.tolaria.engine import run_subtarget_count
from tests import toy_plugin
from tests.toy_plugin import build_toy_seed

SUBTARGET_OPS = (LifecycleOp.ENABLE_SUBTARGET, LifecycleOp.DISABLE_SUBTARGET)


# -- registry ---------------------------------------------------------------------------------------


def test_the_core_registers_the_roadmap_subtarget_kinds_with_stable_codes():
    registry = PluginManager(autoload=False).registry
    codes = {name: registry.subtarget_kind(name).code for name in registry.names("subtarget_kinds")}
    assert codes == {"lora_rank_block": 1, "cnn_channel_group": 2, "attn_head_group": 3}


@pytest.mark.parametrize("code", [0, 16, -1, True])
def test_a_subtarget_kind_code_outside_1_to_15_is_refused(code):
    with pytest.raises(ValueError, match="code must be an integer from 1 to 15"):
        SubtargetKind(name="groups", code=code)


def test_the_name_none_is_reserved_for_no_inventory():
    with pytest.raises(ValueError, match="'none' is reserved"):
        SubtargetKind(name="none", code=5)
    with pytest.raises(ValueError, match="'none' means no inventory"):
        SubtargetSpec(kind="none", max_count=4)


@pytest.mark.parametrize("count", [0, MAX_SUBTARGETS + 1, 2.0, True])
def test_a_subtarget_spec_needs_a_count_from_1_to_max_subtargets(count):
    with pytest.raises(ValueError, match="max_count must be an integer from 1 to 16"):
        SubtargetSpec(kind="cnn_channel_group", max_count=count)


def test_a_seed_family_declares_its_inventory_with_a_subtarget_spec():
    spec = SubtargetSpec(kind="cnn_channel_group", max_count=4)
    family = SeedFamily(name="groups", build=build_toy_seed, topologies=("image",), subtargets=spec)
    assert family.subtargets == spec
    assert SeedFamily(name="plain", build=build_toy_seed, topologies=("image",)).subtargets is None
    with pytest.raises(TypeError, match="subtargets must be an esper_core.registry.SubtargetSpec"):
        SeedFamily(name="bad", build=build_toy_seed, topologies=("image",), subtargets=("cnn_channel_group", 4))


def test_subtarget_kinds_share_one_vocabulary_and_unique_codes():
    registry = Registry()
    registry.add("subtarget_kinds", SubtargetKind(name="blocks", code=4), "one")
    with pytest.raises(ItemWithdrawn, match="subtarget kind 'blocks' of 'two' is withdrawn: 'one' registered"):
        registry.add("subtarget_kinds", SubtargetKind(name="blocks", code=5), "two")
    with pytest.raises(ItemWithdrawn, match="subtarget kind code 4 is claimed by both 'blocks' .one. and 'rows' .two."):
        registry.add("subtarget_kinds", SubtargetKind(name="rows", code=4), "two")
    assert registry.names("subtarget_kinds") == ["blocks"]
    with pytest.raises(KeyError, match="unknown subtarget kind 'block' .did you mean 'blocks'"):
        registry.subtarget_kind("block")


def test_run_subtarget_count_is_the_largest_inventory_and_at_least_one():
    plain = SeedFamily(name="plain", build=build_toy_seed, topologies=("image",))
    small = SeedFamily(name="small", build=build_toy_seed, topologies=("image",),
                       subtargets=SubtargetSpec(kind="cnn_channel_group", max_count=3))
    large = SeedFamily(name="large", build=build_toy_seed, topologies=("image",),
                       subtargets=SubtargetSpec(kind="lora_rank_block", max_count=8))
    assert run_subtarget_count([plain]) == 1
    assert run_subtarget_count([]) == 1
    assert run_subtarget_count([plain, small, large]) == 8
    assert run_subtarget_count([small]) == 3


# -- leyline ----------------------------------------------------------------------------------------


def test_the_subtarget_ops_have_stable_values_and_use_only_the_subtarget_head():
    assert int(LifecycleOp.ENABLE_SUBTARGET) == 8 and int(LifecycleOp.DISABLE_SUBTARGET) == 9
    assert HEADS[-1] == "subtarget"
    for op in SUBTARGET_OPS:
        assert CAUSAL_RELEVANCE[op] == {"op", "slot", "subtarget"}
    for op in LifecycleOp:
        if op not in SUBTARGET_OPS:
            assert not is_relevant(op, "subtarget"), op


def test_max_subtargets_is_exported_where_plugins_read_it():
    assert esper_core.leyline.MAX_SUBTARGETS == esper_core.kasmina.MAX_SUBTARGETS == 16
    assert "MAX_SUBTARGETS" in esper_core.leyline.__all__ and "MAX_SUBTARGETS" in esper_core.kasmina.__all__
    assert "SubtargetInventory" in esper_core.kasmina.__all__


def test_a_factored_action_carries_its_subtarget_and_describes_it_only_when_relevant():
    action = FactoredAction(op=LifecycleOp.DISABLE_SUBTARGET, slot=1, subtarget=3)
    assert action.head_values()["subtarget"] == 3
    assert action.describe(("a", "b"), ("f",)) == {"op": "DISABLE_SUBTARGET", "slot": "b", "subtarget": 3}
    assert "subtarget" not in FactoredAction(op=LifecycleOp.FOSSILIZE, slot=1, subtarget=3).describe(("a", "b"), ("f",))
    assert FactoredAction.wait().subtarget == 0


def test_the_subtarget_event_round_trips_through_json():
    payload = SeedSubtargetChangedPayload(
        slot_id="r0c0", env_id=1, seed_id="s", blueprint_id="groups", subtarget_idx=2, enabled=True,
        subtarget_active_count=3, internal_effective_params=120, round=0, epoch=4,
    )
    assert EVENT_PAYLOADS[TelemetryEventType.SEED_SUBTARGET_CHANGED] is SeedSubtargetChangedPayload
    event = TelemetryEvent(event_type=TelemetryEventType.SEED_SUBTARGET_CHANGED, payload=payload)
    assert event_from_dict(event_to_dict(event)).payload == payload


def test_a_report_without_an_inventory_says_so():
    report = slot_report(0, SeedStage.TRAINING)
    assert (report.subtarget_kind, report.subtarget_count, report.subtarget_active_count) == (None, 0, 0)
    assert report.subtarget_active_mask == () and report.subtarget_importance == ()
    assert report.epochs_since_subtarget_change is None


# -- masks ------------------------------------------------------------------------------------------


def test_subtarget_masks_allow_only_existing_groups_in_the_right_state():
    reports = [
        slot_report(0, SeedStage.TRAINING, subtarget_mask=[True, False, True]),
        slot_report(1, SeedStage.HOLDING, subtarget_mask=[True, True]),
        slot_report(2, SeedStage.BLENDING, subtarget_mask=[False]),
    ]
    masks = compute_masks([reports], num_seed_families=3, max_seeds=3, subtarget_count=4)
    assert masks.subtarget.shape == (1, 2, 3, 4)
    assert masks.subtarget[0, 0].tolist() == [
        [False, True, False, False],
        [False, False, False, False],
        [True, False, False, False],
    ]
    assert masks.subtarget[0, 1].tolist() == [
        [True, False, True, False],
        [True, True, False, False],
        [False, False, False, False],
    ]
    assert masks.slot[0, LifecycleOp.ENABLE_SUBTARGET].tolist() == [True, False, True]
    assert masks.slot[0, LifecycleOp.DISABLE_SUBTARGET].tolist() == [True, True, False]
    assert masks.allows(0, FactoredAction(op=LifecycleOp.ENABLE_SUBTARGET, slot=0, subtarget=1))
    assert not masks.allows(0, FactoredAction(op=LifecycleOp.ENABLE_SUBTARGET, slot=0, subtarget=0))
    assert not masks.allows(0, FactoredAction(op=LifecycleOp.DISABLE_SUBTARGET, slot=1, subtarget=2))
    assert not masks.allows(0, FactoredAction(op=LifecycleOp.DISABLE_SUBTARGET, slot=1, subtarget=7))


@pytest.mark.parametrize(
    "report",
    [
        slot_report(0, SeedStage.FOSSILIZED, subtarget_mask=[True, False]),
        slot_report(0, SeedStage.GERMINATED, subtarget_mask=[True, False]),
        slot_report(0, SeedStage.BLENDING, blend_out=True, subtarget_mask=[True, False]),
        slot_report(0, SeedStage.TRAINING),
        slot_report(0, SeedStage.DORMANT),
        slot_report(0, SeedStage.PRUNED, subtarget_mask=[True, False]),
    ],
    ids=["fossil", "germinated", "blend_out", "no_inventory", "dormant", "pruned"],
)
def test_no_subtarget_op_where_the_seed_cannot_switch_groups(report):
    for op in SUBTARGET_OPS:
        assert slot_valid_for(op, report, seeds_available=True) is False
    masks = compute_masks([[report]], num_seed_families=3, max_seeds=3, subtarget_count=2)
    assert not masks.subtarget.any()
    assert not masks.op[0, LifecycleOp.ENABLE_SUBTARGET] and not masks.op[0, LifecycleOp.DISABLE_SUBTARGET]


def test_subtarget_ops_off_forbids_both_ops_everywhere_and_leaves_the_rest():
    reports = [slot_report(0, SeedStage.HOLDING, subtarget_mask=[True, False, True])]
    allowed = compute_masks([reports], num_seed_families=3, max_seeds=3, subtarget_count=4)
    off = compute_masks([reports], num_seed_families=3, max_seeds=3, subtarget_count=4, subtarget_ops=False)
    assert allowed.op[0, LifecycleOp.ENABLE_SUBTARGET] and allowed.op[0, LifecycleOp.DISABLE_SUBTARGET]
    assert not off.op[0, LifecycleOp.ENABLE_SUBTARGET] and not off.op[0, LifecycleOp.DISABLE_SUBTARGET]
    assert not off.subtarget.any() and not off.slot[0, list(SUBTARGET_OPS)].any()
    others = [op for op in LifecycleOp if op not in SUBTARGET_OPS]
    assert torch.equal(off.op[0, others], allowed.op[0, others])


def test_a_run_without_inventories_has_a_size_one_head_that_no_op_uses():
    masks = compute_masks([[slot_report(0, SeedStage.TRAINING)]], num_seed_families=3, max_seeds=3)
    assert masks.subtarget.shape == (1, 2, 1, 1) and not masks.subtarget.any()
    with pytest.raises(ValueError, match="subtarget_count must be an integer from 1 to 16"):
        compute_masks([[slot_report(0)]], num_seed_families=3, max_seeds=3, subtarget_count=0)


def test_masks_built_without_subtarget_masks_forbid_every_group():
    masks = compute_masks([[slot_report(0, SeedStage.TRAINING, subtarget_mask=[False])]], num_seed_families=3,
                          max_seeds=3)
    bare = type(masks)(op=masks.op, slot=masks.slot, blueprint=masks.blueprint)
    assert bare.subtarget.shape == (1, 2, 1, 1) and not bare.subtarget.any()
    assert not bare.allows(0, FactoredAction(op=LifecycleOp.ENABLE_SUBTARGET, slot=0, subtarget=0))


def test_the_policy_context_carries_the_subtarget_head_size():
    assert policy_context().subtarget_count == 1
    assert policy_context(subtarget_count=6).subtarget_count == 6


# -- kasmina ----------------------------------------------------------------------------------------

GROUPS, GROUP_LADDER = 1, 2  # blueprint indices in inventory_model
ENABLE, DISABLE = SUBTARGET_OPS


def build_inventory_seed(family: str, channels: int) -> torch.nn.Module:
    if family == "toy_groups":
        return toy_inventory.build_toy_groups(channels, "image", toy_inventory.ToyGroupsConfig())
    if family == "toy_group_ladder":
        return toy_inventory.build_toy_group_ladder(channels, "image", None)
    return toy_plugin.build_toy_seed(channels, "image", toy_plugin.ToySeedConfig())


def inventory_model(seed: int = 0, events: list | None = None) -> MorphogeneticModel:
    torch.manual_seed(seed)
    host = toy_plugin.ToyHost(toy_plugin.ToyHostConfig(blocks=3), toy_plugin.TOY_TASK_INFO)
    slot_config = SlotConfig.from_specs(host.injection_specs())
    return MorphogeneticModel(
        host, slot_config, topology="image", seed_families=("toy_conv", "toy_groups", "toy_group_ladder"),
        build_seed=build_inventory_seed, settings=LifecycleSettings(embargo_epochs=2, min_training_epochs=1),
        max_seeds=3, emit=None if events is None else events.append,
    )


def germinate(model: MorphogeneticModel, slot: int = 0, family: int = GROUPS):
    action = FactoredAction(op=LifecycleOp.GERMINATE, slot=slot, blueprint=family, alpha_target=AlphaTarget.FULL)
    assert model.apply(action, score_now=0.1).success
    model.tick()  # GERMINATED -> TRAINING
    return model.slots[model.slot_ids[slot]]


def switch(model: MorphogeneticModel, op: LifecycleOp, index: int, slot: int = 0):
    return model.apply(FactoredAction(op=op, slot=slot, subtarget=index), score_now=0.1)


def to_holding(slot) -> None:
    assert slot.advance().success
    for _ in range(100):
        if slot.stage is SeedStage.HOLDING:
            return
        slot.tick()
    raise AssertionError("the blend never reached HOLDING")


def test_a_seed_with_an_inventory_reports_its_groups():
    model = inventory_model()
    slot = germinate(model)
    report = slot.report()
    assert (report.subtarget_kind, report.subtarget_count, report.subtarget_active_count) == ("cnn_channel_group", 4, 2)
    assert report.subtarget_active_mask == (True, True, False, False)
    assert report.subtarget_importance == (0.0, 0.0, 0.0, 0.0)
    assert report.epochs_since_subtarget_change is None
    per_group = slot.seed.subtarget_effective_params((True, False, False, False))
    assert report.seed_params == report.internal_effective_params == 2 * per_group < report.built_params


def test_enable_and_disable_switch_one_group_and_emit_one_event_each():
    events: list = []
    model = inventory_model(events=events)
    slot = germinate(model)
    per_group = slot.seed.subtarget_effective_params((True, False, False, False))
    assert switch(model, ENABLE, 3).success
    assert switch(model, DISABLE, 0).success
    changes = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_SUBTARGET_CHANGED]
    assert [(c.subtarget_idx, c.enabled, c.subtarget_active_count) for c in changes] == [(3, True, 3), (0, False, 2)]
    assert [c.internal_effective_params for c in changes] == [3 * per_group, 2 * per_group]
    assert changes[0].slot_id == "r0c0" and changes[0].blueprint_id == "toy_groups"
    report = slot.report()
    assert report.subtarget_active_mask == (False, True, False, True)
    assert report.seed_params == 2 * per_group
    assert report.epochs_since_subtarget_change == 0
    model.tick()
    assert slot.report().epochs_since_subtarget_change == 1
    assert not any(e.event_type is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED for e in events)


@pytest.mark.parametrize(
    ("op", "index", "reason"),
    [
        (ENABLE, 0, "subtarget 0 is already enabled"),
        (DISABLE, 2, "subtarget 2 is already disabled"),
        (ENABLE, 4, "subtarget 4 is outside the inventory 0..3"),
        (DISABLE, -1, "subtarget -1 is outside the inventory 0..3"),
    ],
)
def test_an_infeasible_switch_fails_changes_nothing_and_emits_nothing(op, index, reason):
    events: list = []
    model = inventory_model(events=events)
    slot = germinate(model)
    before = (slot.report(), {k: v.clone() for k, v in slot.seed.state_dict().items()})
    result = switch(model, op, index)
    assert not result.success and reason in result.reason
    assert slot.report() == before[0]
    assert all(torch.equal(v, before[1][k]) for k, v in slot.seed.state_dict().items())
    assert not any(e.event_type is TelemetryEventType.SEED_SUBTARGET_CHANGED for e in events)


def test_switches_fail_without_a_live_inventory_seed_and_on_a_fossil():
    model = inventory_model()
    assert "needs a TRAINING, BLENDING or HOLDING seed" in switch(model, ENABLE, 0, slot=1).reason
    model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=1, blueprint=0), score_now=0.1)
    model.tick()
    assert "has no subtarget inventory" in switch(model, ENABLE, 0, slot=1).reason
    slot = germinate(model, slot=2)
    to_holding(slot)
    assert slot.fossilize().success
    frozen = switch(model, DISABLE, 0, slot=2)
    assert not frozen.success and "mask is frozen" in frozen.reason
    assert slot.report().subtarget_active_mask == (True, True, False, False)


def test_a_seed_blending_out_keeps_its_mask():
    model = inventory_model()
    slot = germinate(model)
    assert slot.advance().success
    assert slot.prune(epochs=4, curve=AlphaCurve.LINEAR, reason="policy").success
    assert "blending out" in switch(model, DISABLE, 0).reason
    assert slot.report().subtarget_active_mask == (True, True, False, False)


def test_masks_follow_the_seeds_mask_through_the_ops():
    model = inventory_model()
    germinate(model)
    masks = compute_masks([model.reports()], num_seed_families=3, max_seeds=3, subtarget_count=5)
    assert masks.subtarget[0, 0, 0].tolist() == [False, False, True, True, False]
    assert masks.subtarget[0, 1, 0].tolist() == [True, True, False, False, False]
    assert switch(model, DISABLE, 0).success
    masks = compute_masks([model.reports()], num_seed_families=3, max_seeds=3, subtarget_count=5)
    assert not masks.slot[0, DISABLE, 0] and masks.slot[0, ENABLE, 0]  # the last enabled group stays
    assert masks.subtarget[0, 0, 0].tolist() == [True, False, True, True, False]
    last = switch(model, DISABLE, 1)  # forced past the mask: refused, nothing changes
    assert not last.success and "last enabled group" in last.reason
    assert model.slots["r0c0"].report().subtarget_active_mask == (False, True, False, False)
    assert model.slots["r0c0"].report().seed_params > 0


def test_a_disabled_group_leaves_the_output_and_an_enabled_one_enters_at_zero():
    model = inventory_model()
    slot = germinate(model)
    with torch.no_grad():
        for parameter in slot.seed.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    x = torch.randn(2, 6, 6, 6)
    seed = slot.seed.eval()
    before = seed(x)
    switch(model, ENABLE, 2)
    assert torch.equal(seed(x), before), "a group enters at zero"
    switch(model, DISABLE, 0)
    assert not torch.allclose(seed(x), before)


def test_grow_and_shrink_of_a_ladder_inventory_move_the_mask_and_emit_the_level_event():
    events: list = []
    model = inventory_model(events=events)
    slot = germinate(model, family=GROUP_LADDER)
    assert switch(model, DISABLE, 0).success  # mask F T F F, level 1
    assert slot.report().internal_level == 1
    assert model.apply(FactoredAction(op=LifecycleOp.GROW_INTERNAL, slot=0), score_now=0.1).success
    assert slot.report().subtarget_active_mask == (True, True, False, False), "GROW enables the lowest disabled"
    assert model.apply(FactoredAction(op=LifecycleOp.SHRINK_INTERNAL, slot=0), score_now=0.1).success
    assert slot.report().subtarget_active_mask == (True, False, False, False), "SHRINK disables the highest enabled"
    kinds = [e.event_type for e in events if e.event_type in (
        TelemetryEventType.SEED_SUBTARGET_CHANGED, TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED)]
    assert kinds == [TelemetryEventType.SEED_SUBTARGET_CHANGED, TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED,
                     TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED]
    report = slot.report()
    assert report.internal_level == report.subtarget_active_count == 1
    assert report.epochs_since_subtarget_change == 0


def test_the_mask_survives_a_lifecycle_round_trip_exactly():
    model = inventory_model(seed=3)
    slot = germinate(model)
    switch(model, ENABLE, 3)
    switch(model, DISABLE, 0)
    with torch.no_grad():
        for parameter in slot.seed.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    model.train()
    model(torch.randn(4, 1, 6, 6))  # a training forward: importance moves off zero
    state, weights = model.lifecycle_record(), model.state_dict()
    assert state.slots["r0c0"].subtarget_mask == (False, True, False, True)
    assert weights["slots.r0c0.seed.mask"].tolist() == [False, True, False, True]
    clone = inventory_model(seed=4)
    clone.load_lifecycle_record(state)
    clone.load_state_dict(weights)
    assert clone.reports() == model.reports()
    assert clone.slots["r0c0"].seed.mask.dtype == torch.bool
    x = torch.randn(2, 1, 6, 6)
    model.eval(); clone.eval()
    assert torch.equal(model(x), clone(x))


def test_the_checkpoint_converter_round_trips_the_mask():
    from esper_core.tolaria.state import state_converter  # the project's checkpoint converter

    converter = state_converter()
    model = inventory_model()
    germinate(model)
    switch(model, DISABLE, 1)
    record = model.slots["r0c0"].lifecycle_record()
    assert converter.structure(converter.unstructure(record), SlotLifecycleState) == record
    assert record.subtarget_mask == (True, False, False, False)


# -- through the engine -----------------------------------------------------------------------------

SUBTARGET_SCRIPT = {
    "1": {"op": 1, "slot": 0, "blueprint": 1, "alpha_target": 2},  # GERMINATE toy_groups (groups 0, 1 on)
    "2": {"op": 9, "slot": 0, "subtarget": 0},  # DISABLE group 0
    "3": {"op": 8, "slot": 0, "subtarget": 3},  # ENABLE group 3
    "4": {"op": 8, "slot": 0, "subtarget": 3},  # already enabled: masked, executed as WAIT
    "5": {"op": 8, "slot": 2, "subtarget": 0},  # no seed there: masked
}


@pytest.fixture
def inventory_manager():
    from esper_core.testing import toy_plugin_manager

    return toy_plugin_manager(toy_inventory)


def inventory_config(manager, tmp_path, **sections):
    from esper_core.config import parse_config
    from esper_core.testing import toy_run_data

    base = {"morphogenesis": {"seed_families": ["toy_conv", "toy_groups"], "min_training_epochs": 1,
                              "embargo_epochs": 1},
            "policy": {"name": "scripted", "script": SUBTARGET_SCRIPT}}
    return parse_config(toy_run_data(tmp_path / "runs", **{**base, **sections}), manager)


def test_subtarget_ops_run_through_the_engine(inventory_manager, tmp_path):
    from esper_core.testing import events_of
    from esper_core.testing import toy_plugin as kit_toy
    from esper_core.tolaria.engine import start_run

    kit_toy.INSTANCES.clear()
    run_dir = start_run(inventory_config(inventory_manager, tmp_path), inventory_manager)
    assert kit_toy.INSTANCES[0].context.subtarget_count == 4
    records = events_of(run_dir)
    changes = [r["data"] for r in records if r["event"] == "SEED_SUBTARGET_CHANGED" and r["data"]["env_id"] == 0]
    assert [(c["subtarget_idx"], c["enabled"], c["subtarget_active_count"]) for c in changes] == [
        (0, False, 1), (3, True, 2)
    ]
    actions = [r["data"] for r in records if r["event"] == "ACTION_TAKEN" and r["data"]["env_id"] == 0]
    assert actions[2]["action"] == {"op": "DISABLE_SUBTARGET", "slot": "r0c0", "subtarget": 0} and actions[2]["success"]
    assert not actions[4]["success"] and actions[4]["reason"] == "masked: executed as WAIT"
    assert not actions[5]["success"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["subtargets"] == {"enable": 2, "disable": 2}  # two environments
    assert describe_internal_ops(summary) == "internal ops: grow 0, shrink 0; subtarget ops: enable 2, disable 2"
    epochs = [r["data"] for r in records if r["event"] == "EPOCH_COMPLETED" and r["data"]["env_id"] == 0]
    per_group = toy_inventory.ToyGroups(6)._group_params()
    assert [e["seed_params"] for e in epochs[1:5]] == [2 * per_group, 1 * per_group, 2 * per_group, 2 * per_group]


def test_morphogenesis_subtarget_ops_false_turns_the_ops_off_for_any_policy(inventory_manager, tmp_path):
    from esper_core.testing import events_of
    from esper_core.tolaria.engine import start_run

    config = inventory_config(inventory_manager, tmp_path, morphogenesis={
        "seed_families": ["toy_conv", "toy_groups"], "min_training_epochs": 1, "embargo_epochs": 1,
        "subtarget_ops": False})
    records = events_of(start_run(config, inventory_manager))
    assert not [r for r in records if r["event"] == "SEED_SUBTARGET_CHANGED"]
    switches = [r["data"] for r in records if r["event"] == "ACTION_TAKEN"
                and r["data"]["action"]["op"] in ("ENABLE_SUBTARGET", "DISABLE_SUBTARGET")]
    assert switches and not any(a["success"] for a in switches)  # the script asks; the masks refuse


def test_a_run_with_subtarget_ops_resumes_exactly(inventory_manager, tmp_path):
    from esper_core.errors import RunAborted
    from esper_core.testing import comparable, events_of, resume_run
    from esper_core.tolaria.engine import start_run

    reference = start_run(inventory_config(inventory_manager, tmp_path / "a"), inventory_manager)
    created: list = []
    with pytest.raises(RunAborted):
        start_run(inventory_config(inventory_manager, tmp_path / "b", faults={"abort": {"round": 0, "epoch": 4}}),
                  inventory_manager, on_run_dir=created.append)
    resumed = resume_run(created[0], inventory_manager)
    assert comparable(events_of(resumed)) == comparable(events_of(reference))


def test_a_family_whose_module_does_not_match_its_inventory_is_refused():
    from esper_core.errors import PluginError
    from esper_core.tolaria.engine import check_subtargets

    seed = toy_inventory.ToyGroups(6)
    declared = SeedFamily(name="groups", build=toy_inventory.build_toy_groups, topologies=("image",),
                          subtargets=SubtargetSpec(kind="cnn_channel_group", max_count=4))
    check_subtargets(declared, seed)
    undeclared = SeedFamily(name="sneaky", build=toy_inventory.build_toy_groups, topologies=("image",))
    with pytest.raises(PluginError, match="seed family 'sneaky' builds a subtarget inventory but declares no"):
        check_subtargets(undeclared, seed)
    with pytest.raises(PluginError, match="seed family 'groups' declares subtargets but its module is not"):
        check_subtargets(declared, toy_plugin.ToySeed(6, toy_plugin.ToySeedConfig()))
    other_kind = attrs.evolve(declared, subtargets=SubtargetSpec(kind="attn_head_group", max_count=4))
    with pytest.raises(PluginError, match="declares subtarget kind 'attn_head_group' but its module has 'cnn_channel"):
        check_subtargets(other_kind, seed)
    too_few = attrs.evolve(declared, subtargets=SubtargetSpec(kind="cnn_channel_group", max_count=3))
    with pytest.raises(PluginError, match="declares at most 3 subtargets but its module has subtarget_count 4"):
        check_subtargets(too_few, seed)
    seed.mask = torch.ones(4)
    with pytest.raises(PluginError, match=r"subtarget_mask must be a bool tensor of shape \(4,\)"):
        check_subtargets(declared, seed)


def test_a_run_naming_an_unregistered_subtarget_kind_is_a_config_error(tmp_path):
    from esper_core import hookimpl
    from esper_core.config import parse_config
    from esper_core.errors import ConfigError
    from esper_core.testing import toy_plugin_manager, toy_run_data
    from esper_core.tolaria.engine import prepare

    class Stray:
        @hookimpl
        def esper_register_seed_families(self, register):
            register(SeedFamily(name="stray", build=toy_inventory.build_toy_groups, topologies=("image",),
                                subtargets=SubtargetSpec(kind="leaf_groups", max_count=4)))

    manager = toy_plugin_manager(Stray())  # the family is withdrawn when the plugins load
    assert any(f.item == "seed family 'stray'" and "subtarget kind 'leaf_groups' is not registered" in f.error
               for f in manager.failures)
    with pytest.raises(ConfigError, match="unknown seed family 'stray'.*subtarget kind 'leaf_groups' is not registered"):
        parse_config(toy_run_data(tmp_path, morphogenesis={"seed_families": ["stray"]}), manager)
    # a family that slips past the manager (added to the registry directly) is still refused by prepare
    manager.registry.add("seed_families", SeedFamily(
        name="stray", build=toy_inventory.build_toy_groups, topologies=("image",),
        subtargets=SubtargetSpec(kind="leaf_groups", max_count=4)), plugin="stray_plugin")
    config = parse_config(toy_run_data(tmp_path, morphogenesis={"seed_families": ["stray"]}), manager)
    with pytest.raises(ConfigError, match="'stray' declares subtargets of unknown subtarget kind 'leaf_groups'"):
        prepare(config, manager)


# -- the conformance kit ----------------------------------------------------------------------------

from esper_core.testing import ConformanceError, check_seed_family, check_subtarget_family  # noqa: E402


def inventory_family(module_class=toy_inventory.ToyGroups, *, name="groups", spec=toy_inventory.TOY_GROUPS,
                     ladder=None) -> SeedFamily:
    def build(channels, topology, config):
        return module_class(channels, toy_inventory.ToyGroupsConfig())

    return SeedFamily(name=name, build=build, topologies=("image",), subtargets=spec, ladder=ladder)


def test_the_toy_inventories_pass_the_kit():
    check_seed_family(inventory_family(), channels=6)  # runs check_subtarget_family too
    ladder = SeedFamily(name="group_ladder", build=toy_inventory.build_toy_group_ladder, topologies=("image",),
                        ladder=toy_inventory.TOY_GROUP_LADDER, subtargets=toy_inventory.TOY_GROUPS)
    check_seed_family(ladder, channels=6)
    registry = PluginManager(autoload=False).registry
    check_subtarget_family(inventory_family(), channels=8, registry=registry)


class UnregisteredKind(toy_inventory.ToyGroups):
    subtarget_kind = "leaf_groups"


class TooMany(toy_inventory.ToyGroups):
    def __init__(self, channels, config):
        super().__init__(channels, toy_inventory.ToyGroupsConfig(groups=4))
        self.subtarget_count = 5  # claims more than the declared max_count 4


class FloatMask(toy_inventory.ToyGroups):
    def __init__(self, channels, config):
        super().__init__(channels, config)
        self.mask = self.mask.float()


class MaskNotABuffer(toy_inventory.ToyGroups):
    def __init__(self, channels, config):
        super().__init__(channels, config)
        mask = self.mask.clone()
        del self._buffers["mask"]
        self.mask = mask


class ClampedIndex(toy_inventory.ToyGroups):
    def set_subtarget(self, index, enabled):
        super().set_subtarget(min(max(index, 0), self.subtarget_count - 1), enabled)


class SquashedSum(toy_inventory.ToyGroups):
    def forward(self, x):
        return x + torch.tanh(super().forward(x) - x)  # one nonlinearity over the sum: not additive


class NoisyWhenEmpty(toy_inventory.ToyGroups):
    def forward(self, x):
        return super().forward(x) + 0.1 * self.out.weight.sum()  # not the identity with every group off


class NoRezero(toy_inventory.ToyGroups):
    def set_subtarget(self, index, enabled):
        if not 0 <= index < self.subtarget_count:
            raise IndexError(index)
        self.mask[index] = bool(enabled)  # an enabled group enters with its old weights: a jump


class RezeroAlways(toy_inventory.ToyGroups):
    def set_subtarget(self, index, enabled):
        if not 0 <= index < self.subtarget_count:
            raise IndexError(index)
        with torch.no_grad():
            if enabled:  # re-zeroes an already enabled group too
                self.out.weight[:, index * self.group_size : (index + 1) * self.group_size] = 0.0
            self.mask[index] = bool(enabled)


class LeakyGradient(toy_inventory.ToyGroups):
    def forward(self, x):
        off = (~self.mask).repeat_interleave(self.group_size).to(x.dtype)
        leak = (self.inner.bias * off).sum()
        return super().forward(x) + (leak - leak.detach())  # same value, but disabled groups get gradient


class ConstantSize(toy_inventory.ToyGroups):
    def subtarget_effective_params(self, mask):
        return sum(p.numel() for p in self.parameters())


class ReplacedMask(toy_inventory.ToyGroups):
    def set_subtarget(self, index, enabled):
        if not 0 <= index < self.subtarget_count:
            raise IndexError(index)
        mask = self.mask.clone()
        super().set_subtarget(index, enabled)
        mask[index] = bool(enabled)
        self.mask = mask  # a new tensor each time, not a write


class ReallocatingOnEnable(toy_inventory.ToyGroups):
    def set_subtarget(self, index, enabled):
        super().set_subtarget(index, enabled)
        if enabled:
            self.out.weight = torch.nn.Parameter(self.out.weight.detach().clone())


class RandomMask(toy_inventory.ToyGroups):
    def __init__(self, channels, config):
        import random

        super().__init__(channels, config)
        self.mask[random.randrange(self.subtarget_count)] = True
        self.mask[random.randrange(self.subtarget_count)] = False


class NanImportance(toy_inventory.ToyGroups):
    def subtarget_importance(self):
        return torch.full((self.subtarget_count,), float("nan"))


class WrongImportanceShape(toy_inventory.ToyGroups):
    def subtarget_importance(self):
        return torch.zeros(self.subtarget_count + 1)


class ShrinksTheLowest(toy_inventory.ToyGroupLadder):
    def __init__(self, channels, config=None):
        super().__init__(channels)

    def set_internal_level(self, level):
        mask = [bool(v) for v in self.mask.tolist()]
        for _ in range(len(mask)):  # bounded: at most one switch per group
            if sum(mask) <= level:
                break
            index = mask.index(True)  # the lowest enabled: the contract says the highest
            self.set_subtarget(index, False)
            mask[index] = False
        for _ in range(len(mask)):
            if sum(mask) >= level:
                break
            index = mask.index(False)
            self.set_subtarget(index, True)
            mask[index] = True


class LevelIsNotTheCount(toy_inventory.ToyGroupLadder):
    def __init__(self, channels, config=None):
        super().__init__(channels)

    @property
    def internal_level(self):
        return int(self.mask.sum()) + 1

    def internal_effective_params(self, level):
        return self._group_params() * level


BROKEN = [
    (UnregisteredKind, {"spec": SubtargetSpec(kind="leaf_groups", max_count=4)}, "subtarget kind 'leaf_groups' is not registered"),
    (toy_inventory.ToyGroups, {"spec": SubtargetSpec(kind="attn_head_group", max_count=4)},
     "the module's subtarget kind 'cnn_channel_group' differs from the declared 'attn_head_group'"),
    (TooMany, {}, "subtarget_count 5 is not in 1..4"),
    (FloatMask, {}, r"subtarget_mask must be a bool tensor of shape \(4,\), got torch.float32"),
    (MaskNotABuffer, {}, "must be a registered .persistent. buffer"),
    (ClampedIndex, {}, r"set_subtarget\(4, True\) did not raise IndexError"),
    (SquashedSum, {}, "disabling group 0 does not remove exactly its contribution"),
    (NoisyWhenEmpty, {}, "with every group disabled the seed is not the identity"),
    (NoRezero, {}, "enabling group 0 changes the output"),
    (RezeroAlways, {}, "enabling the enabled group 0 changed the seed"),
    (LeakyGradient, {}, "with every group disabled some parameters get gradient"),
    (ConstantSize, {}, "subtarget_effective_params of an all-False mask is"),
    (ReplacedMask, {}, "replaced the mask tensor"),
    (ReallocatingOnEnable, {}, "allocated or freed parameters"),
    (RandomMask, {}, "two builds under the same torch seed have different masks"),
    (NanImportance, {}, r"subtarget_importance\(\) at birth is not finite"),
    (WrongImportanceShape, {}, r"subtarget_importance\(\) at birth must be a float tensor of shape \(4,\)"),
    (ShrinksTheLowest, {"ladder": toy_inventory.TOY_GROUP_LADDER}, "SHRINK must disable the highest enabled group"),
    (LevelIsNotTheCount, {"ladder": toy_inventory.TOY_GROUP_LADDER}, "internal_level 3 differs from the 2 enabled groups"),
]


@pytest.mark.parametrize(("module_class", "options", "message"), BROKEN, ids=[row[0].__name__ + "-" + str(i) for i, row in enumerate(BROKEN)])
def test_the_kit_catches_each_broken_inventory(module_class, options, message):
    with pytest.raises(ConformanceError, match=message):
        check_subtarget_family(inventory_family(module_class, **options), channels=6)


def test_the_kit_refuses_a_family_without_subtargets():
    with pytest.raises(ConformanceError, match="declares no subtargets"):
        check_subtarget_family(SeedFamily(name="plain", build=build_toy_seed, topologies=("image",)), channels=6)
    declared = SeedFamily(name="fake", build=build_toy_seed, topologies=("image",), subtargets=toy_inventory.TOY_GROUPS,
                          config_class=toy_plugin.ToySeedConfig)
    with pytest.raises(ConformanceError, match="declares subtargets but builds no SubtargetInventory"):
        check_subtarget_family(declared, channels=6)
