"""Tests for the esper-cnn seed families: conformance, shapes, small widths and parameter ordering."""

from __future__ import annotations

import attrs
import pytest
import torch

from esper_core.kasmina import count_parameters
from esper_core.testing import check_seed_family, registered_records

from esper_cnn import plugin, seeds

FAMILY_NAMES = ("norm", "attention", "depthwise", "bottleneck", "conv_small", "conv_light", "conv_heavy", "conv_ladder",
                "channel_ladder")


FAMILIES = registered_records(plugin, "seed_families")


def build(name: str, channels: int, **options: int) -> torch.nn.Module:
    family = FAMILIES[name]
    return family.build(channels, "image", attrs.evolve(family.config_class(), **options))


def test_plugin_registers_exactly_the_nine_families() -> None:
    assert sorted(FAMILIES) == sorted(FAMILY_NAMES)
    assert all(family.topologies == ("image",) for family in FAMILIES.values())


@pytest.mark.parametrize("channels", [8, 32])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_seed_family_conforms(name: str, channels: int) -> None:
    check_seed_family(FAMILIES[name], channels=channels)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_seed_is_exactly_identity_at_birth_on_other_resolutions(name: str) -> None:
    torch.manual_seed(3)
    seed = build(name, 16)
    for mode in (True, False):
        seed.train(mode)
        for size in (1, 5, 16):
            x = torch.randn(3, 16, size, size)
            assert torch.equal(seed(x), x)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_seed_handles_batch_of_one_in_eval_mode(name: str) -> None:
    seed = build(name, 8).eval()
    with torch.no_grad():
        for parameter in seed.parameters():
            parameter.add_(0.1)  # move away from birth so the branch contributes
    x = torch.randn(1, 8, 4, 4)
    out = seed(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", [n for n in FAMILY_NAMES if n != "conv_ladder"])  # a ladder's last layer is inactive
def test_zero_initialised_last_layer_gets_gradient_at_birth(name: str) -> None:
    torch.manual_seed(0)
    seed = build(name, 16).train()
    last = [p for p in seed.parameters() if p.requires_grad][-1]
    assert torch.count_nonzero(last) == 0
    x = torch.randn(4, 16, 6, 6)
    ((seed(x) - torch.randn_like(x)) ** 2).mean().backward()
    assert last.grad is not None and last.grad.abs().sum() > 0


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_seed_rejects_sequence_topology(name: str) -> None:
    family = FAMILIES[name]
    with pytest.raises(ValueError, match="topology 'image'"):
        family.build(16, "sequence", family.config_class())


@pytest.mark.parametrize("channels", [2, 3, 8, 16, 64, 128])
def test_conv_seed_parameter_counts_are_ordered(channels: int) -> None:
    small = count_parameters(build("conv_small", channels))
    light = count_parameters(build("conv_light", channels))
    heavy = count_parameters(build("conv_heavy", channels))
    assert small < light < heavy


@pytest.mark.parametrize("name", ["attention", "bottleneck", "conv_small"])
def test_reduction_clamps_hidden_width_to_one(name: str) -> None:
    seed = build(name, 8, reduction=64)
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(seed(x), x)
    widths = [p.shape[0] for p in seed.parameters() if p.dim() > 1]
    assert min(widths) == 1


def test_hidden_width() -> None:
    assert seeds.hidden_width(64, 4) == 16
    assert seeds.hidden_width(8, 16) == 1
    assert seeds.hidden_width(1, 1) == 1


def test_seed_configs_validate_ranges() -> None:
    with pytest.raises(ValueError):
        seeds.AttentionSeedConfig(reduction=0)
    with pytest.raises(ValueError):
        seeds.BottleneckSeedConfig(reduction=0)
    with pytest.raises(ValueError):
        seeds.ConvSmallSeedConfig(reduction=1)


def test_seed_rejects_zero_channels() -> None:
    with pytest.raises(ValueError, match="at least one channel"):
        build("conv_light", 0)
