"""The `transformer` host family: a decoder-only pre-norm transformer cut at segment, layer or sublayer slots."""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from esper_core.errors import ConfigError
from esper_core.leyline import SEGMENT_BOUNDARY, InjectionSpec
from esper_core.tasks import TaskInfo
from esper_core.validators import in_range, one_of, optional, positive_int

from esper_transformer.surfaces import POST_ATTN, POST_MLP, SURFACE_CODES

#: The activation layout this host produces at its slots: (B, T, d_model).
TOPOLOGY = "sequence"

#: Where the host is cut (see ``TransformerHostConfig.slot_layout``).
SLOT_LAYOUTS = ("segments", "layers", "lattice")

#: ``num_segments`` when the "segments" layout is chosen without one.
DEFAULT_NUM_SEGMENTS = 3

#: Standard deviation of the normal init of embeddings and linear weights (GPT-2).
INIT_STD = 0.02

@attrs.frozen
class TransformerHostConfig:
    """Options of the `transformer` host (its TOML section).

    ``slot_layout`` says where the slots are: ``"segments"`` (a boundary after every
    ``n_layer / num_segments`` layers), ``"layers"`` (a boundary after every layer) or ``"lattice"``
    (two sublayer surfaces per layer, post-attention and post-MLP). ``num_segments`` belongs to the
    "segments" layout only (unset: 3); giving it with another layout is an error. The layout only
    moves the cuts: the weights a seed builds are the same under every layout.
    """

    n_layer: int = attrs.field(default=6, validator=positive_int())
    d_model: int = attrs.field(default=128, validator=positive_int())
    n_head: int = attrs.field(default=4, validator=positive_int())
    dropout: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0, high_inclusive=False))
    tie_embeddings: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    slot_layout: str = attrs.field(default="segments", validator=one_of(*SLOT_LAYOUTS))
    num_segments: int | None = attrs.field(default=None, validator=optional(positive_int()))


# -- modules -----------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention over (B, T, D) with fused QKV, via ``scaled_dot_product_attention``."""

    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_head != 0:
            raise ValueError(f"n_head {n_head} does not divide d_model {d_model}")
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        qkv = self.qkv(x).view(batch, time, 3, self.n_head, width // self.n_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.resid_drop(self.proj(out.transpose(1, 2).reshape(batch, time, width)))


class MLP(nn.Module):
    """Position-wise ``D -> 4D -> D`` feed-forward with GELU."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class TransformerBlock(nn.Module):
    """A pre-norm layer in two sub-steps: ``x + attn(ln_1(x))`` (post-attention), then ``x + mlp(ln_2(x))``."""

    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)

    def attention_step(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.ln_1(x))

    def mlp_step(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln_2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TransformerHost(nn.Module):
    """A decoder-only transformer over token ids (B, T) -> logits (B, T, vocab), cut at its slots.

    The layers run as a flat list of ``2 * n_layer`` sub-steps (per layer: attention, then MLP);
    each slot sits at a *cut*, the number of sub-steps done when its activation exists. The token
    and position embedding run before the first sub-step, the final LayerNorm and the LM head after
    the last. ``forward`` is a plain sequential pass (dormant slots cost nothing); ``forward_to`` and
    ``forward_from`` run the same sub-steps in pieces, so chaining them through any ordered subset of
    slots equals ``forward``. The slot layout changes only the cuts, never the parameters.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        context_length: int,
        n_layer: int,
        d_model: int,
        n_head: int,
        dropout: float,
        tie_embeddings: bool,
        slot_layout: str,
        num_segments: int | None = None,
    ) -> None:
        super().__init__()
        self._specs, self._cuts = _layout(slot_layout, n_layer, num_segments, d_model)
        self._num_steps = 2 * n_layer
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.d_model = d_model
        self.slot_layout = slot_layout
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context_length, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_head, dropout) for _ in range(n_layer))
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.tie_embeddings = tie_embeddings
        self.register_buffer("positions", torch.arange(context_length), persistent=False)
        self._init_weights(n_layer)
        if tie_embeddings:
            self.head.weight = self.token_embedding.weight

    def _init_weights(self, n_layer: int) -> None:
        """GPT-2 init: N(0, 0.02) embeddings and linear weights, zero biases, LayerNorm at weight 1 / bias 0,
        residual output projections scaled down by sqrt(2 * n_layer)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for projection in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(projection.weight, mean=0.0, std=INIT_STD / math.sqrt(2 * n_layer))

    # -- pieces ------------------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> the residual stream (B, T, d_model) before the first layer."""
        if x.dim() != 2:
            raise ValueError(f"transformer host expects token ids shaped (B, T), got {tuple(x.shape)}")
        time = x.shape[1]
        if time > self.context_length:
            raise ValueError(f"transformer host: sequence length {time} exceeds the context length {self.context_length}")
        return self.drop(self.token_embedding(x) + self.position_embedding(self.positions[:time]))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The residual stream after the last layer -> logits (B, T, vocab)."""
        return self.head(self.final_norm(h))

    def _run(self, h: torch.Tensor, start: int, end: int) -> torch.Tensor:
        for step in range(start, end):
            block = self.blocks[step // 2]
            h = block.attention_step(h) if step % 2 == 0 else block.mlp_step(h)
        return h

    # -- the HostModule contract -------------------------------------------------------------------

    def injection_specs(self) -> list[InjectionSpec]:
        return list(self._specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.logits(h)

    def forward_to(self, slot_id: str, x: torch.Tensor, from_slot: str | None = None) -> torch.Tensor:
        """Token ids ``x`` (``from_slot=None``) or the activation at ``from_slot`` -> the activation at ``slot_id``."""
        end = self.cut(slot_id)
        if from_slot is None:
            return self._run(self.embed(x), 0, end)
        start = self.cut(from_slot)
        if start >= end:
            raise ValueError(
                f"transformer host: forward_to({slot_id!r}, from_slot={from_slot!r}) runs backwards; "
                f"from_slot must come before slot_id"
            )
        return self._run(x, start, end)

    def forward_from(self, slot_id: str, h: torch.Tensor) -> torch.Tensor:
        """The activation ``h`` at ``slot_id`` -> logits: the remaining sub-steps, the final norm and the head."""
        return self.logits(self._run(h, self.cut(slot_id), self._num_steps))

    def cut(self, slot_id: str) -> int:
        """How many sub-steps have run when slot ``slot_id``'s activation exists (``KeyError`` naming the slots)."""
        try:
            return self._cuts[slot_id]
        except KeyError:
            raise KeyError(
                f"transformer host ({self.slot_layout} layout) has no slot {slot_id!r}; "
                f"its slots are {', '.join(self._cuts)}"
            ) from None


def _layout(
    slot_layout: str, n_layer: int, num_segments: int | None, channels: int
) -> tuple[tuple[InjectionSpec, ...], dict[str, int]]:
    """The injection specs of a layout and each slot's cut (sub-steps done: 2 per layer)."""
    if slot_layout not in SLOT_LAYOUTS:
        raise ValueError(f"unknown slot_layout {slot_layout!r}; choose one of {', '.join(SLOT_LAYOUTS)}")
    if (slot_layout == "segments") != (num_segments is not None):
        raise ValueError(f"num_segments is required by slot_layout 'segments' and only by it (got {num_segments!r})")
    if num_segments is not None and (num_segments < 1 or n_layer % num_segments != 0):
        raise ValueError(f"num_segments {num_segments} does not divide n_layer {n_layer}")
    rows: list[tuple[str, str, int, int, int]] = []  # (slot_id, surface, host_block, host_layer, cut)
    if slot_layout == "lattice":
        for layer in range(n_layer):
            for surface, cut in ((POST_ATTN, 2 * layer + 1), (POST_MLP, 2 * layer + 2)):
                rows.append((f"r{layer}c{SURFACE_CODES[surface]}", surface, layer, layer, cut))
    else:
        segments = n_layer if slot_layout == "layers" else num_segments
        per_segment = n_layer // segments
        for index in range(segments):
            last_layer = (index + 1) * per_segment - 1
            rows.append((f"r0c{index}", SEGMENT_BOUNDARY, index, last_layer, 2 * (last_layer + 1)))
    last = len(rows) - 1
    specs = tuple(
        InjectionSpec(
            slot_id=slot_id,
            channels=channels,
            surface=surface,
            order=order,
            host_block=host_block,
            host_layer=host_layer,
            position=order / last if last > 0 else 0.0,
        )
        for order, (slot_id, surface, host_block, host_layer, _cut) in enumerate(rows)
    )
    cuts = {slot_id: cut for slot_id, _surface, _block, _layer, cut in rows}
    return specs, cuts


def _problems(config: TransformerHostConfig, task_info: TaskInfo) -> list[str]:
    """Every inconsistency in ``config`` or between it and the task, each naming ``[host]``."""
    problems: list[str] = []
    if task_info.topology != TOPOLOGY:
        problems.append(
            f"[host] transformer needs a '{TOPOLOGY}' task, but task '{task_info.name}' has topology "
            f"'{task_info.topology}'"
        )
    if len(task_info.input_shape) != 1:
        problems.append(
            f"[host] transformer needs token ids shaped (T,); task '{task_info.name}' gives {task_info.input_shape}"
        )
    if config.d_model % config.n_head != 0:
        problems.append(f"[host] n_head {config.n_head} does not divide d_model {config.d_model}")
    if config.slot_layout == "segments":
        segments = resolved_num_segments(config)
        if config.n_layer % segments != 0:
            where = "" if config.num_segments is not None else " (the default for slot_layout 'segments')"
            problems.append(
                f"[host] n_layer {config.n_layer} is not divisible by num_segments {segments}{where}; "
                f"choose num_segments among the divisors of n_layer, or slot_layout 'layers' / 'lattice'"
            )
    elif config.num_segments is not None:
        problems.append(
            f"[host] num_segments applies to slot_layout 'segments' only; slot_layout is '{config.slot_layout}'"
        )
    return problems


def build_transformer_host(config: TransformerHostConfig, task_info: TaskInfo) -> TransformerHost:
    """The `transformer` host for ``task_info`` (vocab = num_classes, context = input_shape[0]);
    ``ConfigError`` listing every problem when the config cannot work."""
    problems = _problems(config, task_info)
    if problems:
        raise ConfigError(problems)
    return TransformerHost(
        vocab_size=task_info.num_classes,
        context_length=task_info.input_shape[0],
        n_layer=config.n_layer,
        d_model=config.d_model,
        n_head=config.n_head,
        dropout=float(config.dropout),
        tie_embeddings=config.tie_embeddings,
        slot_layout=config.slot_layout,
        num_segments=resolved_num_segments(config),
    )


def resolved_num_segments(config: TransformerHostConfig) -> int | None:
    """The segment count the "segments" layout uses (3 when unset); None for the other layouts."""
    if config.slot_layout != "segments":
        return None
    return DEFAULT_NUM_SEGMENTS if config.num_segments is None else config.num_segments
