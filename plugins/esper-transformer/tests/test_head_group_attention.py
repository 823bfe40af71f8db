"""head_group_attention: grouped causal attention, each head group a subtarget (additive, enters at zero, inert when off)."""

from __future__ import annotations

import pytest
import torch

from esper_core.kasmina import count_parameters
from esper_core.testing import check_subtarget_family, registered_records

from esper_transformer import plugin
from esper_transformer.head_groups import (
    IMPORTANCE_SAMPLE,
    HeadGroupAttentionConfig,
    HeadGroupAttentionSeed,
    build_head_group_attention,
)
from esper_transformer.seeds import CausalAttentionSeed

FAMILY = registered_records(plugin, "seed_families")["head_group_attention"]
CHANNELS = 16


def trained(mask: tuple[bool, ...] | None = None, *, n_heads: int = 8, heads_per_group: int = 2) -> HeadGroupAttentionSeed:
    """A seed with every weight non-zero (as after training), then set to ``mask`` keeping the learned projection."""
    torch.manual_seed(0)
    seed = HeadGroupAttentionSeed(CHANNELS, n_heads, heads_per_group)
    with torch.no_grad():
        for parameter in seed.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    if mask is not None:
        set_mask(seed, mask)
    return seed


def set_mask(seed: HeadGroupAttentionSeed, mask: tuple[bool, ...]) -> None:
    kept = seed.proj.weight.detach().clone()
    for index, enabled in enumerate(mask):
        seed.set_subtarget(index, enabled)
    with torch.no_grad():
        seed.proj.weight.copy_(kept)


def test_the_family_declares_its_inventory_and_config() -> None:
    assert (FAMILY.subtargets.kind, FAMILY.subtargets.max_count) == ("attn_head_group", 8)
    assert FAMILY.ladder is None and FAMILY.config_class is HeadGroupAttentionConfig
    seed = build_head_group_attention(CHANNELS, "sequence", HeadGroupAttentionConfig())
    assert (seed.subtarget_kind, seed.subtarget_count, seed.n_heads, seed.head_dim) == ("attn_head_group", 4, 8, 2)
    assert seed.subtarget_mask.dtype == torch.bool and seed.subtarget_mask.tolist() == [True] * 4
    assert seed.subtarget_importance().tolist() == [0.0] * 4
    assert HeadGroupAttentionConfig(n_heads=16, heads_per_group=2).n_groups == 8
    with pytest.raises(ValueError, match="heads_per_group must divide n_heads 8, got 3"):
        HeadGroupAttentionConfig(heads_per_group=3)
    with pytest.raises(ValueError, match="heads_per_group must make at most 8 groups of n_heads 16 .at least 2 heads per group., got 1"):
        HeadGroupAttentionConfig(n_heads=16, heads_per_group=1)
    with pytest.raises(ValueError, match="n_heads 8 does not divide the slot's 12 channels; set .seed_families.head_group_attention. n_heads"):
        build_head_group_attention(12, "sequence", HeadGroupAttentionConfig())
    with pytest.raises(ValueError, match="supports topology 'sequence', not 'image'"):
        build_head_group_attention(16, "image", HeadGroupAttentionConfig())
    with pytest.raises(IndexError, match="head_group_attention subtarget index 4 is outside 0..3"):
        seed.set_subtarget(4, False)


def test_with_every_group_on_it_is_causal_attention_without_the_output_bias() -> None:
    seed = trained()
    reference = CausalAttentionSeed(CHANNELS, 8)
    with torch.no_grad():
        reference.norm.load_state_dict(seed.norm.state_dict())
        reference.qkv.load_state_dict(seed.qkv.state_dict())
        reference.proj.weight.copy_(seed.proj.weight)
        reference.proj.bias.zero_()
    x = torch.randn(2, 7, CHANNELS)
    torch.testing.assert_close(seed(x), reference(x))


@pytest.mark.parametrize("mask", [(True, False, True, False), (False, True, False, True), (False, False, True, False),
                                  (True, True, False, True), (True, True, False, False)])
def test_each_group_adds_its_own_term(mask: tuple[bool, ...]) -> None:
    seed = trained()
    x = torch.randn(3, 6, CHANNELS)
    with torch.no_grad():
        full = seed(x)
        alone = []
        for index in range(4):
            set_mask(seed, tuple(g == index for g in range(4)))
            alone.append(seed(x) - x)
        set_mask(seed, (True,) * 4)
        torch.testing.assert_close(sum(alone), full - x, atol=1e-5, rtol=1e-5)
        set_mask(seed, mask)
        torch.testing.assert_close(seed(x), x + sum(t for t, on in zip(alone, mask) if on), atol=1e-5, rtol=1e-5)
        set_mask(seed, (False,) * 4)
        assert torch.equal(seed(x), x)


def test_a_disabled_group_is_inert_and_gets_no_gradient() -> None:
    seed = trained((True, False, True, False)).train()
    x = torch.randn(2, 5, CHANNELS)
    out = seed(x)
    out.square().sum().backward()
    rows = seed.qkv.weight.grad.view(3, 8, 2, CHANNELS)
    assert not rows[:, 2:4].any() and not rows[:, 6:].any()  # group 1 (heads 2, 3) and group 3 (heads 6, 7)
    assert bool(rows[:, 4:6].abs().sum() > 0) and bool(rows[:, :2].abs().sum() > 0)
    assert not seed.proj.weight.grad[:, 4:8].any() and not seed.qkv.bias.grad.view(3, 8, 2)[:, 2:4].any()
    with torch.no_grad():
        seed.qkv.weight.view(3, 8, 2, CHANNELS)[:, 2:4].normal_(std=5.0)
        seed.proj.weight[:, 4:8].normal_(std=5.0)
        torch.testing.assert_close(seed(x), out)


def test_enabling_a_group_enters_at_zero() -> None:
    seed = trained((True, False, True, True)).eval()
    x = torch.randn(2, 5, CHANNELS)
    before = seed(x)
    kept = seed.proj.weight.detach().clone()
    seed.set_subtarget(1, True)
    torch.testing.assert_close(seed(x), before)
    assert not seed.proj.weight[:, 4:8].any() and torch.equal(seed.proj.weight[:, 8:], kept[:, 8:])
    seed.set_subtarget(1, True)  # already enabled: nothing changes
    seed.set_subtarget(0, True)
    assert torch.equal(seed.proj.weight[:, :4], kept[:, :4])


def test_it_stays_causal_and_batch_independent_under_a_mask() -> None:
    seed = trained((False, True, False, True)).eval()
    x = torch.randn(3, 7, CHANNELS)
    with torch.no_grad():
        base = seed(x)
        for t in range(6):
            changed = x.clone()
            changed[:, t + 1] += 1.0
            torch.testing.assert_close(seed(changed)[:, : t + 1], base[:, : t + 1])
        torch.testing.assert_close(torch.cat([seed(x[i : i + 1]) for i in range(3)]), base)


def test_parameters_in_use_follow_the_mask() -> None:
    seed = HeadGroupAttentionSeed(CHANNELS, 8, 2)
    group = 3 * 4 * (CHANNELS + 1) + CHANNELS * 4  # QKV rows and bias of 2 heads of width 2, projection columns
    assert seed.subtarget_effective_params((False,) * 4) == 0
    assert seed.subtarget_effective_params((False, True, False, False)) == 2 * CHANNELS + group
    assert seed.subtarget_effective_params((True,) * 4) == count_parameters(seed)


def test_importance_tracks_each_enabled_groups_contribution_in_training() -> None:
    seed = trained((True, False, True, False))
    x = torch.randn(IMPORTANCE_SAMPLE + 2, 5, CHANNELS)
    seed.eval()
    with torch.no_grad():
        terms = []
        for index in range(4):
            set_mask(seed, tuple(g == index for g in range(4)))
            terms.append((seed(x) - x)[:IMPORTANCE_SAMPLE].norm(dim=-1).mean())
        set_mask(seed, (True, False, True, False))
    assert seed.subtarget_importance().tolist() == [0.0] * 4  # eval forwards measure nothing
    seed.train()
    seed(x)
    importance = seed.subtarget_importance()
    torch.testing.assert_close(importance[[0, 2]], torch.stack([terms[0], terms[2]]), atol=1e-5, rtol=1e-4)
    assert importance[1] == 0 and importance[3] == 0
    first = importance.clone()
    seed.set_subtarget(2, False)
    seed(torch.randn(x.shape))
    assert importance[2] == first[2] and importance[0] != first[0]


def test_the_mask_round_trips_through_the_state_dict() -> None:
    source = trained((False, True, True, False)).eval()
    target = HeadGroupAttentionSeed(CHANNELS, 8, 2).eval()
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 4, CHANNELS)
    assert target.subtarget_mask.tolist() == [False, True, True, False]
    torch.testing.assert_close(target(x), source(x))


def test_mask_changes_allocate_nothing() -> None:
    seed = trained()
    before = [(name, p.data_ptr()) for name, p in seed.named_parameters()]
    buffer = seed.subtarget_mask
    for mask in [(True, False, True, False), (False,) * 4, (False, False, False, True), (True,) * 4]:
        set_mask(seed, mask)
        seed(torch.randn(1, 3, CHANNELS))
    assert [(name, p.data_ptr()) for name, p in seed.named_parameters()] == before and seed.subtarget_mask is buffer


@pytest.mark.parametrize("n_heads, heads_per_group", [(8, 2), (8, 1), (4, 4), (16, 2)])
def test_head_group_attention_passes_the_subtarget_kit(n_heads: int, heads_per_group: int) -> None:
    check_subtarget_family(FAMILY, channels=32, config=HeadGroupAttentionConfig(n_heads=n_heads, heads_per_group=heads_per_group))


def test_a_slot_switches_head_groups_and_a_fossil_freezes_the_mask() -> None:
    from esper_core.kasmina import LifecycleSettings, SeedSlot
    from esper_core.leyline import SEGMENT_BOUNDARY, AlphaCurve, BlendStyle, InjectionSpec, SeedStage, TelemetryEventType

    events: list = []
    spec = InjectionSpec(slot_id="r0c0", channels=CHANNELS, surface=SEGMENT_BOUNDARY, order=0, host_block=0)
    slot = SeedSlot(
        spec, topology="sequence", settings=LifecycleSettings(embargo_epochs=1, min_training_epochs=1),
        build_seed=lambda family, channels: FAMILY.build(channels, "sequence", FAMILY.config_class()), emit=events.append,
    )
    assert slot.germinate(seed_id="seed-0", seed_family="head_group_attention", style=BlendStyle.ADD, blend_epochs=1,
                          alpha_target=1.0, alpha_curve=AlphaCurve.LINEAR, score_now=None).success
    slot.tick()  # GERMINATED -> TRAINING
    assert slot.disable_subtarget(3).success and slot.disable_subtarget(1).success
    assert not slot.disable_subtarget(1).success and not slot.enable_subtarget(4).success
    report = slot.report()
    assert (report.subtarget_kind, report.subtarget_count, report.subtarget_active_mask) == (
        "attn_head_group", 4, (True, False, True, False))
    assert report.internal_kind is None  # no ladder
    seed = slot.seed
    assert slot.internal_effective_params == seed.subtarget_effective_params((True, False, True, False)) + count_parameters(slot.gate)
    changes = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_SUBTARGET_CHANGED]
    assert [(c.subtarget_idx, c.enabled, c.subtarget_active_count) for c in changes] == [(3, False, 3), (1, False, 2)]
    slot.tick()
    assert slot.advance().success
    for _ in range(100):
        if slot.stage is not SeedStage.BLENDING:
            break
        slot.tick()
    assert slot.fossilize().success
    assert not slot.enable_subtarget(1).success and seed.subtarget_mask.tolist() == [True, False, True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks that nothing syncs with the host")
def test_on_a_gpu_switches_forwards_and_importance_never_sync_with_the_host() -> None:
    seed = trained().cuda().train()
    x = torch.randn(4, 9, CHANNELS, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for mask in [(True, False, True, False), (False, True, True, True), (True,) * 4]:
            set_mask(seed, mask)
            seed(x).square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert seed.subtarget_importance().device.type == "cuda"
