"""Subtarget inventories (roadmap Phase 3): the registry records, the ops and head, reports, events and masks."""

from __future__ import annotations

import pytest

import esper_core.kasmina
import esper_core.leyline
from esper_core.leyline import (
    CAUSAL_RELEVANCE,
    EVENT_PAYLOADS,
    HEADS,
    MAX_SUBTARGETS,
    FactoredAction,
    LifecycleOp,
    SeedStage,
    TelemetryEventType,
    is_relevant,
)
from esper_core.leyline.telemetry import SeedSubtargetChangedPayload, event_from_dict, event_to_dict
from esper_core.leyline import TelemetryEvent
from esper_core.plugins import PluginManager
from esper_core.registry import ItemWithdrawn, Registry, SeedFamily, SubtargetKind, SubtargetSpec
from esper_core.tamiyo import compute_masks, slot_valid_for
from esper_core.testing.builders import policy_context, slot_report
from esper_core.tolaria.engine import run_subtarget_count
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
