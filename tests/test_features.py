"""Obs V3 features: layout sizes, explicit sentinels for unmeasured values, seed family ids, generated docs."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from esper_core.errors import PluginError
from esper_core.leyline import (
    MAX_SURFACE_CODE, FactoredAction, InjectionSpec, LifecycleOp, SeedMetrics, SeedStage, SeedStateReport, SlotConfig,
)
from esper_core.registry import MAX_LADDER_CODE
from esper_core.tamiyo import EnvObservation
from esper_core.tamiyo.features import (
    BASE_FEATURES,
    BASE_SIZE,
    SLOT_FEATURES,
    SLOT_SIZE,
    UNMEASURED,
    build_features,
    layout_markdown,
    layout_size,
)

SPECS = (
    InjectionSpec(slot_id="r0c0", channels=4, surface="segment_boundary", order=0, host_block=0),
    InjectionSpec(slot_id="r0c1", channels=4, surface="post_mlp", order=1, host_block=1),
)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "observation.md"


def offset(features, name):
    position = 0
    for feature in features:
        if feature.name == name:
            return position
        position += feature.size
    raise KeyError(name)


def observation(slots, *, history=(0.3, 0.35, 0.4), last_action=None, success=True):
    return EnvObservation(
        env_id=0, round=0, epoch=len(history) - 1, episode_length=10, val_metric=history[-1], val_loss=1.2,
        train_loss=1.0, metric_history=tuple(history), loss_history=tuple(1.5 - 0.1 * i for i in range(len(history))),
        host_params=1000, slots=tuple(slots), slot_config=SlotConfig.from_specs(SPECS, enabled=[r.slot_id for r in slots]), surface_codes={"segment_boundary": 0, "post_mlp": 2},
        seed_families=("a", "b"), max_seeds=2, last_action=last_action,
        last_action_success=success, last_action_reason="", rolled_back=False,
    )


DORMANT = SeedStateReport(env_id=0, slot_id="r0c0", stage=SeedStage.DORMANT)
HOLDING = SeedStateReport(
    env_id=0, slot_id="r0c1", stage=SeedStage.HOLDING, seed_id="s", blueprint_id="b", alpha=1.0, alpha_target=1.0,
    seed_params=100, effective_params=100.0,
    metrics=SeedMetrics(counterfactual_contribution=0.04, contribution_velocity=0.01, epochs_since_measured=0,
                        score_at_germination=0.3, score_delta_since_germination=0.1, seed_grad_norm=0.5,
                        host_grad_norm=2.0, epochs_in_stage=2, seed_age_epochs=7),
)


def test_shapes_follow_the_declared_layout():
    batch = build_features([observation([DORMANT, HOLDING]), observation([HOLDING, DORMANT])])
    assert batch.base.shape == (2, BASE_SIZE) and batch.slots.shape == (2, 2, SLOT_SIZE)
    assert batch.flat().shape == (2, BASE_SIZE + 2 * SLOT_SIZE)
    assert batch.blueprint_ids.tolist() == [[0, 2], [2, 0]]


def test_unmeasured_values_use_the_sentinel_and_a_flag():
    batch = build_features([observation([DORMANT, HOLDING])])
    dormant, holding = batch.slots[0, 0], batch.slots[0, 1]
    for name, flag in (("contribution", "contribution_measured"), ("contribution_velocity", "contribution_velocity_measured"),
                       ("seed_grad_norm", "grad_measured")):
        assert dormant[offset(SLOT_FEATURES, name)] == UNMEASURED
        assert dormant[offset(SLOT_FEATURES, flag)] == 0.0
        assert holding[offset(SLOT_FEATURES, flag)] == 1.0
    assert holding[offset(SLOT_FEATURES, "contribution")] == pytest.approx(0.04)
    base = batch.base[0]
    deltas = base[offset(BASE_FEATURES, "metric_delta"):][:5].tolist()
    flags = base[offset(BASE_FEATURES, "metric_delta_measured"):][:5].tolist()
    assert deltas[:2] == pytest.approx([0.05, 0.1]) and deltas[2:] == [UNMEASURED] * 3
    assert flags == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_stage_one_hot_and_last_action():
    batch = build_features([observation([DORMANT, HOLDING], last_action=FactoredAction(op=LifecycleOp.FOSSILIZE),
                                        success=False)])
    holding = batch.slots[0, 1]
    stage = holding[offset(SLOT_FEATURES, "stage"):][: len(SeedStage)]
    assert stage.tolist() == [1.0 if s is SeedStage.HOLDING else 0.0 for s in SeedStage]
    base = batch.base[0]
    last_op = base[offset(BASE_FEATURES, "last_op"):][: len(LifecycleOp) + 1].tolist()
    assert last_op[int(LifecycleOp.FOSSILIZE)] == 1.0 and sum(last_op) == 1.0
    assert base[offset(BASE_FEATURES, "last_action_success")] == 0.0
    fresh = build_features([observation([DORMANT, DORMANT])]).base[0]
    assert fresh[offset(BASE_FEATURES, "last_op") + len(LifecycleOp)] == 1.0  # "no action yet"


def test_the_documented_layout_is_generated_from_the_code():
    assert DOCS.read_text() == layout_markdown() + "\n", "regenerate: python -m esper_core.tamiyo.features > docs/observation.md"


def test_static_slot_fields_place_the_slot_and_its_surface():
    batch = build_features([observation([DORMANT, HOLDING])])
    order, surface = offset(SLOT_FEATURES, "slot_order_norm"), offset(SLOT_FEATURES, "slot_surface_norm")
    assert batch.slots[0, :, order].tolist() == [0.0, 1.0]
    assert batch.slots[0, :, surface].tolist() == pytest.approx([0.0, 2 / MAX_SURFACE_CODE])


def test_static_slot_fields_do_not_depend_on_the_enabled_slots_or_installed_surfaces():
    """A slot observes the same order and surface values whichever other slots a run enables."""
    three = SPECS + (InjectionSpec(slot_id="r1c1", channels=4, surface="post_attn", order=2, host_block=1),)
    alone = SlotConfig.from_specs(three, enabled=["r0c1"])
    assert alone.order_norm("r0c1") == 0.5  # order 1 in the host's span 0..2, not "the only slot"
    report = attrs.evolve(HOLDING, slot_id="r0c1")
    codes = {"segment_boundary": 0, "post_attn": 1, "post_mlp": 2}
    one = attrs.evolve(observation([report]), slot_config=alone, surface_codes=codes)
    more = attrs.evolve(one, surface_codes={**codes, "pre_pool": 3, "post_pool": 4})  # more plugins installed
    order, surface = offset(SLOT_FEATURES, "slot_order_norm"), offset(SLOT_FEATURES, "slot_surface_norm")
    for obs in (one, more):
        slot = build_features([obs]).slots[0, 0]
        assert slot[order].item() == 0.5
        assert slot[surface].item() == pytest.approx(2 / 7)


def test_the_ladder_kind_enters_by_its_registered_code_whatever_else_is_installed():
    ladder = attrs.evolve(HOLDING, internal_kind="lora_rank", internal_level=1, internal_max_level=4)
    kind, has = offset(SLOT_FEATURES, "ladder_kind_norm"), offset(SLOT_FEATURES, "has_ladder")
    builtin = observation([DORMANT, ladder])
    assert builtin.ladder_kind_codes == {"conv_stages": 1, "lora_rank": 2, "channel_groups": 3}  # the core's own
    more = attrs.evolve(builtin, ladder_kind_codes={**builtin.ladder_kind_codes, "dendrites": 7})
    for obs in (builtin, more):
        slots = build_features([obs]).slots[0]
        assert slots[1, kind].item() == pytest.approx(2 / MAX_LADDER_CODE) and slots[1, has].item() == 1.0
        assert slots[0, kind].item() == 0.0 and slots[0, has].item() == 0.0  # no ladder: code 0
    third_party = attrs.evolve(ladder, internal_kind="dendrites")
    assert build_features([attrs.evolve(more, slots=(DORMANT, third_party))]).slots[0, 1, kind].item() == pytest.approx(
        7 / MAX_LADDER_CODE)
    with pytest.raises(PluginError, match="ladder kind 'dendrites' has no registered code in this observation"):
        build_features([attrs.evolve(builtin, slots=(DORMANT, third_party))])


def test_an_unregistered_surface_is_an_error_not_a_zero():
    with pytest.raises(PluginError, match="surface 'post_mlp' has no registered code"):
        build_features([attrs.evolve(observation([DORMANT, HOLDING]), surface_codes={"segment_boundary": 0})])


# -- Obs V3 subtarget features (Phase 3) ----------------------------------------------------------------


def inventory(report, mask, importance, *, since=None):
    return attrs.evolve(
        report, subtarget_kind="cnn_channel_group", subtarget_count=len(mask), subtarget_active_count=sum(mask),
        subtarget_active_mask=tuple(mask), subtarget_importance=tuple(importance), epochs_since_subtarget_change=since,
    )


def test_the_slot_layout_grows_by_two_k_blocks_at_its_end():
    from esper_core.tamiyo import SUBTARGET_FEATURES, slot_layout, slot_size

    assert slot_layout(1) == SLOT_FEATURES and slot_size(1) == SLOT_SIZE
    assert slot_size(4) == SLOT_SIZE + 2 * 3 and slot_size(16) == SLOT_SIZE + 2 * 15
    assert SLOT_FEATURES[-len(SUBTARGET_FEATURES):] == SUBTARGET_FEATURES
    wide = slot_layout(4)
    assert [f.size for f in wide[-2:]] == [4, 4] and [f.name for f in wide[:-2]] == [f.name for f in SLOT_FEATURES[:-2]]
    for bad in (0, 17, True, 2.0):
        with pytest.raises(ValueError, match="subtarget_count"):
            slot_layout(bad)


def test_subtarget_features_describe_the_mask_churn_and_normalised_importance():
    seed = inventory(HOLDING, [True, False, True, True, False], [0.2, 0.9, 0.4, 0.1, 0.0], since=3)
    obs = attrs.evolve(observation([DORMANT, seed]), subtarget_count=8)
    from esper_core.tamiyo import slot_layout

    layout = slot_layout(8)
    slots = build_features([obs]).slots[0]
    assert slots.shape == (2, layout_size(layout))
    row = slots[1]
    assert row[offset(layout, "subtarget_count_norm")].item() == pytest.approx(5 / 8)
    assert row[offset(layout, "subtarget_active_frac")].item() == pytest.approx(3 / 5)
    assert row[offset(layout, "subtarget_churn_norm")].item() == pytest.approx(3 / 10)
    mask_at, importance_at = offset(layout, "subtarget_active_mask"), offset(layout, "subtarget_importance_norm")
    assert row[mask_at:mask_at + 8].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    # normalised by the largest *enabled* group's (0.4): a disabled group's 0.9 is shown as 0
    assert row[importance_at:importance_at + 8].tolist() == pytest.approx([0.5, 0.0, 1.0, 0.25, 0.0, 0.0, 0.0, 0.0])
    # every feature before the blocks is the K = 1 row's
    narrow = build_features([attrs.evolve(obs, subtarget_count=5)]).slots[0, 1]
    fixed = offset(layout, "subtarget_active_mask")
    assert row[:fixed - 3].tolist() == narrow[:fixed - 3].tolist()
    assert narrow[offset(SLOT_FEATURES, "subtarget_count_norm")].item() == 1.0


def test_a_slot_without_an_inventory_sees_zeros_and_an_unmeasured_churn():
    obs = attrs.evolve(observation([DORMANT, HOLDING]), subtarget_count=4)
    from esper_core.tamiyo import slot_layout

    layout = slot_layout(4)
    for row in build_features([obs]).slots[0]:
        assert row[offset(layout, "subtarget_count_norm")].item() == 0.0
        assert row[offset(layout, "subtarget_active_frac")].item() == 0.0
        assert row[offset(layout, "subtarget_churn_norm")].item() == UNMEASURED
        assert row[offset(layout, "subtarget_active_mask"):].tolist() == [0.0] * 8


def test_importance_of_groups_that_never_ran_is_zero_and_a_non_finite_score_is_not_hidden():
    silent = inventory(HOLDING, [True, True], [0.0, 0.0])
    obs = attrs.evolve(observation([DORMANT, silent]), subtarget_count=2)
    from esper_core.tamiyo import slot_layout

    at = offset(slot_layout(2), "subtarget_importance_norm")
    assert build_features([obs]).slots[0, 1, at:at + 2].tolist() == [0.0, 0.0]
    broken = attrs.evolve(obs, slots=(DORMANT, inventory(HOLDING, [True, True], [float("nan"), 1.0])))
    values = build_features([broken]).slots[0, 1, at:at + 2]
    assert bool(values.isnan().any())


def test_a_seed_with_more_groups_than_the_head_is_an_error_naming_it():
    seed = inventory(HOLDING, [True] * 5, [1.0] * 5)
    with pytest.raises(PluginError, match="slot r0c1: seed s \\(b\\) reports 5 subtargets; the run's subtarget head has 4"):
        build_features([attrs.evolve(observation([DORMANT, seed]), subtarget_count=4)])
    with pytest.raises(ValueError, match="one batch mixes subtarget head sizes \\[1, 4\\]"):
        build_features([observation([DORMANT, HOLDING]), attrs.evolve(observation([DORMANT, HOLDING]), subtarget_count=4)])
    with pytest.raises(ValueError, match="EnvObservation.subtarget_count must be an integer from 1 to 16"):
        attrs.evolve(observation([DORMANT, HOLDING]), subtarget_count=0)


def test_the_last_op_one_hot_covers_the_subtarget_ops():
    action = FactoredAction(op=LifecycleOp.DISABLE_SUBTARGET, slot=1, subtarget=2)
    base = build_features([observation([DORMANT, HOLDING], last_action=action)]).base[0]
    last_op = base[offset(BASE_FEATURES, "last_op"):][: len(LifecycleOp) + 1].tolist()
    assert len(LifecycleOp) == 10 and last_op[int(LifecycleOp.DISABLE_SUBTARGET)] == 1.0 and sum(last_op) == 1.0
