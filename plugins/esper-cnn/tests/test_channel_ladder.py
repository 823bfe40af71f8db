"""channel_ladder: the grouping rule, level k runs the first k channel groups, growth without a jump, a frozen fossil."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_core.config import parse_config
from esper_core.errors import ConfigError
from esper_core.kasmina import LifecycleSettings, MorphogeneticModel, count_parameters
from esper_core.leyline import AlphaTarget, FactoredAction, LifecycleOp, SeedStage, SlotConfig, TelemetryEventType
from esper_core.testing import check_seed_family, registered_records, task_info, toy_plugin_manager, toy_run_data

from esper_cnn import plugin
from esper_cnn.channel_ladder import (
    CHANNEL_LADDER,
    ChannelLadderConfig,
    ChannelLadderSeed,
    build_channel_ladder,
    channel_group_bounds,
)
from esper_cnn.host import CNNHostConfig, build_cnn_host
from esper_cnn.seeds import conv_bn_relu, zero_projection

FAMILY = registered_records(plugin, "seed_families")["channel_ladder"]


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 2048), group_size=st.integers(1, 256))
def test_the_grouping_rule_covers_every_channel_once_in_order(total: int, group_size: int) -> None:
    bounds = channel_group_bounds(total, group_size)
    assert bounds == channel_group_bounds(total, group_size)  # pure arithmetic: the same on every call
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))  # contiguous, in order
    sizes = [stop - start for start, stop in bounds]
    assert all(size == group_size for size in sizes[:-1])
    assert 1 <= sizes[-1] <= group_size
    assert len(bounds) == -(-total // group_size)


def test_a_count_the_group_size_does_not_divide_gets_a_smaller_last_group() -> None:
    assert channel_group_bounds(40, 16) == ((0, 16), (16, 32), (32, 40))
    assert channel_group_bounds(64, 16) == ((0, 16), (16, 32), (32, 48), (48, 64))
    with pytest.raises(ValueError, match="at least one channel"):
        channel_group_bounds(0, 16)
    with pytest.raises(ValueError, match="group size must be >= 1"):
        channel_group_bounds(8, 0)


def test_config_defaults_and_the_allowed_hidden_width() -> None:
    assert ChannelLadderConfig().hidden_width == 64
    assert ChannelLadderConfig(group_size=8).hidden_width == 32
    assert ChannelLadderConfig(group_size=16, hidden_channels=49).hidden_width == 49
    for bad in (48, 65):
        with pytest.raises(ValueError, match="hidden_channels must be between 49 and 64 so that group_size 16 gives exactly 4 groups"):
            ChannelLadderConfig(group_size=16, hidden_channels=bad)
    with pytest.raises(ValueError, match="group_size"):
        ChannelLadderConfig(group_size=0)


def test_the_config_loader_names_a_bad_hidden_width(tmp_path) -> None:
    data = toy_run_data(tmp_path, morphogenesis={"seed_families": ["channel_ladder"]},
                        seed_families={"channel_ladder": {"group_size": 4, "hidden_channels": 20}})
    with pytest.raises(ConfigError, match=r"\[seed_families.channel_ladder\] hidden_channels: must be between 13 and 16"):
        parse_config(data, toy_plugin_manager(plugin))


@pytest.mark.parametrize("channels", [3, 8, 32])
@pytest.mark.parametrize("config", [ChannelLadderConfig(group_size=4), ChannelLadderConfig(group_size=5, hidden_channels=17)])
def test_channel_ladder_passes_the_conformance_kit(channels: int, config: ChannelLadderConfig) -> None:
    check_seed_family(FAMILY, channels=channels, config=config)


@pytest.mark.parametrize("hidden", [16, 13])
def test_parameters_in_use_count_the_active_slices(hidden: int) -> None:
    seed = ChannelLadderSeed(8, group_size=4, hidden_channels=hidden)
    assert (seed.internal_kind, seed.internal_level, seed.internal_max_level) == ("channel_groups", 1, 4)
    assert seed.internal_group_size == 4
    widths = [0] + [stop for _, stop in seed.groups]
    for level, width in enumerate(widths):
        expected = 0 if width == 0 else width * 8 * 9 + 2 * width + 8 * width + 8
        assert seed.internal_effective_params(level) == expected
    assert seed.internal_effective_params(4) == count_parameters(seed)


def test_level_k_computes_a_fixed_seed_of_width_h_k() -> None:
    """Level k is exactly the same structure built at hidden width h_k (no ladder), on the shared weights."""
    torch.manual_seed(0)
    seed = ChannelLadderSeed(8, group_size=4)
    seed.set_internal_level(4)
    torch.nn.init.normal_(seed.projection.weight)
    torch.nn.init.normal_(seed.projection.bias)
    x = torch.randn(3, 8, 6, 6)
    seed.train()
    seed(x)  # one training step moves the running statistics of all 16 channels
    for level in (1, 2, 3):
        seed.set_internal_level(level)
        torch.nn.init.normal_(seed.projection.weight)
        width = 4 * level
        fixed = torch.nn.Sequential(conv_bn_relu(8, width, 3), zero_projection(width, 8))
        with torch.no_grad():
            fixed[0][0].weight.copy_(seed.conv.weight[:width])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(fixed[0][1], name).copy_(getattr(seed.norm, name)[:width])
            fixed[1].weight.copy_(seed.projection.weight[:, :width])
            fixed[1].bias.copy_(seed.projection.bias)
        for mode in (True, False):
            seed.train(mode)
            fixed.train(mode)
            torch.testing.assert_close(seed(x), x + fixed(x))


def test_training_updates_only_the_active_running_statistics_in_place() -> None:
    torch.manual_seed(0)
    seed = ChannelLadderSeed(8, group_size=4).train()
    seed.set_internal_level(2)
    running_mean = seed.norm.running_mean
    seed(torch.randn(4, 8, 5, 5) + 1.0)
    assert seed.norm.running_mean is running_mean  # the buffer itself, through views
    assert bool((running_mean[:8] != 0).all()) and bool((running_mean[8:] == 0).all())
    assert bool((seed.norm.running_var[8:] == 1).all()) and int(seed.norm.num_batches_tracked) == 1


def test_only_the_active_groups_learn_and_inactive_ones_are_inert() -> None:
    torch.manual_seed(0)
    seed = ChannelLadderSeed(8, group_size=4).train()
    seed.set_internal_level(2)
    torch.nn.init.normal_(seed.projection.weight)
    x = torch.randn(2, 8, 6, 6)
    out = seed(x)
    out.square().sum().backward()
    assert bool(seed.conv.weight.grad[:8].abs().sum() > 0) and not bool(seed.conv.weight.grad[8:].any())
    assert not bool(seed.projection.weight.grad[:, 8:].any()) and not bool(seed.norm.weight.grad[8:].any())
    with torch.no_grad():
        seed.conv.weight[8:].normal_(std=5.0)
        seed.norm.weight[8:].normal_(std=5.0)
        seed.projection.weight[:, 8:].normal_(std=5.0)
        torch.testing.assert_close(seed(x), out)


def test_growing_zeroes_only_the_entering_groups_projection() -> None:
    torch.manual_seed(1)
    seed = ChannelLadderSeed(8, group_size=4).eval()
    torch.nn.init.normal_(seed.projection.weight)
    torch.nn.init.normal_(seed.projection.bias)
    conv_before = seed.conv.weight.detach().clone()
    x = torch.randn(2, 8, 6, 6)
    at_one = seed(x)
    seed.set_internal_level(3)  # enables groups 2 and 3
    torch.testing.assert_close(seed(x), at_one)
    assert bool(seed.projection.weight[:, :4].abs().sum() > 0) and not bool(seed.projection.weight[:, 4:12].any())
    assert bool(seed.projection.weight[:, 12:].abs().sum() > 0)  # group 4 stays off and untouched
    assert torch.equal(seed.conv.weight, conv_before)  # the conv keeps what it learned
    torch.nn.init.normal_(seed.projection.weight)
    at_three = seed(x)
    seed.set_internal_level(2)
    assert not torch.allclose(seed(x), at_three)
    seed.set_internal_level(0)
    assert torch.equal(seed(x), x)
    seed.set_internal_level(1)  # 0 -> 1 also zeroes the bias
    assert torch.equal(seed(x), x)
    with pytest.raises(ValueError, match="level 5 is outside 0..4"):
        seed.set_internal_level(5)


def test_level_changes_allocate_nothing() -> None:
    seed = ChannelLadderSeed(8, group_size=4)
    before = [(name, p.data_ptr(), p.shape) for name, p in seed.named_parameters()]
    for level in (4, 0, 2, 3, 1):
        seed.set_internal_level(level)
        seed(torch.randn(1, 8, 3, 3))
    assert [(name, p.data_ptr(), p.shape) for name, p in seed.named_parameters()] == before


@pytest.mark.parametrize("weights_channels_last", [False, True])
def test_channels_last_is_kept_at_every_level(weights_channels_last: bool) -> None:
    torch.manual_seed(0)
    seed = ChannelLadderSeed(8, group_size=4)
    if weights_channels_last:
        seed = seed.to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 6, 6)
    x_last = x.to(memory_format=torch.channels_last)
    for level in range(5):
        seed.set_internal_level(level)
        torch.nn.init.normal_(seed.projection.weight)
        for mode in (True, False):
            seed.train(mode)
            out = seed(x_last)
            assert out.is_contiguous(memory_format=torch.channels_last), (level, mode)
            assert seed(x).is_contiguous(), (level, mode)
            torch.testing.assert_close(out, seed(x))


def test_builder_checks_the_request() -> None:
    with pytest.raises(ValueError, match="topology 'image'"):
        build_channel_ladder(8, "sequence", ChannelLadderConfig())
    seed = build_channel_ladder(8, "image", ChannelLadderConfig(group_size=2))
    assert seed.groups == ((0, 2), (2, 4), (4, 6), (6, 8)) and CHANNEL_LADDER.initial_level == seed.internal_level


TINY_DIGITS = task_info(name="digits", input_shape=(1, 8, 8), train_size=32, val_size=32)


def ladder_model(events: list) -> MorphogeneticModel:
    torch.manual_seed(0)
    host = build_cnn_host(CNNHostConfig(preset="tiny"), TINY_DIGITS)
    config = ChannelLadderConfig(group_size=4)
    return MorphogeneticModel(
        host, SlotConfig.from_specs(host.injection_specs()), topology="image", seed_families=["channel_ladder"],
        build_seed=lambda name, channels: build_channel_ladder(channels, "image", config),
        settings=LifecycleSettings(embargo_epochs=0, min_training_epochs=1), max_seeds=1, emit=events.append,
    )


def test_in_a_slot_the_ladder_grows_reports_groups_and_freezes_once_fossilized() -> None:
    events: list = []
    model = ladder_model(events)
    germinate = FactoredAction(op=LifecycleOp.GERMINATE, slot=0, blueprint=0, alpha_target=AlphaTarget.FULL)
    assert model.apply(germinate, score_now=0.0).success
    slot = model.slots[model.slot_ids[0]]
    assert model.apply(FactoredAction(op=LifecycleOp.GROW_INTERNAL, slot=0), score_now=0.0).success
    report = slot.report()
    assert (report.internal_kind, report.internal_level, report.internal_group_size, report.internal_active_groups) == (
        "channel_groups", 2, 4, 2)
    assert report.internal_effective_params == slot.seed.internal_effective_params(2) < report.built_params
    slot._set_alpha(1.0)
    slot.stage = SeedStage.HOLDING  # direct state: fossilize without running a blend
    assert model.apply(FactoredAction(op=LifecycleOp.FOSSILIZE, slot=0), score_now=0.0).success
    for op in (LifecycleOp.GROW_INTERNAL, LifecycleOp.SHRINK_INTERNAL):
        result = model.apply(FactoredAction(op=op, slot=0), score_now=0.0)
        assert not result.success and "needs a live seed" in result.reason
    assert slot.seed.internal_level == 2 and slot.report().internal_active_groups == 2
    (changed,) = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED]
    (fossilized,) = [e.payload for e in events if e.event_type is TelemetryEventType.SEED_FOSSILIZED]
    assert (changed.internal_group_size, changed.internal_active_groups) == (4, 2)
    assert (fossilized.internal_level, fossilized.internal_group_size, fossilized.internal_active_groups) == (2, 4, 2)


def test_two_builds_under_one_seed_are_identical() -> None:
    def built() -> dict[str, torch.Tensor]:
        torch.manual_seed(11)
        return build_channel_ladder(8, "image", ChannelLadderConfig(group_size=4)).state_dict()

    first, second = built(), built()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
