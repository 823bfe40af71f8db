"""The `cnn` host family: a stack of conv blocks with a seed slot at every block boundary, routed explicitly."""

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
    """A conv host cut at every block boundary: slot ``r0c{i}`` carries the output of block ``i``.

    ``forward`` is a plain sequential pass (dormant slots cost nothing); ``forward_to`` and
    ``forward_from`` run the same blocks in pieces, so chaining them through any ordered subset of
    slots equals ``forward``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        channels: tuple[int, ...],
        pool: tuple[bool, ...],
        convs_per_block: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        if len(channels) != len(pool):
            raise ValueError(f"CNNHost: {len(channels)} channel entries but {len(pool)} pool flags")
        self.block_channels = tuple(channels)
        self.block_pools = tuple(pool)
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
        last = len(channels) - 1
        self._specs = tuple(
            InjectionSpec(
                slot_id=f"r0c{index}",
                channels=channels[index],
                surface=SEGMENT_BOUNDARY,
                order=index,
                host_block=index,
                position=index / last if last > 0 else 0.0,
            )
            for index in range(len(channels))
        )
        self._block_of_slot: dict[str, int] = {spec.slot_id: spec.host_block for spec in self._specs}
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming (fan-out, ReLU) convs, BatchNorm at weight 1 / bias 0; the head keeps PyTorch's Linear init."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- the HostModule contract -------------------------------------------------------------------

    def injection_specs(self) -> list[InjectionSpec]:
        return list(self._specs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward_to(self, slot_id: str, x: torch.Tensor, from_slot: str | None = None) -> torch.Tensor:
        """Run blocks from the input (or from the activation at ``from_slot``) through block ``slot_id``."""
        end = self.block_index(slot_id)
        start = 0 if from_slot is None else self.block_index(from_slot) + 1
        if start > end:
            raise ValueError(
                f"cnn host: forward_to({slot_id!r}, from_slot={from_slot!r}) runs backwards; "
                f"from_slot must come before slot_id"
            )
        for index in range(start, end + 1):
            x = self.blocks[index](x)
        return x

    def forward_from(self, slot_id: str, h: torch.Tensor) -> torch.Tensor:
        """Run the blocks after ``slot_id`` and the head on the activation ``h`` at that slot."""
        for index in range(self.block_index(slot_id) + 1, len(self.blocks)):
            h = self.blocks[index](h)
        return self.head(h)

    def block_index(self, slot_id: str) -> int:
        """The block whose output slot ``slot_id`` carries (``KeyError`` naming the known slots)."""
        try:
            return self._block_of_slot[slot_id]
        except KeyError:
            raise KeyError(
                f"cnn host has no slot {slot_id!r}; its slots are {', '.join(self._block_of_slot)}"
            ) from None


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
    )
