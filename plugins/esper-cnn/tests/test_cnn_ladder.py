"""conv_ladder: level k runs k conv stages; level 1 matches conv_light, level 2 is about conv_heavy."""

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
    assert seed.internal_effective_params(1) == count(build_conv_light(32, "image", NoOptions()))
    heavy = count(build_conv_heavy(32, "image", NoOptions()))
    assert heavy < seed.internal_effective_params(2) <= 1.1 * heavy  # one extra 1x1 projection
    assert seed.internal_effective_params(4) == count(seed)


def test_only_the_active_stages_run_and_learn():
    torch.manual_seed(0)
    seed = ConvLadderSeed(8)
    seed.set_internal_level(2)
    for projection in seed.projections:
        torch.nn.init.normal_(projection.weight)
    seed(torch.randn(2, 8, 6, 6)).square().sum().backward()
    assert all(p.grad is not None for p in seed.stages[1].parameters())
    assert all(p.grad is None for p in seed.stages[2].parameters())
    assert all(p.grad is None for p in seed.stages[3].parameters())


def test_growing_rezeroes_only_the_newly_enabled_projection():
    seed = ConvLadderSeed(8)
    for projection in seed.projections:
        torch.nn.init.normal_(projection.weight)
    seed.set_internal_level(3)
    assert bool(seed.projections[0].weight.abs().sum() > 0)
    assert not bool(seed.projections[1].weight.abs().sum() > 0) and not bool(seed.projections[2].weight.abs().sum() > 0)
    seed.set_internal_level(1)  # shrinking keeps what the disabled stages learned
    assert not bool(seed.projections[3].weight.abs().sum() == 0)
