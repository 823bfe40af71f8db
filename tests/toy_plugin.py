"""A tiny plugin used by the core tests: one of every kind, small enough to train in milliseconds."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from esper_core import hookimpl
from esper_core.leyline import SEGMENT_BOUNDARY, FactoredAction, InjectionSpec, LifecycleOp
from esper_core.registry import HostFamily, LadderSpec, PolicyKind, SeedFamily, SinkKind, SurfaceKind, TaskKind
from esper_core.tamiyo.features import build_features
from esper_core.tasks import TaskContext, TaskInfo, TensorClassificationTask
from esper_core.telemetry import SinkContext

# -- host --------------------------------------------------------------------------------------------


@attrs.frozen
class ToyHostConfig:
    channels: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    blocks: int = attrs.field(default=3, validator=attrs.validators.ge(1))


class ToyHost(nn.Module):
    """Conv blocks with a slot after each, then a linear head."""

    def __init__(self, config: ToyHostConfig, info: TaskInfo) -> None:
        super().__init__()
        in_channels = info.input_shape[0]
        self.blocks = nn.ModuleList()
        for index in range(config.blocks):
            self.blocks.append(
                nn.Sequential(nn.Conv2d(in_channels if index == 0 else config.channels, config.channels, 3, padding=1), nn.ReLU())
            )
        self.head = nn.Linear(config.channels, info.num_classes)
        self._specs = [
            InjectionSpec(slot_id=f"r0c{i}", channels=config.channels, surface=SEGMENT_BOUNDARY, order=i, host_block=i,
                          position=i / max(config.blocks - 1, 1))
            for i in range(config.blocks)
        ]
        self._index = {spec.slot_id: i for i, spec in enumerate(self._specs)}

    def injection_specs(self) -> list[InjectionSpec]:
        return list(self._specs)

    def forward_to(self, slot_id: str, x: torch.Tensor, from_slot: str | None = None) -> torch.Tensor:
        start = 0 if from_slot is None else self._index[from_slot] + 1
        if start > self._index[slot_id]:
            raise ValueError(f"cannot route backwards from {from_slot} to {slot_id}")
        for block in self.blocks[start : self._index[slot_id] + 1]:
            x = block(x)
        return x

    def forward_from(self, slot_id: str, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[self._index[slot_id] + 1 :]:
            h = block(h)
        return self.head(h.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


# -- seed family -------------------------------------------------------------------------------------


@attrs.frozen
class ToySeedConfig:
    hidden: int = attrs.field(default=4, validator=attrs.validators.ge(1))


class ToySeed(nn.Module):
    def __init__(self, channels: int, config: ToySeedConfig) -> None:
        super().__init__()
        self.inner = nn.Conv2d(channels, config.hidden, 3, padding=1)
        self.out = nn.Conv2d(config.hidden, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.relu(self.inner(x)))


def build_toy_seed(channels: int, topology: str, config: ToySeedConfig) -> nn.Module:
    return ToySeed(channels, config)


TOY_LADDER = LadderSpec(kind="conv_stages", max_level=3, initial_level=1)


class ToyLadder(nn.Module):
    """Levels 0..3: level k adds k 1x1 conv branches, each entering through a zeroed scale."""

    internal_kind = TOY_LADDER.kind
    internal_max_level = TOY_LADDER.max_level

    def __init__(self, channels: int, *, rezero_on_grow: bool = True) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.scales = nn.Parameter(torch.zeros(3))
        self.rezero_on_grow = rezero_on_grow
        self._level = TOY_LADDER.initial_level

    @property
    def internal_level(self) -> int:
        return self._level

    def set_internal_level(self, level: int) -> None:
        if self.rezero_on_grow:
            with torch.no_grad():
                self.scales[self._level : level] = 0.0
        self._level = level

    def internal_effective_params(self, level: int) -> int:
        return level * (sum(p.numel() for p in self.branches[0].parameters()) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for index in range(self._level):
            out = out + self.scales[index] * torch.tanh(self.branches[index](x))
        return out


def build_toy_ladder(channels: int, topology: str, config: Any) -> nn.Module:
    return ToyLadder(channels)


# -- task --------------------------------------------------------------------------------------------


@attrs.frozen
class ToyTaskConfig:
    train_size: int = 96
    val_size: int = 48


def build_toy_task(config: ToyTaskConfig, context: TaskContext) -> TensorClassificationTask:
    generator = torch.Generator().manual_seed(context.seed)
    total = config.train_size + config.val_size
    inputs = torch.randn(total, 1, 6, 6, generator=generator)
    targets = (inputs.mean(dim=(1, 2, 3)) > 0).long()
    return TensorClassificationTask(
        name="toy", topology="image",
        train_inputs=inputs[: config.train_size], train_targets=targets[: config.train_size],
        val_inputs=inputs[config.train_size :], val_targets=targets[config.train_size :],
        num_classes=2, device=context.device,
    )


INSTANCES: list[Any] = []

# -- scripted policy ---------------------------------------------------------------------------------


@attrs.frozen
class ScriptedConfig:
    """``script`` maps an epoch (as a string key) to an action table, applied to every environment."""

    script: dict[str, dict[str, int]] = attrs.Factory(dict)


class ScriptedPolicy:
    def __init__(self, config: ScriptedConfig, context: Any) -> None:
        self.script = {int(epoch): FactoredAction(**action) for epoch, action in config.script.items()}
        self.context = context
        self.rewards: list[list[float]] = []
        self.episodes = 0
        self.features_finite: list[bool] = []
        INSTANCES.append(self)

    def begin_episode(self, round_index: int, n_envs: int) -> None:
        self.episodes += 1

    def act(self, observations, masks) -> list[FactoredAction]:
        self.features_finite.append(bool(torch.isfinite(build_features(observations).flat()).all()))
        return [self.script.get(obs.epoch, FactoredAction(op=LifecycleOp.WAIT)) for obs in observations]

    def record(self, rewards, terminal: bool) -> None:
        self.rewards.append(list(rewards))

    def end_episode(self, round_index: int) -> dict[str, float]:
        return {"scripted/rewards_seen": float(len(self.rewards))}

    def state_dict(self) -> dict[str, Any]:
        return {"rewards": [list(r) for r in self.rewards], "episodes": self.episodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rewards = [list(r) for r in state["rewards"]]
        self.episodes = state["episodes"]


# -- memory sink -------------------------------------------------------------------------------------

MEMORY_EVENTS: list[Any] = []


class MemorySink:
    def __init__(self, config: Any, context: SinkContext) -> None:
        self.context = context
        self.closed = False

    def handle(self, event) -> None:
        MEMORY_EVENTS.append(event)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


# -- hooks -------------------------------------------------------------------------------------------


@hookimpl
def esper_register_hosts(register) -> None:
    register(HostFamily(name="toy", build=ToyHost, topology="image", config_class=ToyHostConfig))


@hookimpl
def esper_register_surfaces(register) -> None:
    register(SurfaceKind(name="toy_surface", code=7, host_families=("toy",), description="test surface"))


@hookimpl
def esper_register_seed_families(register) -> None:
    register(SeedFamily(name="toy_conv", build=build_toy_seed, topologies=("image",), config_class=ToySeedConfig))
    register(SeedFamily(name="toy_ladder", build=build_toy_ladder, topologies=("image",), ladder=TOY_LADDER))


@hookimpl
def esper_register_policies(register) -> None:
    register(PolicyKind(name="scripted", build=ScriptedPolicy, config_class=ScriptedConfig))


@hookimpl
def esper_register_tasks(register) -> None:
    register(TaskKind(name="toy", build=build_toy_task, default_host="toy", config_class=ToyTaskConfig))


@hookimpl
def esper_register_rewards(register) -> None:
    from esper_core.simic import BasicReward, BasicRewardConfig
    from esper_core.registry import RewardKind

    register(RewardKind(name="toy_reward", build=BasicReward, config_class=BasicRewardConfig))


@hookimpl
def esper_register_telemetry_sinks(register) -> None:
    register(SinkKind(name="memory", build=MemorySink))
