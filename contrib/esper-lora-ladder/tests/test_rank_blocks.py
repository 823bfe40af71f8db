"""lora_ladder's subtarget inventory: its four rank blocks, any mask of them, additive and inert blocks, importance."""

from __future__ import annotations

import pytest
import torch

from esper_lora_ladder.plugin import IMPORTANCE_SAMPLE, RANKS, SEED_FAMILY, SUBTARGETS, LoraLadderSeed

CHANNELS = 12


def trained_seed(mask: tuple[bool, ...]) -> LoraLadderSeed:
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
    seed = trained_seed(mask)
    x = torch.randn(2, 5, CHANNELS)
    expected = x + sum((block_term(seed, i, x) for i, on in enumerate(mask) if on), torch.zeros_like(x))
    torch.testing.assert_close(seed(x), expected, atol=1e-6, rtol=1e-5)
    widths = [high - low for low, high in zip(RANKS, RANKS[1:])]
    assert seed.rank == sum(w for w, on in zip(widths, mask) if on)
    assert seed.internal_level == sum(mask)
    assert seed.subtarget_effective_params(mask) == 2 * CHANNELS * seed.rank


def test_a_disabled_block_below_the_top_is_inert():
    seed = trained_seed((True, False, True, False)).train()
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
    seed = trained_seed((True, False, False, True))
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
    seed = trained_seed((True, False, True, False))
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
    source = trained_seed((False, True, False, True))
    target = LoraLadderSeed(CHANNELS)
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 3, CHANNELS)
    assert target.subtarget_mask.tolist() == [False, True, False, True] and target.rank == 20
    torch.testing.assert_close(target(x), source(x))
