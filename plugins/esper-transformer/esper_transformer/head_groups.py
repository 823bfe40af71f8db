"""The ``head_group_attention`` seed: causal self-attention whose heads run in addressable groups (roadmap C3)."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from esper_core.registry import SubtargetSpec
from esper_core.validators import InvalidValue, positive_int

from esper_transformer.seeds import _check_request

#: The most head groups one seed has (roadmap C3: H heads in at most 8 stable groups).
MAX_HEAD_GROUPS = 8
#: Its inventory: each group of heads is a subtarget.
HEAD_GROUP_SUBTARGETS = SubtargetSpec(kind="attn_head_group", max_count=MAX_HEAD_GROUPS)
#: The moving-average decay of a group's importance (per training forward).
IMPORTANCE_DECAY = 0.9
#: Importance is measured on the tokens of at most this many sequences of each training batch.
IMPORTANCE_SAMPLE = 8


def _groups_in_range(instance: HeadGroupAttentionConfig, attribute: attrs.Attribute, value: int) -> None:
    if instance.n_heads % value != 0:
        raise InvalidValue(attribute.name, f"must divide n_heads {instance.n_heads}, got {value}", value)
    if instance.n_heads // value > MAX_HEAD_GROUPS:
        raise InvalidValue(
            attribute.name,
            f"must make at most {MAX_HEAD_GROUPS} groups of n_heads {instance.n_heads} "
            f"(at least {-(-instance.n_heads // MAX_HEAD_GROUPS)} heads per group), got {value}",
            value,
        )


@attrs.frozen
class HeadGroupAttentionConfig:
    """``head_group_attention``: ``n_heads`` heads (they must divide the slot's channels) in groups of
    ``heads_per_group`` (it must divide ``n_heads`` and make at most 8 groups)."""

    n_heads: int = attrs.field(default=8, validator=positive_int())
    heads_per_group: int = attrs.field(default=2, validator=[positive_int(), _groups_in_range])

    @property
    def n_groups(self) -> int:
        return self.n_heads // self.heads_per_group


class HeadGroupAttentionSeed(nn.Module):
    """``x + proj(attn(LayerNorm(x)))``: multi-head causal self-attention whose heads are grouped; each
    group of ``heads_per_group`` consecutive heads is a subtarget (kind ``attn_head_group``).

    Heads ``h`` of width ``D / n_heads`` read the rows of the fused QKV projection that belong to them,
    and the output projection (no bias) reads their columns, so the seed's output is ``x`` plus one term
    per enabled group, ``proj[:, group] @ heads_of_group``. The output projection starts at zero (the
    seed is the identity at birth) and every group starts enabled. The seed computes the heads up to the
    end of its highest enabled group (the QKV rows and projection columns sliced); when a disabled group
    lies below that, the head outputs are multiplied by a per-head mask gathered on the device from
    ``subtarget_mask``, so the group adds nothing and its QKV and projection weights get a zero gradient.
    With no group enabled the seed is ``y = x``. The LayerNorm is shared by every group. A mask change
    writes the mask buffer and moves two Python values (the top group, whether the mask is a prefix):
    it allocates nothing, syncs nothing with the device, and the forward graphs are bounded by them.

    Enabling a group re-zeroes its output-projection columns, so it enters without an output jump and
    learns from the next step (its QKV weights keep what they learned). ``subtarget_importance()`` is a
    moving average (``IMPORTANCE_DECAY``) of each enabled group's contribution norm per token, over the
    tokens of up to ``IMPORTANCE_SAMPLE`` sequences of each training batch, measured without gradient and
    without a host sync; a disabled group keeps its last value, a group that never ran stays 0.
    """

    subtarget_kind = HEAD_GROUP_SUBTARGETS.kind

    def __init__(self, channels: int, n_heads: int = 8, heads_per_group: int = 2) -> None:
        super().__init__()
        config = HeadGroupAttentionConfig(n_heads=n_heads, heads_per_group=heads_per_group)
        if channels % n_heads != 0:
            raise ValueError(f"head_group_attention: n_heads {n_heads} does not divide the slot's {channels} channels")
        self.n_heads = n_heads
        self.heads_per_group = heads_per_group
        self.head_dim = channels // n_heads
        self.subtarget_count = config.n_groups
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels, bias=False)
        nn.init.zeros_(self.proj.weight)
        group_width = heads_per_group * self.head_dim
        #: parameters every enabled group shares (the LayerNorm) and each group's own (QKV rows and bias, projection columns)
        self._shared_params = 2 * channels
        self._group_params = 3 * group_width * (channels + 1) + channels * group_width
        count = self.subtarget_count
        self.register_buffer("subtarget_mask", torch.ones(count, dtype=torch.bool))
        self.register_buffer("importance_ema", torch.zeros(count))
        self.register_buffer("importance_seen", torch.zeros(count, dtype=torch.bool))
        group_of_head = [h // heads_per_group for h in range(n_heads)]
        self.register_buffer("_group_of_head", torch.tensor(group_of_head, dtype=torch.long), persistent=False)
        self._set_bits((1 << count) - 1)

    # -- the mask: a device buffer, with a Python shadow (bits) that only set_subtarget and loading change --

    def _set_bits(self, bits: int) -> None:
        top = bits.bit_length()  # groups 0..top-1 are computed
        # plain attributes (nn.Module.__setattr__ is slow, and these are no tensors)
        vars(self).update(_bits=bits, _top=top, _is_prefix=bits == (1 << top) - 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._set_bits(sum(1 << g for g, on in enumerate(self.subtarget_mask.tolist()) if on))  # one read, on load only

    def set_subtarget(self, index: int, enabled: bool) -> None:
        if not 0 <= index < self.subtarget_count:
            raise IndexError(f"head_group_attention subtarget index {index} is outside 0..{self.subtarget_count - 1}")
        bit = 1 << index
        if bool(self._bits & bit) == bool(enabled):
            return
        if enabled:  # the entering group's contribution starts at zero
            with torch.no_grad():
                width = self.heads_per_group * self.head_dim
                self.proj.weight[:, index * width : (index + 1) * width].zero_()
        self.subtarget_mask[index] = bool(enabled)  # a buffer write (no autograd history)
        self._set_bits(self._bits | bit if enabled else self._bits & ~bit)

    def subtarget_effective_params(self, mask: tuple[bool, ...] | list[bool]) -> int:
        if len(mask) != self.subtarget_count:
            raise ValueError(f"head_group_attention subtarget mask needs {self.subtarget_count} entries, got {len(mask)}")
        enabled = sum(1 for on in mask if on)
        return (self._shared_params + enabled * self._group_params) if enabled else 0

    def subtarget_importance(self) -> torch.Tensor:
        return self.importance_ema

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self._top
        if top == 0:
            return x
        batch, time, channels = x.shape
        heads, head_dim = top * self.heads_per_group, self.head_dim
        width = heads * head_dim
        weight, bias = self.qkv.weight, self.qkv.bias
        if heads < self.n_heads:  # the q, k and v rows of the first `heads` heads
            weight = weight.view(3, self.n_heads, head_dim, channels)[:, :heads].reshape(3 * width, channels)
            bias = bias.view(3, self.n_heads, head_dim)[:, :heads].reshape(3 * width)
        qkv = F.linear(self.norm(x), weight, bias).view(batch, time, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)  # (B, heads, T, head_dim)
        if not self._is_prefix:  # a disabled group below the top: zero its heads (a gather on the device)
            head_mask = self.subtarget_mask[self._group_of_head[:heads]]
            out = out * head_mask.to(out.dtype).view(1, heads, 1, 1)
        out = out.transpose(1, 2).reshape(batch, time, width)
        projection = self.proj.weight if heads == self.n_heads else self.proj.weight[:, :width]
        if self.training:
            self._measure_importance(out, projection)
        return x + F.linear(out, projection)

    @torch.no_grad()
    def _measure_importance(self, out: torch.Tensor, projection: torch.Tensor) -> None:
        sample = out[:IMPORTANCE_SAMPLE].detach()
        width = self.heads_per_group * self.head_dim
        norms = [
            F.linear(sample[..., g * width : (g + 1) * width], projection[:, g * width : (g + 1) * width]).norm(dim=-1).mean()
            for g in range(self._top)
        ]
        count = len(norms)
        ema, seen, enabled = self.importance_ema[:count], self.importance_seen[:count], self.subtarget_mask[:count]
        measured = torch.stack(norms).float()
        fresh = torch.where(seen, ema * IMPORTANCE_DECAY + measured * (1.0 - IMPORTANCE_DECAY), measured)
        ema.copy_(torch.where(enabled, fresh, ema))  # only enabled groups move
        seen.logical_or_(enabled)

    def extra_repr(self) -> str:
        groups = "".join("1" if self._bits >> g & 1 else "0" for g in range(self.subtarget_count))
        return f"heads={self.n_heads} in {self.subtarget_count} groups of {self.heads_per_group}, groups={groups}"


def build_head_group_attention(channels: int, topology: str, config: HeadGroupAttentionConfig) -> HeadGroupAttentionSeed:
    """``head_group_attention``: grouped pre-norm causal self-attention; ``ValueError`` when ``n_heads`` does not divide D."""
    _check_request("head_group_attention", channels, topology)
    if channels % config.n_heads != 0:
        divisors = [n for n in range(1, min(channels, 16) + 1) if channels % n == 0]
        raise ValueError(
            f"seed family 'head_group_attention': n_heads {config.n_heads} does not divide the slot's {channels} channels; "
            f"set [seed_families.head_group_attention] n_heads to a divisor of {channels} (e.g. {', '.join(map(str, divisors))})"
        )
    return HeadGroupAttentionSeed(channels, config.n_heads, config.heads_per_group)
