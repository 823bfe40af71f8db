"""Tolaria's engine: builds a run from its config and drives the epoch loop over every environment."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from esper_core.config import RunConfig, parse_config, write_config
from esper_core.errors import (
    CheckpointError,
    ConfigError,
    PluginError,
    RunAborted,
    SeedContractError,
    TrainingUnstable,
)
from esper_core.kasmina import LadderModule, LifecycleSettings, MorphogeneticModel, SubtargetInventory, check_host
from esper_core.kasmina.slot import OpResult
from esper_core.leyline import (
    LIVE_STAGES,
    FactoredAction,
    LifecycleOp,
    SeedStage,
    SlotConfig,
    TelemetryEvent,
    TelemetryEventType,
)
from esper_core.leyline import telemetry as payloads
from esper_core.plugins import PluginManager, distribution_versions
from esper_core.registry import HostFamily, SeedFamily, TaskKind
from esper_core.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DISCARDED_EVENTS_FILE,
    ENVIRONMENT_FILE,
    EVENTS_FILE,
    LATEST_CHECKPOINT,
    SUMMARY_FILE,
    RunLock,
    check_output_dir,
    create_run_dir,
    derive_seed,
    environment_record,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_json,
)
from esper_core.simic import RewardContext, RewardFunction, RewardSignals
from esper_core.tamiyo import EnvObservation, Policy, PolicyContext, compute_masks
from esper_core.tamiyo.policy import VALUE_LOSS_METRIC
from esper_core.tasks import Task, TaskContext
from esper_core.telemetry import SinkContext, TelemetryHub
from esper_core.telemetry.anomalies import (
    action_head_sizes,
    anomaly_events,
    detect_gradient_anomalies,
    detect_policy_anomalies,
)
from esper_core.telemetry.report import summarize_run
from esper_core.tolaria.environment import Environment, EnvironmentState, PendingDecision

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from esper_core.tolaria.state import (
    EngineCheckpoint,
    EventRecordMark,
    RngState,
    checkpoint_from_dict,
    checkpoint_to_dict,
)

#: devices a run can train on (``meta`` tensors hold no data; other backends are untested)
SUPPORTED_DEVICES = ("cpu", "cuda", "mps")


@attrs.frozen
class RunSetup:
    """Everything a config resolves to before training starts."""

    config: RunConfig
    device: torch.device
    task: Task
    task_kind: TaskKind
    host_family: HostFamily
    slot_config: SlotConfig
    seed_families: tuple[str, ...]
    seed_family_allowed: tuple[tuple[bool, ...], ...]
    max_seeds: int
    host_params: int
    surface_codes: dict[str, int]
    all_surface_codes: dict[str, int]
    #: every registered ladder kind's stable code (what observations encode a seed's ladder kind with)
    ladder_kind_codes: dict[str, int]
    seed_family_params: tuple[tuple[int, ...], ...]
    #: the reward needs a paired static control environment (``RewardKind.needs_control``)
    uses_control: bool
    #: the ``subtarget`` head size K: the largest ``SubtargetSpec.max_count`` of the run's seed families, >= 1
    subtarget_count: int = 1


def check_ladder(family: SeedFamily, seed: torch.nn.Module) -> None:
    """A family that declares a ladder must build a LadderModule matching the declaration (and vice versa)."""
    spec = family.ladder
    if spec is None:
        if isinstance(seed, LadderModule):
            raise PluginError(f"seed family '{family.name}' builds a ladder module but declares no ladder")
        return
    if not isinstance(seed, LadderModule):
        raise PluginError(f"seed family '{family.name}' declares a ladder but its module is not a LadderModule")
    found = (seed.internal_kind, seed.internal_max_level, seed.internal_level)
    expected = (spec.kind, spec.max_level, spec.initial_level)
    if found != expected:
        raise PluginError(
            f"seed family '{family.name}' declares ladder (kind, max level, initial level) {expected} "
            f"but its module has {found}"
        )


def check_subtargets(family: SeedFamily, seed: torch.nn.Module) -> None:
    """A family that declares a subtarget inventory must build a ``SubtargetInventory`` matching the
    declaration (its kind, 1..``max_count`` groups, a (K,) bool mask), and vice versa."""
    spec = family.subtargets
    if spec is None:
        if isinstance(seed, SubtargetInventory):
            raise PluginError(f"seed family '{family.name}' builds a subtarget inventory but declares no subtargets")
        return
    if not isinstance(seed, SubtargetInventory):
        raise PluginError(
            f"seed family '{family.name}' declares subtargets but its module is not a SubtargetInventory"
        )
    if seed.subtarget_kind != spec.kind:
        raise PluginError(
            f"seed family '{family.name}' declares subtarget kind '{spec.kind}' but its module has "
            f"'{seed.subtarget_kind}'"
        )
    count = seed.subtarget_count
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= spec.max_count:
        raise PluginError(
            f"seed family '{family.name}' declares at most {spec.max_count} subtargets but its module has "
            f"subtarget_count {count!r}"
        )
    mask = seed.subtarget_mask
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (count,):
        found = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise PluginError(
            f"seed family '{family.name}': subtarget_mask must be a bool tensor of shape ({count},), got {found}"
        )


def family_plugin(manager: PluginManager, name: str) -> str | None:
    """The plugin that registered seed family ``name`` (plain or ``plugin:name``), None if none did."""
    for plugin, item, _entry in manager.registry.items("seed_families"):
        if name in (item, f"{plugin}:{item}"):
            return plugin
    return None


def seed_size_at_birth(
    family: SeedFamily, channels: int, topology: str, config: Any, plugin: str | None = None
) -> int:
    """A seed family's size at birth in a slot of ``channels``: its parameters in use (the size rule).
    A ``build`` that raises or returns no module is a ``SeedContractError`` naming family and plugin."""
    who = f"seed family '{family.name}'" + (f" (plugin '{plugin}')" if plugin else "")
    try:
        with torch.random.fork_rng(devices=[]):
            seed = family.build(channels, topology, config)
    except Exception as exc:  # the plugin's callable: report it by family and plugin
        raise SeedContractError(
            f"{who} failed to build a seed for {channels} channels ({type(exc).__name__}: {exc})",
            family=family.name, plugin=plugin,
        ) from None
    if not isinstance(seed, torch.nn.Module):
        raise SeedContractError(
            f"{who} built a {type(seed).__name__}, not a torch.nn.Module, for {channels} channels",
            family=family.name, plugin=plugin,
        )
    check_ladder(family, seed)
    check_subtargets(family, seed)
    if family.subtargets is not None:
        return int(seed.subtarget_effective_params(tuple(bool(v) for v in seed.subtarget_mask.tolist())))
    if family.ladder is not None:
        return seed.internal_effective_params(family.ladder.initial_level)
    return sum(p.numel() for p in seed.parameters())


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError([f"[run] device: {exc}"]) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"[run] device: '{name}' requested but no CUDA device is available"])
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            [f"[run] device: '{name}' requested but this machine has {torch.cuda.device_count()} CUDA device(s)"]
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError([f"[run] device: '{name}' requested but MPS is not available"])
    if device.type not in SUPPORTED_DEVICES:
        what = "holds no data (shape-only tensors)" if device.type == "meta" else "is not supported"
        raise ConfigError([f"[run] device: '{name}' {what}; use one of {', '.join(SUPPORTED_DEVICES)}"])
    return device


def build_host(setup_or_family: HostFamily, config: RunConfig, task: Task, seed: int) -> torch.nn.Module:
    """Build a host with initial weights determined by ``seed`` alone (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return setup_or_family.build(config.host.options, task.info)


def prepare(config: RunConfig, manager: PluginManager) -> RunSetup:
    """Build the task and a probe host, resolve slots and seed families; raise ConfigError on mismatches."""
    try:
        device = resolve_device(config.run.device)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=config.source) from None
    task_kind: TaskKind = manager.lookup("tasks", config.task.name)
    task: Task = task_kind.build(config.task.options, TaskContext(device=device, seed=config.run.seed))
    host_family: HostFamily = manager.lookup("hosts", config.host.name)
    problems: list[str] = []
    if host_family.topology != task.info.topology:
        raise ConfigError(
            [
                f"[host] '{host_family.name}' produces {host_family.topology} activations but task "
                f"'{task_kind.name}' is a {task.info.topology} task"
            ]
        )
    probe = build_host(host_family, config, task, seed=config.run.seed)
    specs = check_host(probe, host_family.name)
    surface_codes: dict[str, int] = {}
    for spec in specs:
        if spec.surface not in manager.registry.entries["surfaces"]:
            problems.append(
                f"[host] '{host_family.name}' exposes slot {spec.slot_id} on "
                f"{manager.registry.unknown_message('surfaces', spec.surface)}"
            )
            continue
        surface = manager.registry.get("surfaces", spec.surface)
        if surface.host_families and host_family.name not in surface.host_families:
            problems.append(f"[host] surface '{surface.name}' is not available on host '{host_family.name}'")
        surface_codes[spec.surface] = surface.code
    try:
        slot_config = SlotConfig.from_specs(specs, enabled=list(config.morphogenesis.slots) or None)
    except ValueError as exc:
        problems.append(f"[morphogenesis] slots: {exc}")
        slot_config = None
    topology = host_family.topology
    if config.morphogenesis.seed_families:
        seed_families = tuple(config.morphogenesis.seed_families)
        for name in seed_families:
            family = manager.registry.get("seed_families", name)
            if topology not in family.topologies:
                problems.append(
                    f"[morphogenesis] seed_families: '{name}' supports {', '.join(family.topologies)}, "
                    f"not this host's {topology} activations"
                )
    else:
        seed_families = tuple(
            name
            for name in manager.registry.names("seed_families")
            if topology in manager.registry.get("seed_families", name).topologies
        )
        if not seed_families:
            problems.append(f"[morphogenesis] seed_families: no registered seed family supports {topology} activations")
    if task.info.train_size // config.training.batch_size == 0:
        problems.append(
            f"[training] batch_size {config.training.batch_size} exceeds the {task.info.train_size} training samples"
        )
    for name, points in (("host_nan", config.faults.host_nan), ("abort", (config.faults.abort,) if config.faults.abort else ())):
        for point in points:
            if point.round >= config.run.rounds or point.epoch >= config.run.episode_length or point.env >= config.run.envs:
                problems.append(
                    f"[faults] {name}: round {point.round} epoch {point.epoch} env {point.env} never happens in "
                    f"{config.run.rounds} round(s) x {config.run.episode_length} epochs x {config.run.envs} env(s)"
                )
    abort = config.faults.abort
    if abort is not None and (abort.round, abort.epoch) == (config.run.rounds - 1, config.run.episode_length - 1):
        problems.append("[faults] abort: at the run's very last epoch there is nothing left to abort")
    for name in seed_families:
        if name not in manager.registry.entries["seed_families"]:
            continue
        spec = manager.registry.get("seed_families", name).subtargets
        if spec is not None and spec.kind not in manager.registry.entries["subtarget_kinds"]:
            problems.append(
                f"[morphogenesis] seed_families: '{name}' declares subtargets of "
                f"{manager.registry.unknown_message('subtarget_kinds', spec.kind)}"
            )
    for name in config.seed_family_options:
        if name not in seed_families:
            problems.append(f"[seed_families.{name}] options given for a seed family this run does not use")
    max_seeds = 0
    if slot_config is not None:
        max_seeds = config.morphogenesis.max_seeds or slot_config.num_slots
        if max_seeds > slot_config.num_slots:
            problems.append(
                f"[morphogenesis] max_seeds: {max_seeds} exceeds the {slot_config.num_slots} enabled slots"
            )
    if slot_config is not None:
        for index, implant in enumerate(config.morphogenesis.implants):
            where = f"[morphogenesis] implants[{index}]"
            if implant.slot not in slot_config.slot_ids:
                problems.append(f"{where}: slot '{implant.slot}' is not one of {', '.join(slot_config.slot_ids)}")
            if implant.seed_family not in manager.registry.entries["seed_families"]:
                problems.append(f"{where}: {manager.registry.unknown_message('seed_families', implant.seed_family)}")
                continue
            family = manager.registry.get("seed_families", implant.seed_family)
            if topology not in family.topologies:
                problems.append(f"{where}: '{implant.seed_family}' does not support {topology} activations")
            if implant.level is not None and (family.ladder is None or implant.level > family.ladder.max_level):
                ladder = "no ladder" if family.ladder is None else f"levels 0..{family.ladder.max_level}"
                problems.append(f"{where}: level {implant.level} but '{implant.seed_family}' has {ladder}")
        implanted = [implant.slot for implant in config.morphogenesis.implants]
        if len(set(implanted)) != len(implanted):
            problems.append(f"[morphogenesis] implants: a slot is named twice in {implanted}")
    if problems:
        raise ConfigError(problems, source=config.source)
    allowed = tuple(tuple(True for _ in seed_families) for _ in range(slot_config.num_slots))
    channels = slot_config.channels_map
    sizes: dict[tuple[str, int], int] = {}
    for name in seed_families:
        family = manager.registry.get("seed_families", name)
        options = config.seed_family_options.get(name, family.config_class())
        for width in sorted(set(channels.values())):
            sizes[name, width] = seed_size_at_birth(family, width, topology, options, family_plugin(manager, name))
    seed_family_params = tuple(
        tuple(sizes[name, channels[slot_id]] for name in seed_families) for slot_id in slot_config.slot_ids
    )
    return RunSetup(
        config=config,
        device=device,
        task=task,
        task_kind=task_kind,
        host_family=host_family,
        slot_config=slot_config,
        seed_families=seed_families,
        seed_family_allowed=allowed,
        max_seeds=max_seeds,
        host_params=sum(p.numel() for p in probe.parameters()),
        surface_codes=surface_codes,
        all_surface_codes={name: entry.code for name, entry in manager.registry.entries["surfaces"].items()},
        ladder_kind_codes={name: entry.code for _plugin, name, entry in manager.registry.items("ladder_kinds")},
        seed_family_params=seed_family_params,
        uses_control=manager.registry.get("rewards", config.reward.name).needs_control,
        subtarget_count=run_subtarget_count(manager.registry.get("seed_families", name) for name in seed_families),
    )


def run_subtarget_count(families: Iterable[SeedFamily]) -> int:
    """The ``subtarget`` head size of a run: the largest ``SubtargetSpec.max_count`` among its seed
    families, 1 when none declares an inventory (a size-1 head that no op uses)."""
    return max([1, *(family.subtargets.max_count for family in families if family.subtargets is not None)])


@attrs.frozen
class ResumePoint:
    round: int
    epoch: int
    env_states: list[EnvironmentState] | None


class Engine:
    """Runs rounds of ``envs`` environments for ``episode_length`` epochs each.

    Per epoch: every environment trains on each batch index in turn (the data batch drives the
    environments), then validates with batched counterfactual ablations and passes its governor;
    rewards for the previous decisions are paid; the policy decides for all environments at
    once (no decision after the final epoch: nothing would train on it); actions are applied; the
    lifecycle clock ticks once; telemetry is emitted; a checkpoint is written when due.

    When the reward needs a control (``RewardKind.needs_control``), one more environment trains beside
    the others: the **control**, with ``env_id == envs``, which never grows. Every environment of the
    round then shares its host initial weights and data order, so an environment's lead over the control
    is what its actions did. The control trains, validates and passes its governor like the others but
    takes no decisions, is paid no reward and emits no EPOCH_COMPLETED; its final metric is in
    ROUND_COMPLETED. It is always the bare host: ``[morphogenesis] implants`` are not built into it.
    """

    def __init__(
        self,
        setup: RunSetup,
        manager: PluginManager,
        run_dir: Path,
        hub: TelemetryHub,
        policy: Policy,
        reward: RewardFunction,
    ) -> None:
        self.setup = setup
        self.config = setup.config
        self.manager = manager
        self.run_dir = run_dir
        self.hub = hub
        self.policy = policy
        self.reward = reward
        self.clock: tuple[int, int] = (0, 0)
        self.envs: list[Environment] = []
        self.control: Environment | None = None
        self.started = time.perf_counter()
        self.rounds_completed = 0
        self.timing: dict[str, float] = {}
        #: the environments a mid-round resume restored before training (``restore``), used by ``run``
        self.restored: list[Environment] | None = None
        #: the running sha256 of events.jsonl up to ``events_hashed`` bytes (extended at each checkpoint)
        self.events_hash = hashlib.sha256()
        self.events_hashed = 0
        self.events_lines = 0
        #: every earlier round's value loss (``detect_policy_anomalies`` judges a blow-up on them; checkpointed)
        self.value_losses: list[float] = []

    # -- construction ------------------------------------------------------------------------------

    def _seed_builder(self, env_seed: int, model_ref: list[MorphogeneticModel]) -> Callable[[str, int], torch.nn.Module]:
        registry = self.manager.registry
        topology = self.setup.host_family.topology
        options = self.config.seed_family_options

        def build_seed(name: str, channels: int) -> torch.nn.Module:
            family = registry.get("seed_families", name)
            config = options.get(name, family.config_class())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(env_seed, model_ref[0].germination_count))
                seed = family.build(channels, topology, config)
            check_ladder(family, seed)
            check_subtargets(family, seed)
            return seed

        return build_seed

    @property
    def all_envs(self) -> list[Environment]:
        """The environments, then the control if the run has one (what trains, validates and checkpoints)."""
        return self.envs if self.control is None else [*self.envs, self.control]

    def make_envs(self, round_index: int) -> list[Environment]:
        """The round's environments, followed by the control environment when the reward needs one."""
        config = self.config
        envs = []
        count = config.run.envs + (1 if self.setup.uses_control else 0)
        for env_id in range(count):
            if self.setup.uses_control:  # paired: one host init and data order for the round
                env_seed = derive_seed(config.run.seed, round_index)
            else:
                env_seed = derive_seed(config.run.seed, round_index, env_id)
            host = build_host(self.setup.host_family, config, self.setup.task, seed=env_seed)
            model_ref: list[MorphogeneticModel] = []
            model = MorphogeneticModel(
                host,
                self.setup.slot_config,
                topology=self.manager.registry.topology(self.setup.host_family.topology),
                seed_families=self.setup.seed_families,
                build_seed=self._seed_builder(env_seed, model_ref),
                seed_plugin=lambda name: family_plugin(self.manager, name),
                settings=LifecycleSettings(
                    embargo_epochs=config.morphogenesis.embargo_epochs,
                    min_training_epochs=config.morphogenesis.min_training_epochs,
                    auto_advance=config.morphogenesis.auto_advance,
                ),
                max_seeds=self.setup.max_seeds,
                env_id=env_id,
                emit=lambda event: self.hub.emit(event),  # the hub is replaced after a resume's checks
                clock=lambda: self.clock,
            )
            model_ref.append(model)
            if env_id < config.run.envs:  # the control is always the bare host
                for implant in config.morphogenesis.implants:
                    model.implant(implant.slot, implant.seed_family, implant.level)
            envs.append(
                Environment(
                    env_id=env_id,
                    env_seed=env_seed,
                    model=model,
                    task=self.setup.task,
                    training=config.training,
                    governor=config.governor,
                    episode_length=config.run.episode_length,
                    device=self.setup.device,
                )
            )
        return envs

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, start: ResumePoint) -> None:
        config = self.config
        self.rounds_completed = start.round
        for round_index in range(start.round, config.run.rounds):
            resuming_mid_round = round_index == start.round and start.env_states is not None
            self.timing = {"train": 0.0, "validate": 0.0, "policy_act": 0.0, "policy_update": 0.0}
            made = self.restore(start) if resuming_mid_round else self.make_envs(round_index)
            self.envs = made[: config.run.envs]
            self.control = made[config.run.envs] if self.setup.uses_control else None
            first_epoch = 0
            if resuming_mid_round:
                first_epoch = start.epoch
            else:
                self.policy.begin_episode(round_index, len(self.envs))
            for epoch in range(first_epoch, config.run.episode_length):
                self.run_epoch(round_index, epoch)
                due = config.run.checkpoint_every > 0 and (epoch + 1) % config.run.checkpoint_every == 0
                last_epoch = epoch == config.run.episode_length - 1
                abort = self._abort_due(round_index, epoch)
                if (due or abort) and not last_epoch:
                    self.checkpoint(ResumePoint(round_index, epoch + 1, [env.state() for env in self.all_envs]))
                if abort and not last_epoch:
                    raise RunAborted(
                        f"aborted by [faults] abort at round {round_index} epoch {epoch}; "
                        f"resume with: esper run --resume {self.run_dir}"
                    )
            self.finish_round(round_index)
            self.rounds_completed = round_index + 1
            self.checkpoint(ResumePoint(round_index + 1, 0, None))
            if self._abort_due(round_index, config.run.episode_length - 1) and round_index + 1 < config.run.rounds:
                raise RunAborted(
                    f"aborted by [faults] abort at the end of round {round_index}; "
                    f"resume with: esper run --resume {self.run_dir}"
                )

    def restore(self, start: ResumePoint) -> list[Environment]:
        """The environments of a mid-round checkpoint, rebuilt and loaded (``CheckpointError`` if they do
        not fit this run). Called once before a resume changes anything on disk; ``run`` then uses them."""
        if self.restored is not None:
            made, self.restored = self.restored, None
            return made
        made = self.make_envs(start.round)
        if len(start.env_states) != len(made):
            raise CheckpointError(
                f"the checkpoint in '{self.run_dir}' holds {len(start.env_states)} environment(s); "
                f"this run has {len(made)}"
            )
        for env, state in zip(made, start.env_states):
            try:
                env.load_state(state)
            except (KeyError, ValueError, RuntimeError, TypeError) as exc:
                message = " ".join(str(exc).split())
                raise CheckpointError(
                    f"the checkpoint in '{self.run_dir}' does not match this run's environments "
                    f"({type(exc).__name__}: {message})"
                ) from None
        self.restored = made
        return made

    def _abort_due(self, round_index: int, epoch: int) -> bool:
        abort = self.config.faults.abort
        return abort is not None and abort.round == round_index and abort.epoch == epoch

    def run_epoch(self, round_index: int, epoch: int) -> None:
        config = self.config
        self.clock = (round_index, epoch)
        for fault in config.faults.host_nan:
            if fault.round == round_index and fault.epoch == epoch and fault.env < len(self.envs):
                self.envs[fault.env].inject_nan()
        started = time.perf_counter()
        self.train_epoch(epoch)
        if self.setup.device.type == "cuda":  # kernels still queued belong to training, not to validation
            torch.cuda.synchronize(self.setup.device)
        self.timing["train"] += time.perf_counter() - started
        started = time.perf_counter()
        results = []
        for env in self.all_envs:
            train_loss = env.finish_training()
            found = detect_gradient_anomalies(
                env.gradient_norms, config.anomalies, env_id=env.env_id, round_index=round_index, epoch=epoch
            )
            for event in anomaly_events(found):
                self.hub.emit(event)
            result = env.validate(config.training.eval_batch_size)
            verdict = env.governor.verdict(train_loss, result.loss)
            env.rolled_back = False
            if verdict is not None:
                result = self.rollback(env, round_index, epoch, verdict, train_loss, result.loss)
                env.governor.record_restored(result.loss)
                self._check_stability(env, verdict)
            elif not env.governor.is_diverging:
                env.governor.record_healthy(result.loss)
            env.record_validation(result)
            if verdict is None and not env.governor.is_diverging:
                env.governor.take_snapshot(env.model, epoch, train_loss)
            results.append((train_loss, result))
        results = results[: len(self.envs)]  # the control's are not reported per epoch

        self.timing["validate"] += time.perf_counter() - started
        self.pay_rewards(round_index, epoch)
        if epoch < config.run.episode_length - 1:
            self.decide(round_index, epoch)
        for env in self.all_envs:
            env.model.tick()
            env.sync_optimizers()
        for env, (train_loss, result) in zip(self.envs, results):
            self.hub.emit(
                TelemetryEvent(
                    TelemetryEventType.EPOCH_COMPLETED,
                    payloads.EpochCompletedPayload(
                        env_id=env.env_id,
                        round=round_index,
                        epoch=epoch,
                        train_loss=train_loss,
                        val_loss=result.loss,
                        val_metric=result.metric,
                        host_params=self.setup.host_params,
                        seed_params=env.model.seed_params(),
                        fossilized_params=env.model.fossilized_params(),
                        stage_counts=env.model.stage_counts(),
                        train_seconds=env.train_seconds,
                        validate_seconds=result.seconds,
                        effective_seed_params=env.model.effective_seed_params(),
                        alpha_delta_sq_sum=env.alpha_delta_sq_sum(),
                    ),
                )
            )

    def train_epoch(self, epoch: int) -> None:
        """Every environment steps on batch index b before any steps on b + 1 (inverted control flow)."""
        training = self.config.training
        task = self.setup.task
        batch_size = training.batch_size
        n_batches = task.info.train_size // batch_size  # >= 1: checked by prepare()
        if training.batches_per_epoch:
            n_batches = min(n_batches, training.batches_per_epoch)
        orders = []
        envs = self.all_envs
        for env in envs:
            env.set_epoch(epoch)
            env.begin_training()
            orders.append(task.epoch_order(env.generator))
        for batch_index in range(n_batches):
            start = batch_index * batch_size
            last = batch_index == n_batches - 1
            for env, order in zip(envs, orders):
                inputs, targets = task.train_batch(order[start : start + batch_size], env.generator)
                env.train_step(inputs, targets, measure_gradients=last)

    def _check_stability(self, env: Environment, reason: str) -> None:
        limit = self.config.governor.max_consecutive_rollbacks
        if limit and env.governor.consecutive_rollbacks >= limit:
            raise TrainingUnstable(
                f"environment {env.env_id} rolled back {env.governor.consecutive_rollbacks} epochs in a row "
                f"(last: {reason}); training is unstable, e.g. lower [training] host_lr / seed_lr "
                f"(now {self.config.training.host_lr:g} / {self.config.training.seed_lr:g}), or raise "
                "[governor] max_consecutive_rollbacks"
            )

    def rollback(self, env: Environment, round_index: int, epoch: int, reason: str, train_loss: float, val_loss: float):
        """Restore the governor's snapshot and bring each slot's lifecycle in line with what the event
        record already says: every seed live before the rollback is pruned (reason ``rollback``, then
        the embargo), including one germinated after the snapshot, which the restored weights do not
        hold; a fossil stays a fossil (with the snapshot's weights if it was live then, else freshly
        built, i.e. the identity); a slot with no seed keeps its embargo. Seed ids are never reused."""
        model = env.model
        before = {slot_id: model.slots[slot_id].lifecycle_record() for slot_id in model.slot_ids}
        fossil_order = list(model.fossilization_order)
        germinations = model.germination_count
        restored_epoch = env.governor.restore(model)
        model.germination_count = max(germinations, model.germination_count)
        pruned = []
        for slot_id in model.slot_ids:
            slot, was = model.slots[slot_id], before[slot_id]
            same_seed = slot.seed_id == was.seed_id and slot.seed is not None
            if was.stage is SeedStage.FOSSILIZED:
                if slot.stage is not SeedStage.FOSSILIZED or not same_seed:
                    weights = slot.state_dict() if same_seed else None
                    slot.load_lifecycle_record(was)
                    if weights is not None:
                        slot.load_state_dict(weights)
            elif was.stage in LIVE_STAGES:
                if slot.stage not in LIVE_STAGES or not same_seed:
                    slot.load_lifecycle_record(was)  # a seed the snapshot does not hold: it must be pruned too
                if slot.blend_out:
                    slot.prune_now("rollback")
                else:
                    slot.prune(epochs=0, curve=slot.planned_curve, reason="rollback")
                pruned.append(slot_id)
            elif slot.stage is not was.stage or slot.seed_id != was.seed_id:
                slot.load_lifecycle_record(was)  # no seed before the rollback: an embargo goes on
        model.fossilization_order = [slot_id for slot_id in fossil_order if model.slots[slot_id].stage is SeedStage.FOSSILIZED]
        env.build_optimizers()
        env.set_epoch(epoch)
        env.rolled_back = True
        # observations describe the restored model: its train loss is the snapshot epoch's
        restored_loss = env.governor.snapshot_train_loss
        env.train_loss_history[-1] = restored_loss  # None: rolled back to the untrained model
        self.hub.emit(
            TelemetryEvent(
                TelemetryEventType.GOVERNOR_ROLLBACK,
                payloads.GovernorRollbackPayload(
                    env_id=env.env_id, round=round_index, epoch=epoch, reason=reason,
                    loss=val_loss if val_loss == val_loss else train_loss,
                    restored_epoch=restored_epoch, pruned_slots=tuple(pruned),
                ),
            )
        )
        return env.validate(self.config.training.eval_batch_size)

    def observations(self, round_index: int, epoch: int) -> list[EnvObservation]:
        config = self.config
        return [
            EnvObservation(
                env_id=env.env_id,
                round=round_index,
                epoch=epoch,
                episode_length=config.run.episode_length,
                val_metric=env.metric_history[-1],
                val_loss=env.loss_history[-1],
                train_loss=env.train_loss_history[-1],
                metric_history=tuple(env.metric_history),
                loss_history=tuple(env.loss_history),
                host_params=self.setup.host_params,
                slots=env.model.reports(),
                slot_config=self.setup.slot_config,
                surface_codes=self.setup.all_surface_codes,
                ladder_kind_codes=self.setup.ladder_kind_codes,
                subtarget_count=self.setup.subtarget_count,
                seed_families=self.setup.seed_families,
                max_seeds=self.setup.max_seeds,
                last_action=env.last_action,
                last_action_success=env.last_action_success,
                last_action_reason=env.last_action_reason,
                rolled_back=env.rolled_back,
            )
            for env in self.envs
        ]

    def decide(self, round_index: int, epoch: int) -> None:
        observations = self.observations(round_index, epoch)
        masks = compute_masks(
            [observation.slots for observation in observations],
            num_seed_families=len(self.setup.seed_families),
            max_seeds=self.setup.max_seeds,
            seed_family_allowed=self.setup.seed_family_allowed,
            subtarget_count=self.setup.subtarget_count,
            subtarget_ops=self.config.morphogenesis.subtarget_ops,
            auto_advance=self.config.morphogenesis.auto_advance,
        )
        started = time.perf_counter()
        actions = self.policy.act(observations, masks)
        self.timing["policy_act"] += time.perf_counter() - started
        if len(actions) != len(self.envs):
            raise RuntimeError(
                f"policy '{self.config.policy.name}' returned {len(actions)} actions for {len(self.envs)} environments"
            )
        for env, action, observation in zip(self.envs, actions, observations):
            if not isinstance(action, FactoredAction):
                raise RuntimeError(f"policy '{self.config.policy.name}' returned {action!r}, not a FactoredAction")
            if masks.allows(env.env_id, action):
                try:
                    result = env.model.apply(action, score_now=env.score_history[-1])
                except SeedContractError as exc:  # the seed family broke its contract: the action fails
                    result = OpResult(False, f"seed contract: {exc}")
            else:
                result = None
            success = result is not None and result.success
            reason = "masked: executed as WAIT" if result is None else result.reason
            env.sync_optimizers()
            if success and action.op in (LifecycleOp.GROW_INTERNAL, LifecycleOp.ENABLE_SUBTARGET):
                env.forget_seed_moments(env.model.slot_ids[action.slot])
            env.last_action = action
            env.last_action_success = success
            env.last_action_reason = "" if success else reason
            env.pending = PendingDecision(
                action=action, success=success, metric_at_decision=env.score_history[-1],
                slots_at_decision=observation.slots,
            )
            self.hub.emit(
                TelemetryEvent(
                    TelemetryEventType.ACTION_TAKEN,
                    payloads.ActionTakenPayload(
                        env_id=env.env_id, round=round_index, epoch=epoch,
                        action=action.describe(self.setup.slot_config.slot_ids, self.setup.seed_families),
                        success=success, reason=reason,
                    ),
                )
            )

    def pay_rewards(self, round_index: int, epoch: int) -> None:
        """Reward each environment's previous decision with what this epoch's validation measured."""
        pending = [env.pending for env in self.envs]
        if all(decision is None for decision in pending):
            return
        if any(decision is None for decision in pending):
            raise RuntimeError("environments disagree on whether a decision is pending")
        terminal = epoch == self.config.run.episode_length - 1
        control_metric = control_previous = None
        if self.control is not None:  # the decision was taken one epoch ago
            control_metric, control_previous = self.control.score_history[-1], self.control.score_history[-2]
        rewards = []
        for env, decision in zip(self.envs, pending):
            breakdown = self.reward.compute(
                RewardSignals(
                    env_id=env.env_id,
                    epoch=epoch,
                    episode_length=self.config.run.episode_length,
                    action=decision.action,
                    action_success=decision.success,
                    metric=env.score_history[-1],
                    previous_metric=decision.metric_at_decision,
                    host_params=self.setup.host_params,
                    effective_seed_params=env.model.effective_seed_params(),
                    slots=env.model.reports(),
                    previous_slots=decision.slots_at_decision,
                    terminal=terminal,
                    rolled_back=env.rolled_back,
                    control_metric=control_metric,
                    control_previous_metric=control_previous,
                )
            )
            rewards.append(breakdown.total)
            env.episode_return += breakdown.total
            env.pending = None
            self.hub.emit(
                TelemetryEvent(
                    TelemetryEventType.REWARD_COMPUTED,
                    payloads.RewardComputedPayload(
                        env_id=env.env_id, round=round_index, epoch=epoch,
                        reward=breakdown.total, components=breakdown.components,
                    ),
                )
            )
        self.policy.record(rewards, terminal)

    def finish_round(self, round_index: int) -> None:
        started = time.perf_counter()
        metrics = self.policy.end_episode(round_index)
        self.timing["policy_update"] += time.perf_counter() - started
        if metrics:
            self.hub.emit(
                TelemetryEvent(
                    TelemetryEventType.POLICY_UPDATED,
                    payloads.PolicyUpdatedPayload(round=round_index, metrics=dict(metrics)),
                )
            )
            found = detect_policy_anomalies(
                metrics, self.value_losses, self.config.anomalies, round_index=round_index,
                head_sizes=action_head_sizes(
                    len(self.setup.slot_config.slot_ids), len(self.setup.seed_families), self.setup.subtarget_count
                ),
            )
            for event in anomaly_events(found):
                self.hub.emit(event)
            if VALUE_LOSS_METRIC in metrics:
                self.value_losses.append(float(metrics[VALUE_LOSS_METRIC]))
        self.hub.emit(
            TelemetryEvent(
                TelemetryEventType.ROUND_COMPLETED,
                payloads.RoundCompletedPayload(
                    round=round_index,
                    final_metrics=tuple(env.metric_history[-1] for env in self.envs),
                    final_params=tuple(
                        self.setup.host_params + env.model.seed_params() + env.model.fossilized_params()
                        for env in self.envs
                    ),
                    mean_return=(
                        sum(env.episode_return for env in self.envs) / len(self.envs)
                        if self.config.run.episode_length > 1
                        else None  # a one-epoch episode has no decision to reward
                    ),
                    seconds=dict(self.timing),
                    control_metric=None if self.control is None else self.control.metric_history[-1],
                    control_val_loss=None if self.control is None else self.control.loss_history[-1],
                ),
            )
        )

    # -- checkpoints -------------------------------------------------------------------------------

    def checkpoint(self, point: ResumePoint) -> None:
        self.hub.flush()
        rng = rng_state()
        checkpoint = EngineCheckpoint(
            round=point.round,
            epoch=point.epoch,
            env_states=point.env_states,
            events=self.mark_events(self.hub.record_bytes()),
            policy=self.policy.state_dict(),
            value_losses=list(self.value_losses),
            rng=RngState(python=rng["python"], numpy=rng["numpy"], torch=rng["torch"]),
        )
        state = checkpoint_to_dict(checkpoint)
        directory = self.run_dir / CHECKPOINT_DIR
        save_checkpoint(directory / LATEST_CHECKPOINT, state)
        if point.env_states is None:
            save_checkpoint(directory / f"round_{point.round:04d}.pt", state)

    def mark_events(self, size: int) -> EventRecordMark:
        """Extend the running hash of events.jsonl to its first ``size`` bytes (reading only what is new)."""
        with open(self.run_dir / EVENTS_FILE, "rb") as handle:
            handle.seek(self.events_hashed)
            new = handle.read(size - self.events_hashed)
        self.events_hash.update(new)
        self.events_hashed += len(new)
        self.events_lines += new.count(b"\n")
        return EventRecordMark(bytes=self.events_hashed, lines=self.events_lines, sha256=self.events_hash.hexdigest())


# --------------------------------------------------------------------------------------------------
# starting and resuming runs


def _build_sinks(config: RunConfig, manager: PluginManager, context: SinkContext) -> dict[str, Any]:
    sinks = {}
    for name, options in config.sinks.items():
        kind = manager.lookup("telemetry_sinks", name)
        sinks[name] = kind.build(options, context)
    return sinks


def build_policy_and_reward(setup: RunSetup, manager: PluginManager) -> tuple[Policy, RewardFunction]:
    config = setup.config
    policy_kind = manager.lookup("policies", config.policy.name)
    policy = policy_kind.build(
        config.policy.options,
        PolicyContext(
            slot_config=setup.slot_config,
            seed_families=setup.seed_families,
            surface_codes=setup.surface_codes,
            n_envs=config.run.envs,
            episode_length=config.run.episode_length,
            max_seeds=setup.max_seeds,
            lifecycle=LifecycleSettings(
                embargo_epochs=config.morphogenesis.embargo_epochs,
                min_training_epochs=config.morphogenesis.min_training_epochs,
                auto_advance=config.morphogenesis.auto_advance,
            ),
            task_info=setup.task.info,
            device=setup.device,
            seed=config.run.seed,
            seed_family_params=setup.seed_family_params,
            subtarget_count=setup.subtarget_count,
        ),
    )
    reward_kind = manager.lookup("rewards", config.reward.name)
    reward = reward_kind.build(
        config.reward.options,
        RewardContext(
            episode_length=config.run.episode_length,
            host_params=setup.host_params,
            metric_name=setup.task.info.metric_name,
        ),
    )
    return policy, reward


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm, Kubernetes and ``kill`` send), raised where the run is: it ends as Ctrl-C does."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated`` (a KeyboardInterrupt), so a run ends as on Ctrl-C:
    RUN_FINISHED (aborted), summary.json, resumable. A second SIGTERM during that cleanup is ignored.
    Does nothing outside the main thread (signal handlers live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: ``[run] torch_threads`` when the config leaves it out: one thread per process (docs/benchmarks.md,
#: "Threads": on a loaded machine more threads collapse throughput, and results never depend on it)
DEFAULT_TORCH_THREADS = 1


def apply_torch_threads(configured: int | None) -> int:
    """Set torch's intra-op thread count (the config's, else ``DEFAULT_TORCH_THREADS``); returns it."""
    threads = DEFAULT_TORCH_THREADS if configured is None else configured
    torch.set_num_threads(threads)
    return threads


def _execute(engine: Engine, start: ResumePoint, hub: TelemetryHub, run_dir: Path, lock: RunLock) -> Path:
    status, error = "completed", None
    try:
        engine.run(start)
    except RunAborted as exc:
        status, error = "aborted", str(exc)
        raise
    except KeyboardInterrupt as exc:
        how = " by SIGTERM" if isinstance(exc, Terminated) else ""
        status, error = "aborted", f"interrupted{how}; resume with: esper run --resume {run_dir}"
        raise
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            hub.emit(
                TelemetryEvent(
                    TelemetryEventType.RUN_FINISHED,
                    payloads.RunFinishedPayload(
                        status=status,
                        rounds_completed=engine.rounds_completed,
                        wall_seconds=time.perf_counter() - engine.started,
                        error=error,
                    ),
                )
            )
            hub.close()
            write_json(run_dir / SUMMARY_FILE, summarize_run(run_dir))
        finally:
            lock.release()
    return run_dir


def start_run(config: RunConfig, manager: PluginManager, *, on_run_dir: Callable[[Path], None] | None = None) -> Path:
    """Build everything from ``config``, create a fresh run directory (locked while the run lives), and run
    to the end."""
    apply_torch_threads(config.run.torch_threads)
    check_output_dir(Path(config.run.output_dir))
    seed_everything(config.run.seed)
    setup = prepare(config, manager)
    policy, reward = build_policy_and_reward(setup, manager)  # before the run directory: bad options fail clean
    run_dir = create_run_dir(Path(config.run.output_dir), config.task.name, config.run.name, config.run.seed)
    lock = RunLock(run_dir).acquire()
    try:
        if on_run_dir is not None:
            on_run_dir(run_dir)
        write_config(config, run_dir / CONFIG_FILE)
        write_json(
            run_dir / ENVIRONMENT_FILE,
            environment_record(config.run.seed, distribution_versions(manager), str(setup.device)),
        )
        context = SinkContext(
            run_dir=run_dir, run_name=config.run.name, rounds=config.run.rounds,
            envs=config.run.envs, episode_length=config.run.episode_length,
        )
        hub = TelemetryHub(run_dir / EVENTS_FILE, _build_sinks(config, manager, context))
    except BaseException:
        lock.release()
        raise
    engine = Engine(setup, manager, run_dir, hub, policy, reward)
    hub.emit(
        TelemetryEvent(
            TelemetryEventType.RUN_STARTED,
            payloads.RunStartedPayload(
                run_name=config.run.name, run_dir=str(run_dir), task=config.task.name,
                host=config.host.name, policy=config.policy.name, reward=config.reward.name,
                seed=config.run.seed, rounds=config.run.rounds, envs=config.run.envs,
                episode_length=config.run.episode_length, slots=setup.slot_config.slot_ids,
                blueprints=setup.seed_families, host_params=setup.host_params, device=str(setup.device),
                slot_surfaces=tuple(spec.surface for spec in setup.slot_config.specs),
                score_basis=setup.task.info.score_basis,
                torch_threads=torch.get_num_threads(),
            ),
        )
    )
    return _execute(engine, ResumePoint(0, 0, None), hub, run_dir, lock)


def resume_run(run_dir: Path, manager: PluginManager) -> Path:
    """Continue a killed or aborted run from its latest checkpoint; the result equals an uninterrupted run.

    The run directory is locked first (a second resume exits naming this one's PID); then everything is
    checked — the saved config, environment.json, the checkpoint's hash and schema, events.jsonl against
    the checkpoint's record of it, the policy's and every environment's state — before anything on
    disk changes."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"'{run_dir}' is not an Esper run directory (no {CONFIG_FILE})")
    lock = RunLock(run_dir).acquire()
    try:
        engine, start, hub = _prepare_resume(run_dir, manager)
    except BaseException:
        lock.release()
        raise
    return _execute(engine, start, hub, run_dir, lock)


def _prepare_resume(run_dir: Path, manager: PluginManager) -> tuple[Engine, ResumePoint, TelemetryHub]:
    for name in (ENVIRONMENT_FILE, EVENTS_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"run '{run_dir}' cannot be resumed: its {name} is missing; nothing was changed")
    config = _load_saved_config(run_dir / CONFIG_FILE, manager)
    latest = run_dir / CHECKPOINT_DIR / LATEST_CHECKPOINT
    if not latest.exists():
        raise CheckpointError(
            f"run '{run_dir}' stopped before its first checkpoint, so there is nothing to resume; "
            f"start it again with: esper run {run_dir / CONFIG_FILE}"
        )
    checkpoint = checkpoint_from_dict(load_checkpoint(latest), latest)
    if checkpoint.round >= config.run.rounds:
        raise CheckpointError(f"run '{run_dir}' already finished all {config.run.rounds} rounds; nothing to resume")
    recorded_versions = _recorded_versions(run_dir / ENVIRONMENT_FILE)
    events_hash = _verify_events(run_dir / EVENTS_FILE, checkpoint.events)
    apply_torch_threads(config.run.torch_threads)
    seed_everything(config.run.seed)
    setup = prepare(config, manager)
    policy, reward = build_policy_and_reward(setup, manager)
    try:
        policy.load_state_dict(checkpoint.policy)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        message = " ".join(str(exc).split())
        raise CheckpointError(
            f"the checkpoint in '{run_dir}' does not match policy '{config.policy.name}' ({type(exc).__name__}: {message})"
        ) from None
    engine = Engine(setup, manager, run_dir, TelemetryHub(None), policy, reward)
    engine.value_losses = list(checkpoint.value_losses)
    start = ResumePoint(checkpoint.round, checkpoint.epoch, checkpoint.env_states)
    if start.env_states is not None:
        engine.restore(start)
    # every check passed: from here on the run directory changes
    _warn_version_changes(recorded_versions, manager)
    discarded = _truncate_events(run_dir, checkpoint.events.bytes)
    context = SinkContext(
        run_dir=run_dir, run_name=config.run.name, rounds=config.run.rounds,
        envs=config.run.envs, episode_length=config.run.episode_length, start_round=checkpoint.round,
    )
    hub = TelemetryHub(run_dir / EVENTS_FILE, _build_sinks(config, manager, context))
    hub.count = checkpoint.events.lines
    engine.hub = hub
    engine.events_hash = events_hash
    engine.events_hashed = checkpoint.events.bytes
    engine.events_lines = checkpoint.events.lines
    hub.emit(
        TelemetryEvent(
            TelemetryEventType.RUN_RESUMED,
            payloads.RunResumedPayload(round=checkpoint.round, epoch=checkpoint.epoch, discarded_events=discarded),
        )
    )
    set_rng_state(attrs.asdict(checkpoint.rng, recurse=False))
    return engine, start, hub


def _load_saved_config(path: Path, manager: PluginManager) -> RunConfig:
    """The run's saved config; a damaged file (unreadable, not UTF-8, not TOML) is one CheckpointError line."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"the run's saved config '{path}' cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"the run's saved config '{path}' is damaged: byte {exc.object[exc.start]:#04x} at offset {exc.start} "
            "is not UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise CheckpointError(f"the run's saved config '{path}' is damaged: {exc}") from None
    return parse_config(data, manager, source=str(path))


def _recorded_versions(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        versions = record["versions"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"'{path}' is damaged ({type(exc).__name__}); nothing was changed") from None
    if not isinstance(versions, dict):
        raise CheckpointError(f"'{path}' is damaged (versions is not a table); nothing was changed")
    return versions


def _verify_events(path: Path, mark: EventRecordMark) -> Any:
    """Check that ``events.jsonl`` starts with exactly the record the checkpoint covers; return the sha256
    object at that point (the engine goes on hashing from it). Lines past the mark, a torn one included,
    are cut later; a shorter or different record is refused."""
    size = path.stat().st_size
    if size < mark.bytes:
        raise CheckpointError(
            f"'{path}' is shorter ({size} bytes) than the {mark.bytes} bytes its checkpoint covers: the event "
            "record was cut or replaced, so this run cannot be resumed; nothing was changed"
        )
    digest, lines, remaining = hashlib.sha256(), 0, mark.bytes
    with open(path, "rb") as handle:
        while remaining:
            chunk = handle.read(min(1 << 20, remaining))
            digest.update(chunk)
            lines += chunk.count(b"\n")
            remaining -= len(chunk)
    if lines != mark.lines or digest.hexdigest() != mark.sha256:
        raise CheckpointError(
            f"'{path}' differs from the event record its checkpoint covers (the first {mark.bytes} bytes, "
            f"{mark.lines} events): it was edited or replaced, so this run cannot be resumed; nothing was changed"
        )
    return digest


def _warn_version_changes(recorded: dict[str, Any], manager: PluginManager) -> None:
    """Say on stderr which distributions changed version since the run started (results may differ)."""
    current = distribution_versions(manager)
    changed = [f"{name} {recorded.get(name)} -> {version}" for name, version in current.items() if recorded.get(name) != version]
    if changed:
        print(f"esper: warning: resuming with different versions ({'; '.join(changed)}); "
              "the result may differ from an uninterrupted run", file=sys.stderr)


def _truncate_events(run_dir: Path, offset: int) -> int:
    """Cut ``events.jsonl`` back to the checkpoint; the cut lines (a torn last line from a kill included,
    completed with a newline) are kept in ``events.discarded.jsonl``."""
    path = run_dir / EVENTS_FILE
    with open(path, "rb") as handle:
        handle.seek(offset)
        tail = handle.read()
    if tail:
        with open(run_dir / DISCARDED_EVENTS_FILE, "ab") as handle:
            handle.write(tail if tail.endswith(b"\n") else tail + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        with open(path, "r+b") as handle:
            handle.truncate(offset)
    return tail.count(b"\n") + (0 if not tail or tail.endswith(b"\n") else 1)
