"""channel_ladder's subtarget inventory: any mask of channel groups, additive groups, inert disabled groups, importance."""

from __future__ import annotations

import pytest
import torch

from esper_core.kasmina import count_parameters
from esper_core.registry import SubtargetSpec
from esper_core.testing import check_ladder_family, check_subtarget_family, registered_records

from esper_cnn import plugin
from esper_cnn.channel_ladder import IMPORTANCE_EVERY, IMPORTANCE_SAMPLE, ChannelLadderConfig, ChannelLadderSeed

FAMILY = registered_records(plugin, "seed_families")["channel_ladder"]


def seed_with(mask: tuple[bool, ...], *, hidden: int | None = None, seed: int = 0) -> ChannelLadderSeed:
    """A channel_ladder seed (8 channels, groups of 4) with every parameter perturbed, then set to ``mask``."""
    torch.manual_seed(seed)
    module = ChannelLadderSeed(8, group_size=4, hidden_channels=hidden)
    module.set_internal_level(4)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    for index, enabled in enumerate(mask):
        module.set_subtarget(index, enabled)
    return module


def masked(module: ChannelLadderSeed, mask: tuple[bool, ...], x: torch.Tensor) -> torch.Tensor:
    for index, enabled in enumerate(mask):
        saved = module.projection.weight.detach().clone(), module.projection.bias.detach().clone()
        module.set_subtarget(index, enabled)  # enabling zeroes the group's projection: put the learned one back
        with torch.no_grad():
            module.projection.weight.copy_(saved[0])
            module.projection.bias.copy_(saved[1])
    return module(x)


def test_the_inventory_is_four_channel_groups_with_a_prefix_mask_at_birth() -> None:
    module = ChannelLadderSeed(8, group_size=4)
    assert (module.subtarget_kind, module.subtarget_count) == ("cnn_channel_group", 4)
    assert module.subtarget_mask.dtype == torch.bool and module.subtarget_mask.tolist() == [True, False, False, False]
    assert "subtarget_mask" in module.state_dict() and "importance_ema" in module.state_dict()
    assert "_channel_group" not in module.state_dict()  # derived from the groups, not state
    assert module.subtarget_importance().tolist() == [0.0] * 4
    with pytest.raises(IndexError, match="channel_ladder subtarget index 4 is outside 0..3"):
        module.set_subtarget(4, True)
    with pytest.raises(IndexError, match="index -1"):
        module.set_subtarget(-1, False)
    with pytest.raises(ValueError, match="needs 4 entries, got 3"):
        module.subtarget_effective_params((True, True, False))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("hidden", [16, 14])
def test_disabling_a_group_removes_exactly_its_contribution(train: bool, hidden: int) -> None:
    """out(mask) - x is the sum over enabled groups of that group's own term proj[:, g] h_g (+ bias for group 0)."""
    module = seed_with((True,) * 4, hidden=hidden).train(train)
    x = torch.randn(3, 8, 5, 5)
    everything = masked(module, (True,) * 4, x)
    alone = [masked(module, tuple(g == i for g in range(4)), x) - x for i in range(4)]
    torch.testing.assert_close(sum(alone), everything - x, atol=1e-5, rtol=1e-5)
    for mask in [(True, False, True, False), (False, True, False, True), (False, False, True, False), (True, True, False, True)]:
        expected = x + sum(term for term, on in zip(alone, mask) if on)
        torch.testing.assert_close(masked(module, mask, x), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(masked(module, (False,) * 4, x), x)


def test_a_disabled_group_below_the_top_is_inert() -> None:
    module = seed_with((True, False, True, False)).train()
    x = torch.randn(2, 8, 6, 6)
    out = module(x)
    out.square().sum().backward()
    off = slice(4, 8)  # group 1's hidden channels
    assert not module.conv.weight.grad[off].any() and not module.norm.weight.grad[off].any()
    assert not module.projection.weight.grad[:, off].any()
    assert bool(module.conv.weight.grad[:4].abs().sum() > 0) and bool(module.conv.weight.grad[8:12].abs().sum() > 0)
    assert module.conv.weight.grad[12:].abs().sum() == 0  # above the top: not computed
    module.eval()
    reference = module(x)
    with torch.no_grad():
        module.conv.weight[off].normal_(std=5.0)
        module.norm.weight[off].normal_(std=5.0)
        module.norm.bias[off].normal_(std=5.0)
        module.projection.weight[:, off].normal_(std=5.0)
    torch.testing.assert_close(module(x), reference)


def test_group_zero_owns_the_projection_bias() -> None:
    module = seed_with((False, True, False, False)).eval()
    x = torch.randn(2, 8, 4, 4)
    reference = module(x)
    with torch.no_grad():
        module.projection.bias.normal_(std=5.0)
    torch.testing.assert_close(module(x), reference)  # group 0 off: the bias takes no part
    module.set_subtarget(0, True)  # group 0 enters at zero: its columns and the bias are zeroed
    torch.testing.assert_close(module(x), reference)
    assert not module.projection.bias.any() and not module.projection.weight[:, :4].any()


def test_enabling_any_group_enters_at_zero_and_repeating_a_state_changes_nothing() -> None:
    module = seed_with((True, False, False, True)).eval()
    x = torch.randn(2, 8, 4, 4)
    before = module(x)
    weights = module.projection.weight.detach().clone()
    module.set_subtarget(2, True)
    torch.testing.assert_close(module(x), before)
    assert not module.projection.weight[:, 8:12].any()
    assert torch.equal(module.projection.weight[:, :8], weights[:, :8]) and torch.equal(module.projection.weight[:, 12:], weights[:, 12:])
    with torch.no_grad():
        module.projection.weight[:, 8:12].normal_()
    grown = module(x)
    module.set_subtarget(2, True)  # already enabled: nothing is zeroed
    module.set_subtarget(1, False)  # already disabled
    torch.testing.assert_close(module(x), grown)
    assert module.subtarget_mask.tolist() == [True, False, True, True]


def test_the_ladder_and_the_mask_agree() -> None:
    module = seed_with((True, False, True, False))
    assert module.internal_level == 2 and module.active_channels == 12
    module.set_internal_level(3)  # enables the lowest disabled group
    assert module.subtarget_mask.tolist() == [True, True, True, False]
    module.set_subtarget(0, False)
    module.set_internal_level(1)  # disables the highest enabled groups
    assert module.subtarget_mask.tolist() == [False, True, False, False] and module.internal_level == 1
    module.set_internal_level(4)
    assert module.subtarget_mask.tolist() == [True] * 4
    for level in range(5):
        prefix = tuple(g < level for g in range(4))
        assert module.internal_effective_params(level) == module.subtarget_effective_params(prefix)


@pytest.mark.parametrize("hidden", [16, 13])
def test_parameters_in_use_follow_the_mask(hidden: int) -> None:
    module = ChannelLadderSeed(8, group_size=4, hidden_channels=hidden)
    sizes = [stop - start for start, stop in module.groups]
    own = [size * (8 * 9 + 2 + 8) for size in sizes]
    own[0] += 8  # the projection bias
    assert module.subtarget_effective_params((False,) * 4) == 0
    assert module.subtarget_effective_params((False, True, False, True)) == own[1] + own[3]
    assert module.subtarget_effective_params((True,) * 4) == count_parameters(module)


def test_importance_is_each_enabled_groups_contribution_norm_measured_in_training() -> None:
    module = seed_with((True, False, True, False)).train()
    x = torch.randn(IMPORTANCE_SAMPLE + 4, 8, 5, 5)
    module.eval()
    module(x)
    assert module.subtarget_importance().tolist() == [0.0] * 4  # eval forwards measure nothing
    module.train()
    with torch.no_grad():
        terms = []
        for index in range(4):
            snapshot = module.norm.running_mean.clone(), module.norm.running_var.clone(), module.norm.num_batches_tracked.clone()
            alone = (masked(module, tuple(g == index for g in range(4)), x) - x)[:IMPORTANCE_SAMPLE]  # batch statistics of all of x
            module.norm.running_mean.copy_(snapshot[0]), module.norm.running_var.copy_(snapshot[1])
            module.norm.num_batches_tracked.copy_(snapshot[2])
            terms.append(alone.flatten(1).norm(dim=1).mean())
        masked(module, (True, False, True, False), x)
    module.importance_ema.zero_()
    module.importance_seen.zero_()
    module.load_state_dict({**module.state_dict(), "importance_clock": torch.tensor(0)})  # the clock restarts
    module(x)  # the first training forward measures
    importance = module.subtarget_importance()
    assert importance.shape == (4,) and importance.dtype == torch.float32
    torch.testing.assert_close(importance[[0, 2]], torch.stack([terms[0], terms[2]]), atol=1e-5, rtol=1e-4)
    assert importance[1] == 0 and importance[3] == 0  # never ran
    first = importance.clone()
    module.set_subtarget(2, False)
    for _ in range(IMPORTANCE_EVERY - 1):  # the forwards in between measure nothing
        module(torch.randn(x.shape))
    assert torch.equal(importance, first)
    module(torch.randn(x.shape))  # other data, measured
    assert importance[2] == first[2]  # a disabled group keeps its last value
    assert importance[0] != first[0]  # an enabled one moves
    with torch.no_grad():
        module.projection.weight[:, 8:12].zero_()
    module.set_subtarget(2, True)  # its projection re-zeroed: it contributes nothing yet
    for _ in range(80 * IMPORTANCE_EVERY):  # 80 measurements: 0.9 ** 80 < 1e-3
        module(x)
    assert float(importance[2]) < 1e-3 * float(first[2])


def test_the_mask_round_trips_through_the_state_dict() -> None:
    source = seed_with((False, True, False, True)).train()
    x = torch.randn(2, 8, 4, 4)
    source(x)
    source.eval()
    target = ChannelLadderSeed(8, group_size=4).eval()
    target.load_state_dict(source.state_dict())
    assert target.subtarget_mask.tolist() == [False, True, False, True] and target.internal_level == 2
    assert target.active_channels == 16
    torch.testing.assert_close(target(x), source(x))
    assert torch.equal(target.subtarget_importance(), source.subtarget_importance())
    inventory = ("subtarget_mask", "importance_ema", "importance_seen", "importance_clock")
    old = {k: v for k, v in source.state_dict().items() if k not in inventory}
    fresh = ChannelLadderSeed(8, group_size=4)
    fresh.load_state_dict(old)  # a state saved before the inventory: the mask stays as it was
    assert fresh.subtarget_mask.tolist() == [True, False, False, False] and fresh.internal_level == 1


def test_a_restored_state_measures_importance_on_the_same_forwards() -> None:
    """The training-forward count travels with the state, so a resumed seed keeps the measuring rhythm."""
    x = torch.randn(4, 8, 5, 5)
    uninterrupted = seed_with((True, True, False, False)).train()
    resumed_from = seed_with((True, True, False, False)).train()
    for _ in range(IMPORTANCE_EVERY + 2):
        uninterrupted(x)
        resumed_from(x)
    resumed = ChannelLadderSeed(8, group_size=4).train()
    resumed.load_state_dict(resumed_from.state_dict())
    assert int(resumed.importance_clock) == IMPORTANCE_EVERY + 2
    for step in range(2 * IMPORTANCE_EVERY):
        data = torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
        uninterrupted(data)
        resumed(data)
        assert torch.equal(resumed.subtarget_importance(), uninterrupted.subtarget_importance()), step


def test_mask_changes_allocate_nothing_and_keep_channels_last() -> None:
    module = seed_with((True,) * 4)
    before = [(name, p.data_ptr()) for name, p in module.named_parameters()]
    mask_buffer = module.subtarget_mask
    x = torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)
    for mask in [(True, False, True, False), (False, False, False, True), (False, True, True, False), (True,) * 4]:
        for index, enabled in enumerate(mask):
            module.set_subtarget(index, enabled)
        for train in (True, False):
            module.train(train)
            out = module(x)
            assert out.is_contiguous(memory_format=torch.channels_last), mask
            torch.testing.assert_close(out, module(x.contiguous()))
    assert [(name, p.data_ptr()) for name, p in module.named_parameters()] == before
    assert module.subtarget_mask is mask_buffer  # written in place


@pytest.mark.parametrize("config", [ChannelLadderConfig(group_size=4), ChannelLadderConfig(group_size=5, hidden_channels=17)])
def test_channel_ladder_passes_the_subtarget_kit(config: ChannelLadderConfig) -> None:
    assert FAMILY.subtargets == SubtargetSpec(kind="cnn_channel_group", max_count=4)
    check_subtarget_family(FAMILY, channels=8, config=config)
    check_ladder_family(FAMILY, channels=8, config=config)  # the ladder kit, unchanged, on the same family


def test_in_a_slot_the_policy_switches_groups_and_a_fossil_freezes_the_mask() -> None:
    """ENABLE/DISABLE_SUBTARGET through MorphogeneticModel.apply: the mask, the report, the event, the rent."""
    from esper_core.kasmina import LifecycleSettings, MorphogeneticModel
    from esper_core.leyline import AlphaTarget, FactoredAction, LifecycleOp, SeedStage, SlotConfig, TelemetryEventType
    from esper_core.testing import task_info

    from esper_cnn.channel_ladder import build_channel_ladder
    from esper_cnn.host import CNNHostConfig, build_cnn_host

    torch.manual_seed(0)
    host = build_cnn_host(CNNHostConfig(preset="tiny"), task_info(name="digits", input_shape=(1, 8, 8), train_size=32, val_size=32))
    config = ChannelLadderConfig(group_size=4)
    events: list = []
    model = MorphogeneticModel(
        host, SlotConfig.from_specs(host.injection_specs()), topology="image", seed_families=["channel_ladder"],
        build_seed=lambda name, channels: build_channel_ladder(channels, "image", config),
        settings=LifecycleSettings(embargo_epochs=0, min_training_epochs=1), max_seeds=1, emit=events.append,
    )

    def apply(op: LifecycleOp, subtarget: int = 0):
        return model.apply(FactoredAction(op=op, slot=0, subtarget=subtarget), score_now=0.0)

    assert model.apply(FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=0, alpha_target=AlphaTarget.FULL),
                       score_now=0.0).success
    slot = model.slots[model.slot_ids[0]]
    seed = slot.seed
    assert not apply(LifecycleOp.ENABLE_SUBTARGET, 2).success  # a GERMINATED seed is not live yet
    slot.tick()  # gate G0: GERMINATED -> TRAINING
    assert slot.stage is SeedStage.TRAINING
    assert apply(LifecycleOp.ENABLE_SUBTARGET, 2).success  # groups 0 and 2: not a prefix
    assert apply(LifecycleOp.DISABLE_SUBTARGET, 0).success  # group 2 alone
    assert not apply(LifecycleOp.DISABLE_SUBTARGET, 1).success  # already disabled
    report = slot.report()
    assert (report.subtarget_kind, report.subtarget_count, report.subtarget_active_count) == ("cnn_channel_group", 4, 1)
    assert report.subtarget_active_mask == (False, False, True, False)
    assert report.internal_level == 1 == seed.internal_level
    in_use = seed.subtarget_effective_params((False, False, True, False)) + count_parameters(slot.gate)
    assert report.internal_effective_params == in_use < report.built_params  # rent follows the mask
    assert apply(LifecycleOp.GROW_INTERNAL).success  # the lowest disabled group: 0
    assert seed.subtarget_mask.tolist() == [True, False, True, False]
    changes = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_SUBTARGET_CHANGED]
    assert [(c.subtarget_idx, c.enabled, c.subtarget_active_count) for c in changes] == [(2, True, 2), (0, False, 1)]
    slot._set_alpha(1.0)
    slot.stage = SeedStage.HOLDING  # direct state: fossilize without running a blend
    assert apply(LifecycleOp.FOSSILIZE).success
    for op, index in ((LifecycleOp.ENABLE_SUBTARGET, 1), (LifecycleOp.DISABLE_SUBTARGET, 0)):
        assert not apply(op, index).success
    assert seed.subtarget_mask.tolist() == [True, False, True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks that nothing syncs with the host")
def test_on_a_gpu_switches_forwards_and_importance_never_sync_with_the_host() -> None:
    module = seed_with((True,) * 4).cuda().train()
    x = torch.randn(16, 8, 6, 6, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for mask in [(True, False, True, False), (False, True, True, True), (True,) * 4]:
            for index, enabled in enumerate(mask):
                module.set_subtarget(index, enabled)
            for _ in range(IMPORTANCE_EVERY):
                module(x).square().mean().backward()
            module.subtarget_importance()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert module.subtarget_mask.device.type == "cuda" and module.subtarget_importance().device.type == "cuda"
