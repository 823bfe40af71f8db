"""Entry-point module of esper-lora-ladder: registers ``lora_ladder``, a LoRA seed whose rank is its internal level and whose rank blocks are subtargets."""

from __future__ import annotations

from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from esper_core.hookspecs import SeedFamilyRegistrar, hookimpl
from esper_core.registry import LadderSpec, NoOptions, SeedFamily, SubtargetSpec

#: The activation layout this family accepts: ``(batch, time, channels)``.
TOPOLOGY = "sequence"
#: The rank in use at each level. Level 0 is the identity; level 2 is the rank of ``lora``, level 4 of ``lora_large``.
RANKS = (0, 4, 8, 16, 32)
#: The output scale, the same at every level (see LoraLadderSeed).
SCALE = 1.0
#: Seeds start at level 1, rank 4 (see LoraLadderSeed).
LADDER = LadderSpec(kind="lora_rank", max_level=len(RANKS) - 1, initial_level=1)
#: The inventory: the rank blocks of the levels, [0, 4) [4, 8) [8, 16) [16, 32), each addressable by index.
SUBTARGETS = SubtargetSpec(kind="lora_rank_block", max_count=len(RANKS) - 1)
#: The moving-average decay of a block's importance (per training forward).
IMPORTANCE_DECAY = 0.9
#: Importance is measured on at most this many sequences of each training batch.
IMPORTANCE_SAMPLE = 8


class LoraLadderSeed(nn.Module):
    """``x + SCALE * B(A(x))`` over the enabled rank blocks: a low-rank adapter whose rank moves with the level.

    The rank-32 adapter is built up front as four blocks, one per level step (widths 4, 4, 8 and 16): block
    ``i`` has ``down[i]: channels -> width_i`` (PyTorch's Linear init) and ``up[i]: width_i -> channels``
    (zero at birth), no biases. Each block is an addressable subtarget (kind ``lora_rank_block``; block ``i``
    holds ranks ``[RANKS[i], RANKS[i + 1])``); ``subtarget_mask`` says which blocks run, and the internal
    level is the number of enabled blocks. The seed runs blocks ``0..top`` (``top`` the highest enabled
    block) as one adapter (their weights concatenated, two matmuls). When the enabled blocks are a prefix
    (every ladder level: level ``k`` is rank ``RANKS[k]``) that is all; otherwise the rank activations
    ``A(x)`` are multiplied by a per-rank mask gathered on the device from ``subtarget_mask``, so a
    disabled block below the top adds nothing and gets a zero gradient. Blocks above the top take no part
    in the forward pass (their ``.grad`` stays ``None`` and optimizers skip them). A mask change writes the
    mask buffer and moves two Python values (the top block, whether the mask is a prefix): it allocates
    nothing, syncs nothing with the device, and the forward graphs are bounded by those two values.

    Enabling a block re-zeroes its ``up`` (whatever it learned before it was disabled), so new rank enters
    at exactly zero; ``down`` keeps its values, so the gradient reaches the new ``up`` at once. As a
    ladder, raising the level enables the lowest disabled block and lowering it disables the highest
    enabled one.

    Scale: ``lora`` multiplies its update by ``alpha / rank``, which is 1 at its defaults (8 / 8 for
    ``lora``, 32 / 32 for ``lora_large``). A scale that followed the current rank would rescale the blocks
    already running at every level change, an output jump, so ``SCALE`` is fixed at that 1: with the same
    weights, level 2 computes what a default ``lora`` seed computes and level 4 what ``lora_large`` does.

    Importance (``subtarget_importance()``): a moving average (``IMPORTANCE_DECAY``) of each enabled
    block's contribution norm ``||B_i A_i x||`` per token, over the tokens of up to ``IMPORTANCE_SAMPLE``
    sequences of each training batch, measured without gradient and without a host sync; a disabled block
    keeps its last value, a block that never ran stays 0.

    Initial level 1 (rank 4): the smallest step up from the identity, at half the rent of ``lora``
    (rent is charged on ``internal_effective_params``); the policy grows the rank while growth pays.
    """

    internal_kind = LADDER.kind
    internal_max_level = LADDER.max_level
    subtarget_kind = SUBTARGETS.kind
    subtarget_count = SUBTARGETS.max_count

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = [high - low for low, high in zip(RANKS, RANKS[1:])]
        self.down = nn.ModuleList(nn.Linear(channels, width, bias=False) for width in widths)
        self.up = nn.ModuleList(nn.Linear(width, channels, bias=False) for width in widths)
        for block in self.up:
            nn.init.zeros_(block.weight)
        initial = (1 << LADDER.initial_level) - 1  # the first initial_level blocks
        self.register_buffer("subtarget_mask", torch.tensor([bool(initial >> i & 1) for i in range(len(widths))]))
        self.register_buffer("importance_ema", torch.zeros(len(widths)))
        self.register_buffer("importance_seen", torch.zeros(len(widths), dtype=torch.bool))
        block_of_rank = [i for i, width in enumerate(widths) for _ in range(width)]
        self.register_buffer("_block_of_rank", torch.tensor(block_of_rank, dtype=torch.long), persistent=False)
        self._set_bits(initial)

    # -- the mask: a device buffer, with a Python shadow (bits) that only set_subtarget and loading change --

    def _set_bits(self, bits: int) -> None:
        top = bits.bit_length()  # blocks 0..top-1 run
        # plain attributes (nn.Module.__setattr__ is slow, and these are no tensors)
        vars(self).update(_bits=bits, _top=top, _is_prefix=bits == (1 << top) - 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # a state saved before the inventory existed keeps the current mask (the slot restores the level after)
        for name in ("subtarget_mask", "importance_ema", "importance_seen"):
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._set_bits(sum(1 << i for i, on in enumerate(self.subtarget_mask.tolist()) if on))  # one read, on load only

    def set_subtarget(self, index: int, enabled: bool) -> None:
        if not 0 <= index < self.subtarget_count:
            raise IndexError(f"lora_ladder subtarget index {index} is outside 0..{self.subtarget_count - 1}")
        bit = 1 << index
        if bool(self._bits & bit) == bool(enabled):
            return
        if enabled:  # the entering block's contribution starts at zero
            with torch.no_grad():
                self.up[index].weight.zero_()
        self.subtarget_mask[index] = bool(enabled)  # a buffer write (no autograd history)
        self._set_bits(self._bits | bit if enabled else self._bits & ~bit)

    def subtarget_effective_params(self, mask: tuple[bool, ...] | list[bool]) -> int:
        if len(mask) != self.subtarget_count:
            raise ValueError(f"lora_ladder subtarget mask needs {self.subtarget_count} entries, got {len(mask)}")
        return sum(self.down[i].weight.numel() + self.up[i].weight.numel() for i, on in enumerate(mask) if on)

    def subtarget_importance(self) -> torch.Tensor:
        return self.importance_ema

    # -- the ladder view: level == enabled blocks --

    @property
    def internal_level(self) -> int:
        return self._bits.bit_count()

    @property
    def rank(self) -> int:
        """The rank in use: the widths of the enabled blocks."""
        return sum(RANKS[i + 1] - RANKS[i] for i in range(self.subtarget_count) if self._bits >> i & 1)

    def set_internal_level(self, level: int) -> None:
        if not 0 <= level <= self.internal_max_level:
            raise ValueError(f"lora_ladder level {level} is outside 0..{self.internal_max_level}")
        while self.internal_level < level:  # enable the lowest disabled block
            self.set_subtarget(next(i for i in range(self.subtarget_count) if not self._bits >> i & 1), True)
        while self.internal_level > level:  # disable the highest enabled block
            self.set_subtarget(self._bits.bit_length() - 1, False)

    def internal_effective_params(self, level: int) -> int:
        if not 0 <= level <= self.internal_max_level:
            raise ValueError(f"lora_ladder level {level} is outside 0..{self.internal_max_level}")
        return self.subtarget_effective_params([i < level for i in range(self.subtarget_count)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self._top
        if top == 0:
            return x
        if top == 1:
            down, up = self.down[0].weight, self.up[0].weight
        else:
            down = torch.cat([block.weight for block in islice(self.down, top)], dim=0)
            up = torch.cat([block.weight for block in islice(self.up, top)], dim=1)
        hidden = F.linear(x, down)
        if not self._is_prefix:  # a disabled block below the top: zero its ranks (a gather on the device)
            rank_mask = self.subtarget_mask[self._block_of_rank[: RANKS[top]]]
            hidden = hidden * rank_mask.to(hidden.dtype)
        if self.training:
            self._measure_importance(hidden, up)
        return x + SCALE * F.linear(hidden, up)

    @torch.no_grad()
    def _measure_importance(self, hidden: torch.Tensor, up: torch.Tensor) -> None:
        sample = hidden[:IMPORTANCE_SAMPLE].detach()
        norms = [
            (SCALE * F.linear(sample[..., RANKS[i]:RANKS[i + 1]], up[:, RANKS[i]:RANKS[i + 1]])).norm(dim=-1).mean()
            for i in range(self._top)
        ]
        count = len(norms)
        ema, seen, enabled = self.importance_ema[:count], self.importance_seen[:count], self.subtarget_mask[:count]
        measured = torch.stack(norms).float()
        fresh = torch.where(seen, ema * IMPORTANCE_DECAY + measured * (1.0 - IMPORTANCE_DECAY), measured)
        ema.copy_(torch.where(enabled, fresh, ema))  # only enabled blocks move
        seen.logical_or_(enabled)

    def extra_repr(self) -> str:
        blocks = "".join("1" if self._bits >> i & 1 else "0" for i in range(self.subtarget_count))
        return f"level={self.internal_level}/{self.internal_max_level}, rank={self.rank}, blocks={blocks}"


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
    subtargets=SUBTARGETS,
    description="low-rank adapter x + B(A(x)) whose rank 0/4/8/16/32 is the internal level (GROW/SHRINK_INTERNAL); "
    "its 4 rank blocks are subtargets (ENABLE/DISABLE_SUBTARGET); new rank enters at zero; level 2 ~ lora, "
    "level 4 ~ lora_large",
)


@hookimpl
def esper_register_seed_families(register: SeedFamilyRegistrar) -> None:
    register(SEED_FAMILY)
