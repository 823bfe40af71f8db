"""lora_ladder inside Esper: the installed plugin's registration, a seed slot's lifecycle, and the fixed ``lora`` seeds it steps through."""

from __future__ import annotations

import attrs
import pytest
import torch

from esper_core.kasmina import LifecycleSettings, SeedSlot, count_parameters
from esper_core.leyline import (
    SEGMENT_BOUNDARY,
    AlphaCurve,
    BlendStyle,
    InjectionSpec,
    SeedStage,
    TelemetryEventType,
)
from esper_core.registry import LadderSpec

from esper_lora_ladder.plugin import LADDER, RANKS, SEED_FAMILY, LoraLadderSeed

CHANNELS = 32


def test_the_installed_plugin_registers_the_family_with_its_ladder(esper_plugins, esper_registry):
    if "lora_ladder" not in esper_registry.names("seed_families"):
        pytest.skip("esper-lora-ladder is not installed (pip install ./contrib/esper-lora-ladder)")
    assert esper_registry.owner("seed_families", "lora_ladder") == "lora_ladder"
    family = esper_registry.get("seed_families", "lora_ladder")
    assert family.ladder == LADDER == LadderSpec(kind="lora_rank", max_level=4, initial_level=1)
    assert family.topologies == ("sequence",)
    assert not [failure for failure in esper_plugins.failures if failure.name == "lora_ladder"]


def fixed_lora(esper_registry, family: str, rank: int) -> torch.nn.Module:
    """A seed of the transformer plugin's ``lora``/``lora_large`` family at ``rank``, scale alpha / rank = 1."""
    if family not in esper_registry.names("seed_families"):
        pytest.skip(f"the '{family}' seed family (esper-transformer) is not installed")
    entry = esper_registry.get("seed_families", family)
    config = attrs.evolve(entry.config_class(), rank=rank, alpha=float(rank))
    return entry.build(CHANNELS, "sequence", config)


@pytest.mark.parametrize("family, level", [("lora", 1), ("lora", 2), ("lora", 3), ("lora_large", 4)])
def test_each_level_is_the_fixed_lora_seed_of_the_same_rank(esper_registry, family, level):
    lora = fixed_lora(esper_registry, family, RANKS[level])
    ladder = LoraLadderSeed(CHANNELS)
    ladder.set_internal_level(level)
    assert ladder.internal_effective_params(level) == count_parameters(lora) == 2 * CHANNELS * RANKS[level]
    with torch.no_grad():  # give the fixed seed trained-looking weights and copy them, block by block
        for parameter in lora.parameters():
            parameter.normal_(0.0, 0.2)
        down, up = lora.state_dict()["down.weight"], lora.state_dict()["up.weight"]
        start = 0
        for index in range(level):
            width = RANKS[index + 1] - RANKS[index]
            ladder.down[index].weight.copy_(down[start : start + width])
            ladder.up[index].weight.copy_(up[:, start : start + width])
            start += width
    x = torch.randn(2, 9, CHANNELS)
    assert torch.allclose(ladder(x), lora(x), atol=1e-5)


def slot_with_a_lora_ladder(events: list) -> SeedSlot:
    spec = InjectionSpec(slot_id="r0c0", channels=CHANNELS, surface=SEGMENT_BOUNDARY, order=0, host_block=0)
    slot = SeedSlot(
        spec,
        topology="sequence",
        settings=LifecycleSettings(embargo_epochs=1, min_training_epochs=1),
        build_seed=lambda family, channels: SEED_FAMILY.build(channels, "sequence", SEED_FAMILY.config_class()),
        emit=events.append,
    )
    result = slot.germinate(
        seed_id="seed-0", seed_family="lora_ladder", style=BlendStyle.ADD, blend_epochs=1,
        alpha_target=1.0, alpha_curve=AlphaCurve.LINEAR, score_now=None,
    )
    assert result.success, result.reason
    return slot


def test_a_slot_grows_and_shrinks_the_rank_and_charges_rent_on_the_rank_in_use():
    events: list = []
    slot = slot_with_a_lora_ladder(events)
    report = slot.report()
    assert (report.internal_kind, report.internal_level, report.internal_max_level) == ("lora_rank", 1, 4)
    assert slot.internal_effective_params == 2 * CHANNELS * 4 == slot.seed_params < slot.built_params == 2 * CHANNELS * 32
    assert slot.grow_internal().success and slot.grow_internal().success and slot.shrink_internal().success
    changes = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED]
    assert [(c.from_level, c.to_level, c.internal_effective_params) for c in changes] == [
        (1, 2, 2 * CHANNELS * 8), (2, 3, 2 * CHANNELS * 16), (3, 2, 2 * CHANNELS * 8),
    ]


def test_fossilization_freezes_the_rank():
    slot = slot_with_a_lora_ladder([])
    assert slot.grow_internal().success  # rank 8
    slot.tick()  # GERMINATED -> TRAINING
    slot.tick()
    assert slot.advance().success
    for _ in range(100):  # a blend lasts a few epochs; fail rather than loop forever
        if not (slot.stage is SeedStage.BLENDING):
            break
        slot.tick()
    else:
        raise AssertionError("the blend never ended")
    assert slot.fossilize().success
    x = torch.randn(2, 5, CHANNELS)
    before = slot(x)
    for change in (slot.grow_internal, slot.shrink_internal):
        result = change()
        assert not result.success and "needs a live seed" in result.reason
    assert (slot.ladder.internal_level, slot.ladder.rank, slot.report().internal_level) == (2, 8, 2)
    assert torch.equal(slot(x), before)


def test_a_rebuilt_seed_resumes_at_its_level_with_its_weights():
    torch.manual_seed(0)
    seed = LoraLadderSeed(CHANNELS)
    seed.set_internal_level(3)
    with torch.no_grad():
        for parameter in seed.parameters():
            parameter.normal_(0.0, 0.2)
    clone = LoraLadderSeed(CHANNELS)
    clone.set_internal_level(3)  # the core restores the level first, then the weights
    clone.load_state_dict(seed.state_dict())
    x = torch.randn(2, 5, CHANNELS)
    assert torch.equal(clone(x), seed(x))
