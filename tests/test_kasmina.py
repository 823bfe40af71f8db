"""Kasmina: lifecycle transitions, embargo, gradient isolation, blending, fossilization and ablations."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.errors import LifecycleError, SeedContractError
from esper_core.kasmina import (
    AlphaSchedule,
    LifecycleSettings,
    ModelLifecycleState,
    SeedSlot,
    SlotLifecycleState,
    count_parameters,
    curve_value,
)
from esper_core.leyline import (
    SEGMENT_BOUNDARY,
    InjectionSpec,
    TRANSITIONS,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    FactoredAction,
    LifecycleOp,
    SeedStage,
    TelemetryEventType,
    Tempo,
    check_transition,
)
from esper_core.tamiyo import compute_masks
from esper_core.tolaria.state import state_converter
from tests.conftest import make_model, make_slot, toy_seed_builder


def germinate(slot, *, style=BlendStyle.ADD, target=1.0, blend_epochs=2, curve=AlphaCurve.LINEAR):
    return slot.germinate(
        seed_id="s", seed_family="toy_conv", style=style, blend_epochs=blend_epochs,
        alpha_target=target, alpha_curve=curve, score_now=0.5,
    )


def grow_to_holding(slot, *, target=1.0, blend_epochs=2):
    assert germinate(slot, target=target, blend_epochs=blend_epochs).success
    slot.tick()  # GERMINATED -> TRAINING
    slot.tick()  # one incubation epoch
    assert slot.advance().success
    for _ in range(100):  # a blend lasts a few epochs; fail rather than loop forever
        if not (slot.stage is SeedStage.BLENDING):
            break
        slot.tick()
    else:
        raise AssertionError("the blend never ended")
    assert slot.stage is SeedStage.HOLDING


# -- transition table -----------------------------------------------------------------------------


def test_check_transition_rejects_moves_outside_the_table():
    check_transition(SeedStage.DORMANT, SeedStage.GERMINATED, slot_id="r0c0")
    with pytest.raises(LifecycleError, match="DORMANT -> FOSSILIZED"):
        check_transition(SeedStage.DORMANT, SeedStage.FOSSILIZED, slot_id="r0c0")
    assert TRANSITIONS[SeedStage.FOSSILIZED] == frozenset()


OPS = st.sampled_from(["germinate", "advance", "alpha", "prune_now", "prune_slow", "fossilize", "tick", "tick", "tick"])


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(OPS, min_size=1, max_size=60), embargo=st.integers(min_value=0, max_value=4),
       target=st.sampled_from([0.5, 0.75, 1.0]))
def test_random_op_sequences_stay_in_the_transition_table_and_embargo_is_exact(ops, embargo, target):
    events = []
    slot = make_slot(embargo=embargo, min_training=1, events=events)
    embargo_ticks = None
    embargo_lengths = []
    for op in ops:
        before = slot.stage
        if op == "germinate":
            result = germinate(slot, target=target)
        elif op == "advance":
            result = slot.advance()
        elif op == "alpha":
            result = slot.set_alpha_target(1.0 if slot.alpha < 1.0 else 0.5, epochs=1, curve=AlphaCurve.COSINE)
        elif op == "prune_now":
            result = slot.prune(epochs=0, curve=AlphaCurve.LINEAR, reason="test")
        elif op == "prune_slow":
            result = slot.prune(epochs=2, curve=AlphaCurve.SIGMOID, reason="test")
        elif op == "fossilize":
            result = slot.fossilize()
        else:
            slot.tick()
            if slot.stage is SeedStage.EMBARGOED:
                embargo_ticks = (embargo_ticks or 0) + 1
            elif embargo_ticks is not None:
                embargo_lengths.append(embargo_ticks)
                embargo_ticks = None
            continue
        if not result.success:
            assert slot.stage is before, f"failed {op} changed the stage"
        assert 0.0 <= slot.alpha <= 1.0
    for event in events:
        if event.event_type is TelemetryEventType.SEED_STAGE_CHANGED:
            assert event.payload.to_stage in TRANSITIONS[event.payload.from_stage]
    assert all(length == embargo for length in embargo_lengths)
    if embargo == 0:
        assert not any(e.payload.to_stage is SeedStage.EMBARGOED for e in events
                       if e.event_type is TelemetryEventType.SEED_STAGE_CHANGED)


def test_embargo_then_resetting_then_dormant():
    slot = make_slot(embargo=3)
    assert germinate(slot).success
    assert slot.prune(epochs=0, curve=AlphaCurve.LINEAR, reason="test").success
    assert slot.stage is SeedStage.PRUNED and slot.seed is None
    stages = []
    for _ in range(6):
        slot.tick()
        stages.append(slot.stage)
    assert stages == [SeedStage.EMBARGOED] * 3 + [SeedStage.RESETTING, SeedStage.DORMANT, SeedStage.DORMANT]
    assert germinate(slot).success


# -- gradient isolation ---------------------------------------------------------------------------


def test_training_stage_output_and_host_gradients_equal_the_model_without_the_seed():
    model = make_model(seed=1)
    bare = copy.deepcopy(model)
    slot = model.slots["r0c1"]
    assert germinate(slot).success
    slot.tick()
    assert slot.stage is SeedStage.TRAINING
    with torch.no_grad():  # make the seed non-trivial so that leaking it would show
        for p in slot.seed.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    y_seed = model(x)
    y_bare = bare(x)
    assert torch.equal(y_seed, y_bare)
    y_seed.square().sum().backward()
    y_bare.square().sum().backward()
    for (name, p_seed), (_, p_bare) in zip(model.host.named_parameters(), bare.host.named_parameters()):
        assert torch.equal(p_seed.grad, p_bare.grad), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in slot.seed.parameters())


def test_host_upstream_of_a_fossilized_seed_still_learns():
    model = make_model(seed=2)
    slot = model.slots["r0c2"]
    grow_to_holding(slot)
    assert slot.fossilize().success and slot.alpha == 1.0
    upstream = [p.detach().clone() for p in model.host.blocks[0].parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    target = torch.tensor([0, 1] * 4)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        assert model.host.blocks[0][0].weight.grad.abs().sum() > 0
        optimizer.step()
    assert any(not torch.equal(before, after) for before, after in zip(upstream, model.host.blocks[0].parameters()))


def test_fossilized_seed_is_a_trainable_part_of_the_model():
    model = make_model(seed=3)
    slot = model.slots["r0c0"]
    grow_to_holding(slot)
    slot.fossilize()
    assert all(p.requires_grad for p in slot.seed.parameters())
    names = [name for name, _ in model.named_parameters()]
    assert any(name.startswith("slots.r0c0.seed.") for name in names)


# -- alpha -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", list(AlphaCurve))
def test_alpha_curves_fix_both_ends_and_are_monotone(curve):
    values = [curve_value(curve, step / 20) for step in range(21)]
    assert values[0] == pytest.approx(0.0, abs=1e-12) and values[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_alpha_schedule_reaches_target_after_total_epochs():
    schedule = AlphaSchedule(start=0.2, target=0.8, total_epochs=3, curve=AlphaCurve.COSINE)
    values = [schedule.tick() for _ in range(4)]
    assert values[2] == pytest.approx(0.8) and values[3] == pytest.approx(0.8) and schedule.done


def test_partial_alpha_target_reaches_holding_and_can_be_raised():
    slot = make_slot()
    grow_to_holding(slot, target=0.5)
    assert slot.alpha == pytest.approx(0.5)
    assert slot.set_alpha_target(1.0, epochs=2, curve=AlphaCurve.LINEAR).success
    assert slot.stage is SeedStage.BLENDING
    slot.tick()
    slot.tick()
    assert slot.stage is SeedStage.HOLDING and slot.alpha == pytest.approx(1.0)
    assert slot.fossilize().success


def test_fossilizing_at_a_partial_alpha_keeps_that_alpha():
    """FOSSILIZE needs HOLDING, not alpha 1: a seed held at a partial target (0.5) fossilizes at 0.5 by
    design, keeps blending at that alpha, is charged its full size, and its contribution is still measured."""
    events = []
    model = make_model(seed=11, events=events)
    slot = model.slots["r0c1"]
    grow_to_holding(slot, target=0.5)
    with torch.no_grad():  # a seed that does something, so the blend weight shows in the output
        for p in slot.seed.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.eval()
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        before = model(x)
    assert model.apply(FactoredAction(op=LifecycleOp.FOSSILIZE, slot=1), score_now=0.5).success
    assert slot.stage is SeedStage.FOSSILIZED and slot.alpha == pytest.approx(0.5)
    (fossilized,) = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_FOSSILIZED]
    assert fossilized.alpha == pytest.approx(0.5)
    assert slot.effective_params == slot.seed_params > 0  # rent on the whole seed once it is part of the host
    assert model.fossilization_order == ["r0c1"] and model.ablatable_slots() == ["r0c1"]
    with torch.no_grad():
        after = model(x)
        h = model.host.forward_to("r0c1", x)
        expected = model.host.forward_from("r0c1", h + 0.5 * (slot.seed(h) - h))
    assert torch.equal(after, before)  # fossilizing changes no output
    assert torch.allclose(after, expected, atol=1e-6)
    slot.tick()
    assert slot.stage is SeedStage.FOSSILIZED and slot.alpha == pytest.approx(0.5)  # nothing moves it after


def test_instant_alpha_change_returns_to_holding_at_the_next_tick():
    slot = make_slot()
    grow_to_holding(slot, target=1.0)
    assert slot.set_alpha_target(0.5, epochs=0, curve=AlphaCurve.LINEAR).success
    assert slot.alpha == 0.5 and slot.stage is SeedStage.BLENDING
    slot.tick()
    assert slot.stage is SeedStage.HOLDING
    assert not slot.set_alpha_target(0.5, epochs=0, curve=AlphaCurve.LINEAR).success


def test_scheduled_prune_blends_out_then_prunes():
    events = []
    slot = make_slot(embargo=1, events=events)
    grow_to_holding(slot)
    assert slot.prune(epochs=2, curve=AlphaCurve.LINEAR, reason="test").success
    assert slot.stage is SeedStage.BLENDING and slot.blend_out
    assert not slot.set_alpha_target(1.0, epochs=1, curve=AlphaCurve.LINEAR).success
    slot.tick()
    assert slot.alpha == pytest.approx(0.5)
    slot.tick()
    assert slot.stage is SeedStage.EMBARGOED and slot.seed is None
    pruned = [e for e in events if e.event_type is TelemetryEventType.SEED_PRUNED]
    assert len(pruned) == 1 and pruned[0].payload.reason == "test"


def test_advance_gate_needs_incubation_epochs_and_finite_gradients():
    slot = make_slot(min_training=2)
    germinate(slot)
    slot.tick()
    assert "gate G1" in slot.advance().reason
    slot.tick()
    slot.record_gradients(float("nan"), 1.0)
    assert "not finite" in slot.advance().reason
    slot.record_gradients(0.5, 1.0)
    assert slot.advance().success


def test_gate_g0_prunes_a_seed_with_non_finite_parameters():
    slot = make_slot(embargo=0)
    germinate(slot)
    with torch.no_grad():
        next(slot.seed.parameters()).fill_(float("inf"))
    slot.tick()
    assert slot.stage is SeedStage.RESETTING


@pytest.mark.parametrize("style", list(BlendStyle))
def test_every_blend_style_is_the_identity_when_the_seed_is(style):
    model = make_model(seed=5)
    bare = copy.deepcopy(model)
    slot = model.slots["r0c1"]
    assert germinate(slot, style=style).success
    slot.tick(); slot.tick()
    slot.advance()
    slot.tick()
    assert slot.stage is SeedStage.BLENDING and slot.alpha > 0
    x = torch.randn(3, 1, 6, 6)
    assert torch.allclose(model(x), bare(x), atol=1e-6)


# -- counterfactual ablations ---------------------------------------------------------------------


def test_forward_with_ablations_matches_one_pass_per_ablation():
    model = make_model(seed=6)
    for slot_id in ("r0c0", "r0c2"):
        slot = model.slots[slot_id]
        grow_to_holding(slot, target=0.75)
        with torch.no_grad():
            for p in slot.seed.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    model.eval()
    x = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(8))
    ablate = model.ablatable_slots()
    assert ablate == ["r0c0", "r0c2"]
    with torch.no_grad():
        stacked = model.forward_with_ablations(x, ablate)
        assert stacked.shape == (3, 4, 2)
        assert torch.allclose(stacked[0], model(x), atol=1e-6)
        for k, slot_id in enumerate(ablate, start=1):
            slot = model.slots[slot_id]
            slot._set_alpha(0.0)
            expected = model(x)
            slot._set_alpha(0.75)
            assert torch.allclose(stacked[k], expected, atol=1e-6), slot_id
            assert not torch.allclose(stacked[k], stacked[0])


def test_forward_with_ablations_refuses_train_mode():
    model = make_model()
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.forward_with_ablations(torch.randn(2, 1, 6, 6), [])


# -- model actions ---------------------------------------------------------------------------------


def test_apply_respects_max_seeds_and_failed_ops_change_nothing():
    model = make_model(max_seeds=1)
    germ = FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=0)
    assert model.apply(germ, score_now=0.1).success
    second = model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=1, blueprint=0), score_now=0.1)
    assert not second.success and "max_seeds" in second.reason
    assert model.slots["r0c1"].stage is SeedStage.DORMANT
    fossil = model.apply(FactoredAction(op=LifecycleOp.FOSSILIZE, slot=0), score_now=0.1)
    assert not fossil.success and model.slots["r0c0"].stage is SeedStage.GERMINATED


def test_masks_allow_exactly_the_possible_moves():
    model = make_model(max_seeds=2)
    model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=0), score_now=0.1)
    model.tick()
    masks = compute_masks([model.reports()], num_seed_families=1, max_seeds=2)
    assert masks.op[0].tolist() == [True, True, True, False, True, False, False, False, False, False]
    assert masks.slot[0, LifecycleOp.GERMINATE].tolist() == [False, True, True]
    assert masks.slot[0, LifecycleOp.ADVANCE].tolist() == [True, False, False]
    model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=1, blueprint=0), score_now=0.1)
    masks = compute_masks([model.reports()], num_seed_families=1, max_seeds=2)
    assert not masks.op[0, LifecycleOp.GERMINATE]
    assert not masks.allows(0, FactoredAction(op=LifecycleOp.GERMINATE, slot=2, blueprint=0))
    assert masks.allows(0, FactoredAction(op=LifecycleOp.PRUNE, slot=1, alpha_speed=AlphaSpeed.FAST))


def test_germinate_action_carries_its_heads_into_the_slot():
    model = make_model()
    action = FactoredAction(op=LifecycleOp.GERMINATE, slot=2, blueprint=0, style=BlendStyle.GATE,
                            tempo=Tempo.SLOW, alpha_target=AlphaTarget.HALF, alpha_curve=AlphaCurve.SIGMOID)
    assert model.apply(action, score_now=0.3).success
    slot = model.slots["r0c2"]
    assert (slot.style, slot.blend_epochs, slot.planned_alpha_target, slot.planned_curve) == (
        BlendStyle.GATE, 8, 0.5, AlphaCurve.SIGMOID)
    gate_params = count_parameters(slot.gate)
    assert gate_params > 0
    assert slot.seed_params == count_parameters(slot.seed) + gate_params  # the gate is part of the seed's size


def test_lifecycle_state_round_trip_restores_reports_and_outputs():
    model = make_model(seed=7)
    grow_to_holding(model.slots["r0c1"], target=0.75)
    model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=0, style=BlendStyle.GATE), score_now=0.2)
    model.tick()
    state = model.lifecycle_record()
    weights = model.state_dict()
    clone = make_model(seed=99)
    clone.load_lifecycle_record(state)
    clone.load_state_dict(weights)
    assert clone.reports() == model.reports()
    model.eval(); clone.eval()
    x = torch.randn(3, 1, 6, 6)
    assert torch.equal(model(x), clone(x))


# -- the seed contract at germination -------------------------------------------------------------


def contract_slot(build, events=None, plugin="toyplug"):
    spec = InjectionSpec(slot_id="r0c0", channels=6, surface=SEGMENT_BOUNDARY, order=0, host_block=0)
    return SeedSlot(spec, topology="image", settings=LifecycleSettings(min_training_epochs=1),
                    build_seed=build, emit=None if events is None else events.append,
                    seed_plugin=lambda family: plugin)


class Counting(torch.nn.Module):
    """Wraps a seed and counts its forward passes."""

    def __init__(self, inner, transform=lambda out: out):
        super().__init__()
        self.inner = inner
        self.transform = transform
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.transform(self.inner(x))


@pytest.mark.parametrize(
    ("transform", "problem"),
    [
        (lambda out: out[:, :1], r"is not shape-preserving: \(2, 6, 6, 6\) -> \(2, 1, 6, 6\)"),
        (lambda out: out.double(), "changes the dtype: torch.float32 -> torch.float64"),
        (lambda out: (out, out), r"returned a tuple, not a tensor, for a probe batch of shape \(2, 6, 6, 6\)"),
    ],
)
def test_a_seed_breaking_the_contract_fails_germination_and_leaves_the_slot_empty(transform, problem):
    events = []
    slot = contract_slot(lambda family, channels: Counting(toy_seed_builder("toy_conv", channels), transform), events)
    with pytest.raises(SeedContractError, match=rf"seed family 'toy_conv' \(plugin 'toyplug'\) {problem} in slot r0c0") as caught:
        germinate(slot)
    assert (caught.value.family, caught.value.plugin) == ("toy_conv", "toyplug")
    assert slot.stage is SeedStage.DORMANT and slot.seed is None and slot.gate is None and slot.seed_id is None
    assert slot.report() == make_slot().report() and events == []
    slot._build_seed = toy_seed_builder  # a conforming family germinates in the same slot afterwards
    assert germinate(slot).success


def test_a_build_returning_none_or_raising_is_a_contract_error_naming_family_and_plugin():
    slot = contract_slot(lambda family, channels: None)
    with pytest.raises(SeedContractError, match="seed family 'toy_conv' \\(plugin 'toyplug'\\) built a NoneType, not a torch.nn.Module"):
        germinate(slot)

    def fails(family, channels):
        raise IndexError("width table")

    slot = contract_slot(fails)
    with pytest.raises(SeedContractError, match="failed to build a seed \\(IndexError: width table\\) in slot r0c0"):
        germinate(slot)
    assert slot.stage is SeedStage.DORMANT


def test_the_contract_is_probed_once_at_germination_without_side_effects():
    """One eval-mode forward on the topology's example shape: not per step, the global RNG and the
    seed's batch-norm statistics untouched."""
    class Normed(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.norm = torch.nn.BatchNorm2d(channels)
            self.out = torch.nn.Conv2d(channels, channels, 1)
            torch.nn.init.zeros_(self.out.weight)
            torch.nn.init.zeros_(self.out.bias)

        def forward(self, x):
            return x + self.out(self.norm(x))

    built = []

    def build(family, channels):
        with torch.random.fork_rng(devices=[]):  # as the engine builds seeds
            built.append(Counting(Normed(channels)))
        return built[-1]

    slot = contract_slot(build)
    rng = torch.random.get_rng_state()
    assert germinate(slot).success
    assert torch.equal(torch.random.get_rng_state(), rng)
    seed = built[0]
    assert seed.calls == 1 and seed.training  # the probe ran in eval mode and gave the mode back
    assert torch.equal(seed.inner.norm.running_mean, torch.zeros(6)) and int(seed.inner.norm.num_batches_tracked) == 0
    slot.tick()
    for _ in range(3):
        slot(torch.randn(2, 6, 6, 6))
    assert seed.calls == 4


def test_the_model_names_the_plugin_of_a_broken_family():
    model = make_model()
    model.slots["r0c0"]._build_seed = lambda family, channels: toy_seed_builder(family, channels + 1)
    model.slots["r0c0"]._seed_plugin = {"toy_conv": "toy_plugin"}.get
    with pytest.raises(SeedContractError, match="seed family 'toy_conv' \\(plugin 'toy_plugin'\\)"):
        model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=0), score_now=0.1)
    assert model.germination_count == 0 and model.slots["r0c0"].stage is SeedStage.DORMANT


# -- typed lifecycle state --------------------------------------------------------------------------


def test_a_slot_keeps_no_lifecycle_attribute_outside_its_record():
    """Every attribute a slot sets is a construction attribute or a SlotLifecycleState field, so reset,
    checkpoint and restore (which iterate the record) cannot forget one."""
    construction = {"spec", "slot_id", "topology", "settings", "_build_seed", "env_id", "_emit", "_clock",
                    "_seed_plugin", "seed", "gate"}
    record = {field.name for field in attrs.fields(SlotLifecycleState)}
    module_internals = set(vars(torch.nn.Module()))
    model = make_model()
    slot = model.slots["r0c0"]
    model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=1, style=BlendStyle.GATE), score_now=0.2)
    model.apply(FactoredAction(op=LifecycleOp.GROW_INTERNAL, slot=0), score_now=0.2)
    slot.tick(); slot.tick()
    slot.record_gradients(0.1, 0.2)
    slot.record_validation(0.3, None)
    assert slot.advance().success
    assert slot.prune(epochs=2, curve=AlphaCurve.COSINE, reason="test").success
    stray = set(vars(slot)) - module_internals - construction - record
    assert stray == set(), f"lifecycle attributes outside SlotLifecycleState: {sorted(stray)}"
    # the attribute declarations follow the record (the level lives in the ladder, the mask in the inventory)
    assert set(SeedSlot.__annotations__) == record - {"internal_level", "subtarget_mask"}


def test_lifecycle_records_round_trip_through_the_checkpoint_converter_as_plain_values():
    model = make_model(seed=8)
    grow_to_holding(model.slots["r0c1"], target=0.75)
    assert model.slots["r0c1"].set_alpha_target(1.0, epochs=4, curve=AlphaCurve.SIGMOID).success
    model.slots["r0c1"].tick()
    model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=1, style=BlendStyle.GATE), score_now=0.2)
    model.apply(FactoredAction(op=LifecycleOp.GROW_INTERNAL, slot=0), score_now=0.2)
    record = model.lifecycle_record()
    converter = state_converter()
    state = converter.unstructure(record)
    assert converter.structure(state, ModelLifecycleState) == record
    blending = state["slots"]["r0c1"]
    assert blending["stage"] == "BLENDING" and blending["style"] == "ADD" and blending["internal_level"] is None
    assert blending["schedule"] == {"start": 0.75, "target": 1.0, "total_epochs": 4, "curve": int(AlphaCurve.SIGMOID),
                                    "elapsed": 1}
    assert state["slots"]["r0c0"]["internal_level"] == 2 and state["slots"]["r0c0"]["style"] == "GATE"
    model.tick()  # the record is a snapshot: later ticks do not move it
    assert converter.structure(state, ModelLifecycleState) == record and model.lifecycle_record() != record


def test_checkpoints_written_before_the_score_renames_still_load():
    """0.2.0 renamed the score fields (they hold the score, not the metric); older checkpoints name them
    ``metric_at_germination`` / ``last_metric`` / ``metric_delta_since_germination``."""
    from esper_core.kasmina.slot import SlotLifecycleState
    from esper_core.leyline import SeedMetrics

    slot = make_slot()
    assert germinate(slot).success
    converter = state_converter()
    state = converter.unstructure(slot.lifecycle_record())
    old_names = {"score_at_germination": "metric_at_germination", "last_score": "last_metric"}
    old = {old_names.get(key, key): value for key, value in state.items()}
    assert "metric_at_germination" in old and "score_at_germination" not in old
    restored = converter.structure(old, SlotLifecycleState)
    assert restored == slot.lifecycle_record() and restored.score_at_germination == 0.5
    metrics = converter.structure({"metric_at_germination": 0.25, "metric_delta_since_germination": 0.5}, SeedMetrics)
    assert (metrics.score_at_germination, metrics.score_delta_since_germination) == (0.25, 0.5)
