"""The `cnn` host family: a stack of conv blocks cut at block boundaries or at pre/post-pool surfaces, routed explicitly."""

from __future__ import annotations

import attrs
import torch
from torch import nn

from esper_core.errors import ConfigError
from esper_core.leyline import SEGMENT_BOUNDARY, InjectionSpec
from esper_core.tasks import TaskInfo
from esper_core.validators import one_of, positive_int

#: The activation layout this host produces at its slots.
TOPOLOGY = "image"

#: The host family's name (what ``[host] name`` selects).
HOST_FAMILY = "cnn"

#: Roadmap A2 surfaces: after a block's conv body, before its pool; and after the pool.
PRE_POOL = "pre_pool"
POST_POOL = "post_pool"

#: Stable surface codes (0..MAX_SURFACE_CODE, shared by every plugin: the core's segment_boundary is 0,
#: the transformer's post_attn and post_mlp are 1 and 2).
SURFACE_CODES: dict[str, int] = {PRE_POOL: 3, POST_POOL: 4}

#: Where the host is cut (see ``CNNHostConfig.slot_layout``).
SLOT_LAYOUTS = ("segments", "lattice")

#: How the host lays out its activations and conv weights in memory (``CNNHostConfig.memory_format``).
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "contiguous": torch.contiguous_format,
    "channels_last": torch.channels_last,
}


@attrs.frozen
class HostPreset:
    """A named block layout: output channels per block and whether each block ends in a 2x2 max-pool."""

    channels: tuple[int, ...]
    pool: tuple[bool, ...]
    description: str


PRESETS: dict[str, HostPreset] = {
    "cifar_baseline": HostPreset(
        channels=(32, 64, 128),
        pool=(True, True, True),
        description="3 blocks, pool after each (32x32 -> 4x4); 3 slots",
    ),
    "cifar_scale": HostPreset(
        channels=(32, 48, 64, 96, 128),
        pool=(True, False, True, False, True),
        description="5 blocks, pool after blocks 0, 2 and 4 (32x32 -> 4x4); 5 slots",
    ),
    "tiny": HostPreset(
        channels=(16, 32),
        pool=(True, True),
        description="2 small blocks for tests and 8x8 digits (8x8 -> 2x2); 2 slots",
    ),
}


def _optional_tuple(value: object) -> tuple | None:
    """Accept any sequence for a tuple-valued option (TOML arrays arrive as lists)."""
    return None if value is None else tuple(value)


@attrs.frozen
class CNNHostConfig:
    """Options of the `cnn` host (its TOML section).

    ``preset`` picks the block layout; ``channels`` and ``pool`` replace the preset's values when
    set (one entry per block; the two must have the same length). ``convs_per_block`` is how many
    conv3x3-BatchNorm-ReLU layers each block stacks before its optional pool.

    ``slot_layout`` says where the slots are: ``"segments"`` (one slot after every block, ids
    ``r0c{block}``, surface ``segment_boundary``) or ``"lattice"`` (roadmap A2: per block a
    ``pre_pool`` slot ``r{block}c3`` after its conv body and, where the block pools, a ``post_pool``
    slot ``r{block}c4`` after the pool). ``memory_format`` is ``"contiguous"`` or ``"channels_last"``:
    with channels_last the conv weights are stored channels-last and the input is converted once at
    entry, so every block, slot and seed sees channels-last activations. Neither option changes the
    weights or the function the host computes.
    """

    preset: str = attrs.field(default="cifar_baseline", validator=one_of(*PRESETS))
    channels: tuple[int, ...] | None = attrs.field(
        default=None,
        converter=_optional_tuple,
        validator=attrs.validators.optional(
            attrs.validators.deep_iterable(
                member_validator=positive_int(),
                iterable_validator=attrs.validators.min_len(1),
            )
        ),
    )
    pool: tuple[bool, ...] | None = attrs.field(
        default=None,
        converter=_optional_tuple,
        validator=attrs.validators.optional(
            attrs.validators.deep_iterable(
                member_validator=attrs.validators.instance_of(bool),
                iterable_validator=attrs.validators.min_len(1),
            )
        ),
    )
    convs_per_block: int = attrs.field(default=1, validator=positive_int())
    slot_layout: str = attrs.field(default="segments", validator=one_of(*SLOT_LAYOUTS))
    memory_format: str = attrs.field(default="contiguous", validator=one_of(*MEMORY_FORMATS))


class ConvBlock(nn.Module):
    """(conv3x3 -> BatchNorm -> ReLU) x ``convs``, then an optional 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, *, convs: int, pool: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(convs):
            layers.append(
                nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1, bias=False)
            )
            layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        # Kept apart from the body so a pre-pool surface (roadmap A2) can cut between them.
        self.pool = nn.MaxPool2d(2) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if self.pool is not None:
            x = self.pool(x)
        return x


class CNNHost(nn.Module):
    """A conv host cut at its slots; the blocks run as a flat list of steps (per block: its conv body,
    then its pool where it has one).

    Each slot sits at a *cut*, the number of steps done when its activation exists. Under the
    "segments" layout slot ``r0c{i}`` carries the output of block ``i`` (after its pool); under the
    "lattice" layout ``r{b}c3`` (PRE_POOL) carries block ``b``'s body output and ``r{b}c4``
    (POST_POOL, pooling blocks only) its pooled output. ``forward`` is a plain sequential pass
    (dormant slots cost nothing); ``forward_to`` and ``forward_from`` run the same steps in pieces, so
    chaining them through any ordered subset of slots equals ``forward``. The layout moves only the
    cuts, never the parameters.

    With ``memory_format="channels_last"`` the parameters are converted once here and the input once
    at entry (``forward``, and ``forward_to`` without ``from_slot``); nothing is converted per slot.
    ``input_size`` (H, W), when given, states each slot's spatial size in its ``InjectionSpec.resolution``
    (and ``slot_resolution``).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        channels: tuple[int, ...],
        pool: tuple[bool, ...],
        convs_per_block: int,
        num_classes: int,
        slot_layout: str = "segments",
        memory_format: str = "contiguous",
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if len(channels) != len(pool):
            raise ValueError(f"CNNHost: {len(channels)} channel entries but {len(pool)} pool flags")
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(
                f"CNNHost: unknown memory_format {memory_format!r}; choose one of {', '.join(MEMORY_FORMATS)}"
            )
        self.block_channels = tuple(channels)
        self.block_pools = tuple(pool)
        self.slot_layout = slot_layout
        self.memory_format = memory_format
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        widths = (in_channels, *channels)
        self.blocks = nn.ModuleList(
            ConvBlock(widths[index], widths[index + 1], convs=convs_per_block, pool=pool[index])
            for index in range(len(channels))
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels[-1], num_classes),
        )
        # The flat step list: (block index, "body" | "pool"), in execution order.
        self._steps: tuple[tuple[int, str], ...] = tuple(
            step
            for index, pooled in enumerate(pool)
            for step in (((index, "body"), (index, "pool")) if pooled else ((index, "body"),))
        )
        self._specs, self._cuts = _layout(slot_layout, tuple(channels), tuple(pool))
        self._block_of_slot: dict[str, int] = {spec.slot_id: spec.host_block for spec in self._specs}
        if self.input_size is not None:  # each spec states its activation's (H, W)
            self._specs = tuple(
                attrs.evolve(spec, resolution=self.slot_resolution(spec.slot_id)) for spec in self._specs
            )
        self._init_weights()
        if memory_format != "contiguous":
            self.to(memory_format=MEMORY_FORMATS[memory_format])

    def _init_weights(self) -> None:
        """Kaiming (fan-out, ReLU) convs, BatchNorm at weight 1 / bias 0; the head keeps PyTorch's Linear init."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- pieces ------------------------------------------------------------------------------------

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """The input in the host's memory format (a no-op for "contiguous" or an input already converted)."""
        if self.memory_format == "contiguous":
            return x
        return x.contiguous(memory_format=MEMORY_FORMATS[self.memory_format])

    def _run(self, h: torch.Tensor, start: int, end: int) -> torch.Tensor:
        for index, part in self._steps[start:end]:
            block = self.blocks[index]
            h = block.body(h) if part == "body" else block.pool(h)
        return h

    # -- the HostModule contract -------------------------------------------------------------------

    def injection_specs(self) -> list[InjectionSpec]:
        return list(self._specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.enter(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward_to(self, slot_id: str, x: torch.Tensor, from_slot: str | None = None) -> torch.Tensor:
        """The input ``x`` (``from_slot=None``) or the activation at ``from_slot`` -> the activation at ``slot_id``."""
        end = self.cut(slot_id)
        if from_slot is None:
            return self._run(self.enter(x), 0, end)
        start = self.cut(from_slot)
        if start >= end:
            raise ValueError(
                f"cnn host: forward_to({slot_id!r}, from_slot={from_slot!r}) runs backwards; "
                f"from_slot must come before slot_id"
            )
        return self._run(x, start, end)

    def forward_from(self, slot_id: str, h: torch.Tensor) -> torch.Tensor:
        """The activation ``h`` at ``slot_id`` -> logits: the remaining steps and the head."""
        return self.head(self._run(h, self.cut(slot_id), len(self._steps)))

    # -- slot geometry -----------------------------------------------------------------------------

    def cut(self, slot_id: str) -> int:
        """How many steps have run when slot ``slot_id``'s activation exists (``KeyError`` naming the slots)."""
        try:
            return self._cuts[slot_id]
        except KeyError:
            raise KeyError(
                f"cnn host ({self.slot_layout} layout) has no slot {slot_id!r}; "
                f"its slots are {', '.join(self._cuts)}"
            ) from None

    def block_index(self, slot_id: str) -> int:
        """The block slot ``slot_id`` sits in or after (``KeyError`` naming the known slots)."""
        self.cut(slot_id)
        return self._block_of_slot[slot_id]

    def slot_downsampling(self, slot_id: str) -> int:
        """By how much the input's height and width have been halved at ``slot_id``: 2 ** (pools before it)."""
        pools = sum(1 for _index, part in self._steps[: self.cut(slot_id)] if part == "pool")
        return 2**pools

    def slot_resolution(self, slot_id: str) -> tuple[int, int]:
        """The (height, width) of the activation at ``slot_id`` (each 2x2 max-pool floors odd sizes)."""
        if self.input_size is None:
            raise ValueError(
                f"cnn host: slot_resolution({slot_id!r}) needs the input size; build the host with "
                f"build_cnn_host or pass input_size=(H, W)"
            )
        height, width = self.input_size
        factor = self.slot_downsampling(slot_id)
        return height // factor, width // factor


def _layout(
    slot_layout: str, channels: tuple[int, ...], pool: tuple[bool, ...]
) -> tuple[tuple[InjectionSpec, ...], dict[str, int]]:
    """The injection specs of a layout and each slot's cut (steps done: one per body, one per pool)."""
    if slot_layout not in SLOT_LAYOUTS:
        raise ValueError(f"CNNHost: unknown slot_layout {slot_layout!r}; choose one of {', '.join(SLOT_LAYOUTS)}")
    rows: list[tuple[str, str, int, int]] = []  # (slot_id, surface, host_block, cut)
    done = 0
    for index, pooled in enumerate(pool):
        done += 1  # the block's body
        if slot_layout == "lattice":
            rows.append((f"r{index}c{SURFACE_CODES[PRE_POOL]}", PRE_POOL, index, done))
        if pooled:
            done += 1
            if slot_layout == "lattice":
                rows.append((f"r{index}c{SURFACE_CODES[POST_POOL]}", POST_POOL, index, done))
        if slot_layout == "segments":
            rows.append((f"r0c{index}", SEGMENT_BOUNDARY, index, done))
    last = len(rows) - 1
    specs = tuple(
        InjectionSpec(
            slot_id=slot_id,
            channels=channels[host_block],
            surface=surface,
            order=order,
            host_block=host_block,
            position=order / last if last > 0 else 0.0,
        )
        for order, (slot_id, surface, host_block, _cut) in enumerate(rows)
    )
    return specs, {slot_id: cut for slot_id, _surface, _block, cut in rows}


def resolve_layout(config: CNNHostConfig) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """The (channels, pool) a config asks for: its overrides where set, its preset's values otherwise."""
    preset = PRESETS[config.preset]
    channels = preset.channels if config.channels is None else config.channels
    pool = preset.pool if config.pool is None else config.pool
    return channels, pool


def _layout_problems(config: CNNHostConfig, task_info: TaskInfo) -> list[str]:
    """Every inconsistency between ``config`` and the task, each naming ``[host]``."""
    channels, pool = resolve_layout(config)
    problems: list[str] = []
    if task_info.topology != TOPOLOGY:
        problems.append(
            f"[host] cnn needs an '{TOPOLOGY}' task, but task '{task_info.name}' has topology "
            f"'{task_info.topology}'"
        )
    if len(task_info.input_shape) != 3:
        problems.append(
            f"[host] cnn needs inputs shaped (C, H, W); task '{task_info.name}' gives {task_info.input_shape}"
        )
    if len(channels) != len(pool):
        channels_from = "set in [host]" if config.channels is not None else f"from preset '{config.preset}'"
        pool_from = "set in [host]" if config.pool is not None else f"from preset '{config.preset}'"
        problems.append(
            f"[host] channels has {len(channels)} entries ({channels_from}) but pool has {len(pool)} "
            f"({pool_from}); give one pool flag per block"
        )
    elif len(task_info.input_shape) == 3:
        height, width = task_info.input_shape[1:]
        for index, pooled in enumerate(pool):
            if not pooled:
                continue
            if height < 2 or width < 2:
                problems.append(
                    f"[host] block {index} would max-pool a {height}x{width} activation below 1x1 "
                    f"(input {task_info.input_shape[1]}x{task_info.input_shape[2]}, pool {list(pool)}); "
                    f"pool fewer blocks"
                )
                break
            height, width = height // 2, width // 2
    return problems


def build_cnn_host(config: CNNHostConfig, task_info: TaskInfo) -> CNNHost:
    """The `cnn` host for ``task_info``; ``ConfigError`` listing every problem when the layout cannot work."""
    problems = _layout_problems(config, task_info)
    if problems:
        raise ConfigError(problems)
    channels, pool = resolve_layout(config)
    return CNNHost(
        in_channels=task_info.input_shape[0],
        channels=channels,
        pool=pool,
        convs_per_block=config.convs_per_block,
        num_classes=task_info.num_classes,
        slot_layout=config.slot_layout,
        memory_format=config.memory_format,
        input_size=(task_info.input_shape[1], task_info.input_shape[2]),
    )
