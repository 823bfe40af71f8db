"""Sensors match levers: every action head's current value per slot shows in Obs V3, and a fossil's
contribution keeps being measured every epoch."""

from __future__ import annotations

import attrs
import pytest
import torch

from esper_core.config import GovernorSection, TrainingSection
from esper_core.leyline import (
    BLENDED_STAGES,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    FactoredAction,
    LifecycleOp,
    SeedStage,
    SlotConfig,
    Tempo,
)
from esper_core.tamiyo import EnvObservation
from esper_core.tamiyo.features import SLOT_FEATURES, SLOT_SIZE, UNMEASURED, build_features
from esper_core.tasks import TaskContext
from esper_core.tolaria.environment import Environment
from tests import toy_plugin
from tests.conftest import make_model, make_slot


def field(name: str, row: torch.Tensor) -> list[float]:
    """The named per-slot feature of one slot's row (KeyError if the layout lacks it)."""
    position = 0
    for feature in SLOT_FEATURES:
        if feature.name == name:
            return row[position : position + feature.size].tolist()
        position += feature.size
    raise KeyError(f"Obs V3 has no per-slot feature {name!r}")


def slot_row(slot) -> torch.Tensor:
    report = slot.report()
    observation = EnvObservation(
        env_id=0, round=0, epoch=0, episode_length=10, val_metric=0.5, val_loss=1.0, train_loss=1.0,
        metric_history=(0.5,), loss_history=(1.0,), host_params=1000, slots=(report,),
        slot_config=SlotConfig.from_specs((slot.spec,)), surface_codes={slot.spec.surface: 0},
        seed_families=("toy_conv",), max_seeds=1, last_action=None, last_action_success=True,
        last_action_reason="", rolled_back=False,
    )
    row = build_features([observation]).slots[0, 0]
    assert row.shape == (SLOT_SIZE,)
    return row


def germinated(*, style=BlendStyle.ADD, tempo=Tempo.FAST, target=AlphaTarget.FULL, curve=AlphaCurve.LINEAR):
    slot = make_slot(min_training=1)
    assert slot.germinate(
        seed_id="s", seed_family="toy_conv", style=style, blend_epochs=tempo.epochs,
        alpha_target=target.value_, alpha_curve=curve, score_now=0.5,
    ).success
    return slot


def holding(**levers):
    slot = germinated(**levers)
    slot.tick()
    slot.tick()
    assert slot.advance().success
    for _ in range(100):  # a blend lasts a few epochs; fail rather than loop forever
        if slot.stage is not SeedStage.BLENDING:
            break
        slot.tick()
    else:
        raise AssertionError("the blend never ended")
    assert slot.stage is SeedStage.HOLDING
    return slot


def test_an_empty_slot_shows_zero_levers():
    row = slot_row(make_slot())
    for name in ("style", "tempo_epochs_norm", "alpha_schedule_epochs_norm", "alpha_curve", "alpha_target"):
        assert set(field(name, row)) == {0.0}, name


def test_style_head_is_observed():
    rows = {style: field("style", slot_row(germinated(style=style))) for style in BlendStyle}
    for style, value in rows.items():
        assert value == [1.0 if other is style else 0.0 for other in BlendStyle]


def test_tempo_head_is_observed_before_and_after_advance():
    before = {tempo: field("tempo_epochs_norm", slot_row(germinated(tempo=tempo)))[0] for tempo in Tempo}
    assert len(set(before.values())) == len(Tempo)
    assert before[Tempo.FAST] < before[Tempo.STANDARD] < before[Tempo.SLOW] <= 1.0
    fast, slow = holding(tempo=Tempo.FAST), holding(tempo=Tempo.SLOW)
    assert field("alpha_schedule_epochs_norm", slot_row(fast)) != field("alpha_schedule_epochs_norm", slot_row(slow))


def test_alpha_target_head_is_observed():
    values = {target: field("alpha_target", slot_row(germinated(target=target)))[0] for target in AlphaTarget}
    assert values == {target: target.value_ for target in AlphaTarget}
    slot = holding(target=AlphaTarget.FULL)
    assert slot.set_alpha_target(AlphaTarget.HALF.value_, epochs=2, curve=AlphaCurve.LINEAR).success
    assert field("alpha_target", slot_row(slot)) == [0.5]


@pytest.mark.parametrize("op", ["set_alpha_target", "prune"])
def test_alpha_speed_head_is_observed(op):
    seen = []
    for speed in (AlphaSpeed.FAST, AlphaSpeed.MEDIUM, AlphaSpeed.SLOW):
        slot = holding()
        if op == "set_alpha_target":
            result = slot.set_alpha_target(0.5, epochs=speed.epochs, curve=AlphaCurve.LINEAR)
        else:
            result = slot.prune(epochs=speed.epochs, curve=AlphaCurve.LINEAR, reason="test")
        assert result.success
        seen.append(field("alpha_schedule_epochs_norm", slot_row(slot))[0])
    assert seen == sorted(seen) and len(set(seen)) == 3


def test_alpha_curve_head_is_observed_planned_and_after_set_alpha_target():
    for curve in AlphaCurve:
        expected = [1.0 if other is curve else 0.0 for other in AlphaCurve]
        assert field("alpha_curve", slot_row(germinated(curve=curve))) == expected
        slot = holding(curve=AlphaCurve.LINEAR)
        assert slot.set_alpha_target(0.5, epochs=2, curve=curve).success
        assert field("alpha_curve", slot_row(slot)) == expected
        assert slot.report().alpha_curve is curve


def test_report_carries_the_curve_and_tempo_and_clears_them_with_the_seed():
    slot = germinated(tempo=Tempo.SLOW, curve=AlphaCurve.SIGMOID)
    report = slot.report()
    assert report.alpha_curve is AlphaCurve.SIGMOID and report.blend_epochs == Tempo.SLOW.epochs
    assert slot.prune(epochs=0, curve=AlphaCurve.LINEAR, reason="test").success
    report = slot.report()
    assert report.alpha_curve is None and report.blend_epochs == 0


def test_contribution_per_param_is_contribution_over_relative_size():
    slot = holding()
    assert field("contribution_per_param", slot_row(slot)) == [UNMEASURED]
    slot.record_validation(0.6, 0.02)
    value = field("contribution_per_param", slot_row(slot))[0]
    relative_size = slot.seed_params / 1000
    assert value == pytest.approx(torch.log1p(torch.tensor(0.02 / relative_size)).item(), rel=1e-5)


# -- fossils stay measured ----------------------------------------------------------------------------


def test_fossilized_is_not_a_blended_stage():
    """Rewards that credit blended seeds only (bounded_attribution) do not start paying fossils."""
    assert SeedStage.FOSSILIZED not in BLENDED_STAGES


def test_a_fossils_contribution_is_remeasured_every_epoch():
    task = toy_plugin.build_toy_task(toy_plugin.ToyTaskConfig(), TaskContext(device=torch.device("cpu"), seed=0))
    task.info = attrs.evolve(task.info, score_basis="loss")  # a continuous score: any change of effect shows
    model = make_model(seed=1)
    slot = model.slots["r0c1"]
    assert slot.germinate(
        seed_id="s", seed_family="toy_conv", style=BlendStyle.ADD, blend_epochs=1, alpha_target=1.0,
        alpha_curve=AlphaCurve.LINEAR, score_now=0.5,
    ).success
    slot.tick()
    slot.tick()
    assert slot.advance().success
    slot.tick()
    with torch.no_grad():
        for parameter in slot.seed.parameters():
            parameter.add_(torch.randn_like(parameter, generator=torch.Generator().manual_seed(3)))
    env = Environment(env_id=0, env_seed=1, model=model, task=task, training=TrainingSection(),
                      governor=GovernorSection(), episode_length=5, device=torch.device("cpu"))
    env.record_validation(env.validate(64))
    assert model.apply(FactoredAction(op=LifecycleOp.FOSSILIZE, slot=1), score_now=None).success
    assert slot.stage is SeedStage.FOSSILIZED
    slot.tick()

    first = env.validate(64)
    assert "r0c1" in first.contributions
    env.record_validation(first)
    report = slot.report()
    assert report.metrics.counterfactual_contribution == pytest.approx(first.contributions["r0c1"])
    assert report.metrics.epochs_since_measured == 0

    with torch.no_grad():  # the fossil's effect changes: its output branch is scaled
        slot.seed.out.weight.mul_(3.0)
        slot.seed.out.bias.mul_(3.0)
    second = env.validate(64)
    env.record_validation(second)
    report = slot.report()
    assert second.contributions["r0c1"] != pytest.approx(first.contributions["r0c1"])
    assert report.metrics.counterfactual_contribution == pytest.approx(second.contributions["r0c1"])
    assert report.metrics.contribution_velocity == pytest.approx(second.contributions["r0c1"] - first.contributions["r0c1"])
    assert report.metrics.epochs_since_measured == 0

    row = build_features([_observation(env, model)]).slots[0, 1]
    assert field("contribution", row) == [pytest.approx(second.contributions["r0c1"])]
    assert field("contribution_measured", row) == [1.0]


def _observation(env: Environment, model) -> EnvObservation:
    return EnvObservation(
        env_id=0, round=0, epoch=1, episode_length=5, val_metric=env.metric_history[-1],
        val_loss=env.loss_history[-1], train_loss=None, metric_history=tuple(env.metric_history),
        loss_history=tuple(env.loss_history), host_params=sum(p.numel() for p in model.host.parameters()),
        slots=tuple(model.slots[slot_id].report() for slot_id in model.slot_ids), slot_config=model.slot_config,
        surface_codes={"segment_boundary": 0}, seed_families=tuple(model.seed_families), max_seeds=3,
        last_action=None, last_action_success=True, last_action_reason="", rolled_back=False,
    )
