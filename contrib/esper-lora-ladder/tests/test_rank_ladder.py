"""lora_ladder's own rules: the rank per level, no output jump on growth, inert and gradient-free capacity above the level."""

from __future__ import annotations

import pytest
import torch

from esper_lora_ladder.plugin import RANKS, SEED_FAMILY, LoraLadderSeed

CHANNELS = 48


def trained_seed(level: int) -> LoraLadderSeed:
    """A seed at ``level`` whose weights are all non-zero, as after some training."""
    torch.manual_seed(0)
    seed = LoraLadderSeed(CHANNELS)
    seed.set_internal_level(level)
    with torch.no_grad():
        for parameter in seed.parameters():
            parameter.normal_(0.0, 0.2)
    return seed


def adapter_matrix(seed: LoraLadderSeed) -> torch.Tensor:
    """The matrix M of ``seed(x) = x + x M^T`` (the seed is linear in x)."""
    with torch.no_grad():
        return (seed(torch.eye(CHANNELS)) - torch.eye(CHANNELS)).T


@pytest.mark.parametrize("level", range(len(RANKS)))
def test_each_level_runs_an_adapter_of_its_rank(level):
    seed = trained_seed(level)
    assert seed.rank == RANKS[level]
    assert int(torch.linalg.matrix_rank(adapter_matrix(seed))) == RANKS[level]


def test_seeds_start_at_rank_4_as_the_identity():
    seed = SEED_FAMILY.build(CHANNELS, "sequence", SEED_FAMILY.config_class())
    x = torch.randn(2, 5, CHANNELS)
    assert (seed.internal_level, seed.rank) == (1, 4)
    assert torch.equal(seed(x), x)


@pytest.mark.parametrize("level", range(len(RANKS) - 1))
def test_growing_keeps_the_output_and_the_active_blocks(level):
    seed = trained_seed(level)
    x = torch.randn(3, 7, CHANNELS)
    before, kept = seed(x), [block.weight.clone() for block in seed.up[:level]]
    seed.set_internal_level(level + 1)
    assert torch.allclose(seed(x), before, atol=1e-6)
    assert all(torch.equal(block.weight, old) for block, old in zip(seed.up[:level], kept))
    assert not seed.up[level].weight.any()  # the enabled block's B is re-zeroed, whatever it held


def test_shrinking_keeps_what_the_disabled_blocks_learned():
    seed = trained_seed(4)
    kept = seed.up[3].weight.clone()
    seed.set_internal_level(2)
    assert torch.equal(seed.up[3].weight, kept)


@pytest.mark.parametrize("level", range(len(RANKS)))
def test_capacity_above_the_level_is_inert_and_gets_no_gradient(level):
    seed = trained_seed(level)
    x = torch.randn(3, 7, CHANNELS)
    out = seed(x)
    if level > 0:
        out.square().sum().backward()
    for index in range(len(RANKS) - 1):
        for block in (seed.down[index], seed.up[index]):
            if index < level:
                assert block.weight.grad is not None and block.weight.grad.abs().sum() > 0
            else:
                assert block.weight.grad is None
    with torch.no_grad():
        for index in range(level, len(RANKS) - 1):
            seed.down[index].weight.mul_(100.0).add_(1.0)
            seed.up[index].weight.mul_(100.0).add_(1.0)
        assert torch.equal(seed(x), out)


def test_parameters_in_use_are_two_d_r_per_level():
    seed = LoraLadderSeed(CHANNELS)
    assert [seed.internal_effective_params(level) for level in range(len(RANKS))] == [2 * CHANNELS * r for r in RANKS]
    assert seed.internal_effective_params(len(RANKS) - 1) == sum(p.numel() for p in seed.parameters())


def test_bad_requests_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="supports topology 'sequence', not 'image'"):
        SEED_FAMILY.build(8, "image", SEED_FAMILY.config_class())
    with pytest.raises(ValueError, match="at least one channel"):
        SEED_FAMILY.build(0, "sequence", SEED_FAMILY.config_class())
    with pytest.raises(ValueError, match="level 5 is outside 0..4"):
        LoraLadderSeed(8).set_internal_level(5)
