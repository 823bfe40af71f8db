"""lora_ladder inside Esper: the installed plugin's registration, a seed slot's lifecycle, the fixed ``lora`` seeds it steps through, and its rank blocks as subtargets."""

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
from esper_core.testing import check_subtarget_family

from esper_lora_ladder.plugin import IMPORTANCE_SAMPLE, LADDER, RANKS, SEED_FAMILY, SUBTARGETS, LoraLadderSeed

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


# -- the rank blocks as a subtarget inventory (esper-core 0.2.1) -------------------------------------

def seed_with_blocks(mask: tuple[bool, ...]) -> LoraLadderSeed:
    """A seed with every weight non-zero, as after some training, then set to ``mask``."""
    torch.manual_seed(0)
    seed = LoraLadderSeed(CHANNELS)
    seed.set_internal_level(4)
    with torch.no_grad():
        for parameter in seed.parameters():
            parameter.normal_(0.0, 0.2)
    for index, enabled in enumerate(mask):
        kept = seed.up[index].weight.clone()
        seed.set_subtarget(index, enabled)
        with torch.no_grad():  # keep what the block learned (enabling re-zeroes it)
            seed.up[index].weight.copy_(kept)
    return seed


def block_term(seed: LoraLadderSeed, index: int, x: torch.Tensor) -> torch.Tensor:
    """What block ``index`` adds: ``B_i A_i x``."""
    with torch.no_grad():
        return x @ seed.down[index].weight.T @ seed.up[index].weight.T


def test_the_family_declares_four_rank_blocks():
    assert (SUBTARGETS.kind, SUBTARGETS.max_count) == ("lora_rank_block", 4)
    assert SEED_FAMILY.subtargets is SUBTARGETS
    seed = LoraLadderSeed(CHANNELS)
    assert (seed.subtarget_kind, seed.subtarget_count) == ("lora_rank_block", 4)
    assert seed.subtarget_mask.dtype == torch.bool and seed.subtarget_mask.tolist() == [True, False, False, False]
    assert seed.subtarget_importance().tolist() == [0.0] * 4
    with pytest.raises(IndexError, match="lora_ladder subtarget index 4 is outside 0..3"):
        seed.set_subtarget(4, True)
    with pytest.raises(ValueError, match="needs 4 entries, got 2"):
        seed.subtarget_effective_params([True, False])


@pytest.mark.parametrize("mask", [(True, False, True, False), (False, True, False, True), (False, False, False, True),
                                  (True, True, False, True), (True,) * 4, (False,) * 4])
def test_any_mask_adds_exactly_the_enabled_blocks(mask):
    seed = seed_with_blocks(mask)
    x = torch.randn(2, 5, CHANNELS)
    expected = x + sum((block_term(seed, i, x) for i, on in enumerate(mask) if on), torch.zeros_like(x))
    torch.testing.assert_close(seed(x), expected, atol=1e-6, rtol=1e-5)
    widths = [high - low for low, high in zip(RANKS, RANKS[1:])]
    assert seed.rank == sum(w for w, on in zip(widths, mask) if on)
    assert seed.internal_level == sum(mask)
    assert seed.subtarget_effective_params(mask) == 2 * CHANNELS * seed.rank


def test_a_disabled_block_below_the_top_is_inert():
    seed = seed_with_blocks((True, False, True, False)).train()
    x = torch.randn(2, 5, CHANNELS)
    out = seed(x)
    out.square().sum().backward()
    assert not seed.down[1].weight.grad.any() and not seed.up[1].weight.grad.any()
    assert seed.down[3].weight.grad is None and seed.up[3].weight.grad is None  # above the top: not run
    assert bool(seed.up[2].weight.grad.abs().sum() > 0)
    with torch.no_grad():
        seed.down[1].weight.normal_(std=5.0)
        seed.up[1].weight.normal_(std=5.0)
        torch.testing.assert_close(seed(x), out)


def test_enabling_a_block_enters_at_zero_and_the_ladder_agrees():
    seed = seed_with_blocks((True, False, False, True))
    x = torch.randn(2, 5, CHANNELS)
    before = seed(x)
    seed.set_subtarget(1, True)
    torch.testing.assert_close(seed(x), before)
    assert not seed.up[1].weight.any() and bool(seed.up[3].weight.any())
    seed.set_subtarget(1, True)  # already enabled: nothing changes
    seed.set_internal_level(4)  # enables the lowest disabled block (2)
    assert seed.subtarget_mask.tolist() == [True] * 4 and not seed.up[2].weight.any()
    seed.set_subtarget(0, False)
    seed.set_internal_level(1)  # disables the highest enabled blocks
    assert seed.subtarget_mask.tolist() == [False, True, False, False] and seed.rank == 4
    for level in range(5):
        assert seed.internal_effective_params(level) == seed.subtarget_effective_params([i < level for i in range(4)])


def test_importance_tracks_each_enabled_blocks_contribution_in_training():
    seed = seed_with_blocks((True, False, True, False))
    x = torch.randn(IMPORTANCE_SAMPLE + 3, 5, CHANNELS)
    seed.eval()
    seed(x)
    assert seed.subtarget_importance().tolist() == [0.0] * 4  # eval forwards measure nothing
    seed.train()
    seed(x)
    importance = seed.subtarget_importance()
    sample = x[:IMPORTANCE_SAMPLE]
    for index in (0, 2):
        torch.testing.assert_close(importance[index], block_term(seed, index, sample).norm(dim=-1).mean())
    assert importance[1] == 0 and importance[3] == 0
    first = importance.clone()
    seed.set_subtarget(2, False)
    seed(torch.randn(x.shape))
    assert importance[2] == first[2] and importance[0] != first[0]


def test_the_mask_round_trips_through_the_state_dict():
    source = seed_with_blocks((False, True, False, True))
    target = LoraLadderSeed(CHANNELS)
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 3, CHANNELS)
    assert target.subtarget_mask.tolist() == [False, True, False, True] and target.rank == 20
    torch.testing.assert_close(target(x), source(x))


@pytest.mark.parametrize("channels", [1, 8, 32])
def test_the_family_passes_the_subtarget_kit(channels):
    check_subtarget_family(SEED_FAMILY, channels=channels)


def test_a_slot_switches_rank_blocks_and_charges_rent_on_the_blocks_in_use():
    events: list = []
    slot = slot_with_a_lora_ladder(events)
    slot.tick()  # GERMINATED -> TRAINING: a live seed
    assert slot.enable_subtarget(2).success and slot.disable_subtarget(0).success  # blocks 2 alone: ranks [8, 16)
    assert not slot.enable_subtarget(2).success  # already enabled
    report = slot.report()
    assert (report.subtarget_kind, report.subtarget_count, report.subtarget_active_mask) == (
        "lora_rank_block", 4, (False, False, True, False))
    assert (report.internal_level, slot.ladder.rank) == (1, 8)
    assert slot.internal_effective_params == 2 * CHANNELS * 8 == slot.seed_params
    changes = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_SUBTARGET_CHANGED]
    assert [(c.subtarget_idx, c.enabled, c.subtarget_active_count, c.internal_effective_params) for c in changes] == [
        (2, True, 2, 2 * CHANNELS * 12), (0, False, 1, 2 * CHANNELS * 8),
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks that nothing syncs with the host")
def test_on_a_gpu_block_switches_forwards_and_importance_never_sync_with_the_host():
    seed = seed_with_blocks((True,) * 4).cuda().train()
    x = torch.randn(4, 9, CHANNELS, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for mask in [(True, False, True, False), (False, True, True, True), (True,) * 4]:
            for index, enabled in enumerate(mask):
                seed.set_subtarget(index, enabled)
            seed(x).square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert seed.subtarget_importance().device.type == "cuda"
