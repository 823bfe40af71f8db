"""conv_ladder: level k runs k conv stages; level 1 is conv_light, level 2 has conv_heavy's parameter count."""

from __future__ import annotations

import torch

from esper_cnn.ladder import CONV_LADDER, ConvLadderSeed
from esper_cnn.seeds import build_conv_heavy, build_conv_light
from esper_core.registry import NoOptions


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_capacity_per_level_tracks_the_fixed_conv_seeds():
    seed = ConvLadderSeed(32)
    assert seed.internal_level == CONV_LADDER.initial_level == 1
    assert seed.internal_effective_params(0) == 0
    assert seed.internal_effective_params(1) == count(build_conv_light(32, "image", NoOptions()))
    assert seed.internal_effective_params(2) == count(build_conv_heavy(32, "image", NoOptions()))
    assert seed.internal_effective_params(4) == count(seed)


def test_level_one_computes_conv_light():
    torch.manual_seed(0)
    seed = ConvLadderSeed(8).eval()
    light = build_conv_light(8, "image", NoOptions()).eval()
    light.branch[0].load_state_dict(seed.stages[0].state_dict())
    torch.nn.init.normal_(seed.projection.weight)
    light.branch[1].load_state_dict(seed.projection.state_dict())
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(seed(x), light(x))


def test_only_the_active_stages_run_and_learn():
    torch.manual_seed(0)
    seed = ConvLadderSeed(8)
    seed.set_internal_level(2)
    torch.nn.init.normal_(seed.projection.weight)
    seed(torch.randn(2, 8, 6, 6)).square().sum().backward()
    assert all(p.grad is not None for p in seed.stages[0].parameters())
    assert bool(seed.gate(2).weight.grad.abs().sum() > 0)  # a zero gate still learns
    assert all(p.grad is None for p in seed.stages[2].parameters())
    assert all(p.grad is None for p in seed.stages[3].parameters())


def test_growing_regates_only_the_newly_enabled_stages():
    seed = ConvLadderSeed(8)
    torch.nn.init.normal_(seed.projection.weight)
    for level in (2, 3, 4):
        torch.nn.init.normal_(seed.gate(level).weight)
    seed.set_internal_level(3)  # enables stages 2 and 3: their gates are zeroed, the projection is kept
    assert bool(seed.projection.weight.abs().sum() > 0)
    assert not bool(seed.gate(2).weight.abs().sum() > 0) and not bool(seed.gate(3).weight.abs().sum() > 0)
    assert bool(seed.gate(4).weight.abs().sum() > 0)  # stage 4 stays off and untouched
    seed.set_internal_level(0)
    seed.set_internal_level(1)  # 0 -> 1 re-zeroes the projection
    assert not bool(seed.projection.weight.abs().sum() > 0)


def test_growth_is_continuous_and_shrinking_removes_the_top_stage():
    torch.manual_seed(1)
    seed = ConvLadderSeed(8).eval()
    torch.nn.init.normal_(seed.projection.weight)
    x = torch.randn(2, 8, 6, 6)
    at_one = seed(x)
    seed.set_internal_level(2)
    torch.testing.assert_close(seed(x), at_one)
    torch.nn.init.normal_(seed.gate(2).weight)
    assert not torch.allclose(seed(x), at_one)
    seed.set_internal_level(1)
    torch.testing.assert_close(seed(x), at_one)
