"""Entry-point module of esper-lora-ladder: registers ``lora_ladder``, a LoRA seed whose rank is its internal level."""

from __future__ import annotations

from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from esper_core.hookspecs import SeedFamilyRegistrar, hookimpl
from esper_core.registry import LadderSpec, NoOptions, SeedFamily

#: The activation layout this family accepts: ``(batch, time, channels)``.
TOPOLOGY = "sequence"
#: The rank in use at each level. Level 0 is the identity; level 2 is the rank of ``lora``, level 4 of ``lora_large``.
RANKS = (0, 4, 8, 16, 32)
#: The output scale, the same at every level (see LoraLadderSeed).
SCALE = 1.0
#: Seeds start at level 1, rank 4 (see LoraLadderSeed).
LADDER = LadderSpec(kind="lora_rank", max_level=len(RANKS) - 1, initial_level=1)


class LoraLadderSeed(nn.Module):
    """``x + SCALE * B_r(A_r(x))`` with ``r = RANKS[level]``: a low-rank adapter whose rank moves with the level.

    The rank-32 adapter is built up front as four blocks, one per level step (widths 4, 4, 8 and 16): block
    ``i`` has ``down[i]: channels -> width_i`` (PyTorch's Linear init) and ``up[i]: width_i -> channels``
    (zero at birth), no biases. Level ``k`` runs blocks ``0..k-1`` as one adapter of rank ``RANKS[k]``
    (their weights concatenated, two matmuls). A level change allocates nothing, and there are
    ``max_level + 1`` forward graphs. Blocks above the level take no part in the forward pass, so they
    neither influence the output nor get a gradient (their ``.grad`` stays ``None`` and optimizers skip
    them). Growing re-zeroes ``up`` of the blocks it enables (whatever they learned before a shrink), so
    new rank enters at exactly zero; ``down`` keeps its values, so the gradient reaches the new ``up`` at once.

    Scale: ``lora`` multiplies its update by ``alpha / rank``, which is 1 at its defaults (8 / 8 for
    ``lora``, 32 / 32 for ``lora_large``). A scale that followed the current rank would rescale the blocks
    already running at every level change, an output jump, so ``SCALE`` is fixed at that 1: with the same
    weights, level 2 computes what a default ``lora`` seed computes and level 4 what ``lora_large`` does.

    Initial level 1 (rank 4): the smallest step up from the identity, at half the rent of ``lora``
    (rent is charged on ``internal_effective_params``); the policy grows the rank while growth pays.
    """

    internal_kind = LADDER.kind
    internal_max_level = LADDER.max_level

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = [high - low for low, high in zip(RANKS, RANKS[1:])]
        self.down = nn.ModuleList(nn.Linear(channels, width, bias=False) for width in widths)
        self.up = nn.ModuleList(nn.Linear(width, channels, bias=False) for width in widths)
        for block in self.up:
            nn.init.zeros_(block.weight)
        self._level = LADDER.initial_level

    @property
    def internal_level(self) -> int:
        return self._level

    @property
    def rank(self) -> int:
        """The rank in use at the current level."""
        return RANKS[self._level]

    def set_internal_level(self, level: int) -> None:
        if not 0 <= level <= self.internal_max_level:
            raise ValueError(f"lora_ladder level {level} is outside 0..{self.internal_max_level}")
        for index in range(self._level, level):
            nn.init.zeros_(self.up[index].weight)
        self._level = level

    def internal_effective_params(self, level: int) -> int:
        if not 0 <= level <= self.internal_max_level:
            raise ValueError(f"lora_ladder level {level} is outside 0..{self.internal_max_level}")
        return sum(self.down[i].weight.numel() + self.up[i].weight.numel() for i in range(level))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = self._level
        if level == 0:
            return x
        if level == 1:
            down, up = self.down[0].weight, self.up[0].weight
        else:
            down = torch.cat([block.weight for block in islice(self.down, level)], dim=0)
            up = torch.cat([block.weight for block in islice(self.up, level)], dim=1)
        return x + SCALE * F.linear(F.linear(x, down), up)

    def extra_repr(self) -> str:
        return f"level={self._level}/{self.internal_max_level}, rank={self.rank}"


def build_lora_ladder(channels: int, topology: str, config: NoOptions) -> LoraLadderSeed:
    """``SeedFamily.build``: one ``lora_ladder`` seed for a slot with ``channels`` channels, at rank 4."""
    if topology != TOPOLOGY:
        raise ValueError(f"seed family 'lora_ladder' supports topology '{TOPOLOGY}', not '{topology}'")
    if channels < 1:
        raise ValueError(f"seed family 'lora_ladder' needs at least one channel, got {channels}")
    return LoraLadderSeed(channels)


#: The family record: the tests use it directly, the hook below registers it.
SEED_FAMILY = SeedFamily(
    name="lora_ladder",
    build=build_lora_ladder,
    topologies=(TOPOLOGY,),
    ladder=LADDER,
    description="low-rank adapter x + B(A(x)) whose rank 0/4/8/16/32 is the internal level (GROW/SHRINK_INTERNAL); "
    "new rank enters at zero; level 2 ~ lora, level 4 ~ lora_large",
)


@hookimpl
def esper_register_seed_families(register: SeedFamilyRegistrar) -> None:
    register(SEED_FAMILY)
