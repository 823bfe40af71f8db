"""A toy plugin for tests: one of every kind (host, seed families, task, scripted policy, reward, memory sink, ...), small enough to train in milliseconds.

Load it with ``esper_core.testing.toy_plugin_manager()`` (or pass this module to
``PluginManager(extra=[...])``) to run a policy, reward or sink through the real engine without any
other plugin: ``[task] name = "toy"`` (host ``toy``, 1x6x6 inputs, 2 classes, seed families
``toy_conv`` and ``toy_ladder``), ``[policy] name = "scripted"`` (an action table per epoch) and
``[sinks.memory]`` (events appended to ``MEMORY_EVENTS``). ``esper_core.testing.toy_run_data`` writes
a run config for it.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from esper_core import hookimpl
from esper_core.hookspecs import (
    HostRegistrar,
    LadderKindRegistrar,
    PolicyRegistrar,
    RewardRegistrar,
    SeedFamilyRegistrar,
    SinkRegistrar,
    SubtargetKindRegistrar,
    SurfaceRegistrar,
    TaskRegistrar,
    TopologyRegistrar,
)
from esper_core.leyline import SEGMENT_BOUNDARY, FactoredAction, InjectionSpec, LifecycleOp
from esper_core.registry import (
    HostFamily,
    LadderKind,
    LadderSpec,
    PolicyKind,
    SeedFamily,
    SinkKind,
    SubtargetKind,
    SurfaceKind,
    TaskKind,
    TopologyKind,
)
from esper_core.tamiyo.features import build_features
from esper_core.tasks import TaskContext, TaskInfo, TensorClassificationTask
from esper_core.telemetry import SinkContext

__all__ = [
    "INSTANCES",
    "MEMORY_EVENTS",
    "TOY_LADDER",
    "TOY_TASK_INFO",
    "MemorySink",
    "ScriptedConfig",
    "ScriptedPolicy",
    "ToyHost",
    "ToyHostConfig",
    "ToyLadder",
    "ToySeed",
    "ToySeedConfig",
    "ToyTaskConfig",
    "build_toy_ladder",
    "build_toy_seed",
    "build_toy_task",
    "esper_register_hosts",
    "esper_register_ladder_kinds",
    "esper_register_policies",
    "esper_register_rewards",
    "esper_register_seed_families",
    "esper_register_subtarget_kinds",
    "esper_register_surfaces",
    "esper_register_tasks",
    "esper_register_telemetry_sinks",
    "esper_register_topologies",
    "toy_signal_shape",
]

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


#: What the toy task reports with its default sizes (for building a host or model without running the task).
TOY_TASK_INFO = TaskInfo(
    name="toy", topology="image", input_shape=(1, 6, 6), num_classes=2, metric_name="accuracy",
    train_size=96, val_size=48,
)


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


#: every ScriptedPolicy built, in order (tests read what a run's policy saw; clear it before a run)
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

#: every event a MemorySink handled, in order (clear it before a run)
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


def toy_signal_shape(batch: int, channels: int) -> tuple[int, ...]:
    """A ``toy_signal`` activation: (batch, channels, length 5)."""
    return (batch, channels, 5)


@hookimpl
def esper_register_topologies(register: TopologyRegistrar) -> None:
    # registered so every hook is exercised; the toy host and seeds use the core's ``image``
    register(TopologyKind(name="toy_signal", code=12, channel_dim=1, gate_pool_dims=(2,),
                          example_shape=toy_signal_shape, description="test topology: (batch, channels, length)"))


@hookimpl
def esper_register_ladder_kinds(register: LadderKindRegistrar) -> None:
    # registered so every hook is exercised; the toy ladder is a ``conv_stages`` ladder
    register(LadderKind(name="toy_levels", code=12, description="test ladder kind"))


@hookimpl
def esper_register_subtarget_kinds(register: SubtargetKindRegistrar) -> None:
    # registered so every hook is exercised; the toy inventory seed uses the core's ``cnn_channel_group``
    register(SubtargetKind(name="toy_groups", code=12, description="test subtarget kind"))


@hookimpl
def esper_register_hosts(register: HostRegistrar) -> None:
    register(HostFamily(name="toy", build=ToyHost, topology="image", config_class=ToyHostConfig))


@hookimpl
def esper_register_surfaces(register: SurfaceRegistrar) -> None:
    register(SurfaceKind(name="toy_surface", code=7, host_families=("toy",), description="test surface"))


@hookimpl
def esper_register_seed_families(register: SeedFamilyRegistrar) -> None:
    register(SeedFamily(name="toy_conv", build=build_toy_seed, topologies=("image",), config_class=ToySeedConfig))
    register(SeedFamily(name="toy_ladder", build=build_toy_ladder, topologies=("image",), ladder=TOY_LADDER))


@hookimpl
def esper_register_policies(register: PolicyRegistrar) -> None:
    register(PolicyKind(name="scripted", build=ScriptedPolicy, config_class=ScriptedConfig))


@hookimpl
def esper_register_tasks(register: TaskRegistrar) -> None:
    register(TaskKind(name="toy", build=build_toy_task, default_host="toy", config_class=ToyTaskConfig))


@hookimpl
def esper_register_rewards(register: RewardRegistrar) -> None:
    from esper_core.simic import BasicReward, BasicRewardConfig
    from esper_core.registry import RewardKind

    register(RewardKind(name="toy_reward", build=BasicReward, config_class=BasicRewardConfig))


@hookimpl
def esper_register_telemetry_sinks(register: SinkRegistrar) -> None:
    register(SinkKind(name="memory", build=MemorySink))
