"""Checks that a plugin's components meet the core contracts; each raises ConformanceError saying what broke."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from esper_core.kasmina.host import check_host
from esper_core.leyline import (
    EVENT_PAYLOADS,
    SeedStage,
    TelemetryEvent,
    TelemetryEventType,
)
from esper_core.leyline import telemetry as payloads
from esper_core.registry import HostFamily, SeedFamily, SinkKind, TaskKind
from esper_core.tasks import Task, TaskContext, TaskInfo
from esper_core.telemetry import SinkContext


class ConformanceError(AssertionError):
    """A component breaks a core contract."""


def _sample_input(topology: str, channels: int, batch: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    if topology == "image":
        return torch.randn(batch, channels, 8, 8, generator=generator)
    if topology == "sequence":
        return torch.randn(batch, 6, channels, generator=generator)
    raise ConformanceError(f"no sample input for topology {topology!r}")


def check_seed_family(
    family: SeedFamily,
    *,
    channels: int = 16,
    config: Any = None,
    atol: float = 1e-6,
) -> None:
    """A seed family is shape-preserving, the identity at birth, deterministic, and trainable.

    Runs for every topology the family declares; a family with a ladder also runs
    ``check_ladder_family``.
    """
    if family.ladder is not None:
        check_ladder_family(family, channels=channels, config=config, atol=atol)
    config = family.config_class() if config is None else config
    for topology in family.topologies:
        x = _sample_input(topology, channels)
        torch.manual_seed(0)
        seed_a = family.build(channels, topology, config)
        torch.manual_seed(0)
        seed_b = family.build(channels, topology, config)
        if not isinstance(seed_a, torch.nn.Module):
            raise ConformanceError(f"seed family '{family.name}' built {type(seed_a).__name__}, not an nn.Module")
        for mode in ("train", "eval"):
            seed_a.train(mode == "train")
            seed_b.train(mode == "train")
            out_a = seed_a(x)
            out_b = seed_b(x)
            if out_a.shape != x.shape:
                raise ConformanceError(
                    f"seed family '{family.name}' ({topology}, {mode}) is not shape-preserving: "
                    f"{tuple(x.shape)} -> {tuple(out_a.shape)}"
                )
            if not torch.allclose(out_a, x, atol=atol):
                gap = (out_a - x).abs().max().item()
                raise ConformanceError(
                    f"seed family '{family.name}' ({topology}, {mode}) is not the identity at birth "
                    f"(max |seed(x) - x| = {gap:.3g})"
                )
            if not torch.equal(out_a, out_b):
                raise ConformanceError(
                    f"seed family '{family.name}' ({topology}, {mode}) is not deterministic under a fixed torch seed"
                )
        seed_a.eval()
        single = x[:1]
        if not torch.allclose(seed_a(single), single, atol=atol):
            raise ConformanceError(
                f"seed family '{family.name}' ({topology}, eval) is not the identity at birth for a batch of one"
            )
        params = [p for p in seed_a.parameters() if p.requires_grad]
        if not params:
            raise ConformanceError(f"seed family '{family.name}' has no trainable parameters")
        seed_a.train()
        seed_a.zero_grad()
        target = torch.randn_like(x)
        ((seed_a(x) - target) ** 2).mean().backward()
        if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params):
            raise ConformanceError(f"seed family '{family.name}' ({topology}) receives no gradient at birth")


def _perturbed(module: torch.nn.Module, seed: int = 99, scale: float = 0.3) -> torch.nn.Module:
    """Add noise to every parameter (so zero-initialised layers start to matter)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return module


def check_ladder_family(family: SeedFamily, *, channels: int = 16, config: Any = None, atol: float = 1e-6) -> None:
    """A ladder seed family keeps the LadderModule contract (see esper_core.kasmina.LadderModule):
    the declared kind and levels; level 0 is the identity; parameters in use are 0 at level 0 and
    non-decreasing in level; level changes allocate nothing and are deterministic; capacity above the
    current level never influences the output; growing a level does not change the output."""
    from esper_core.kasmina import LadderModule

    spec = family.ladder
    if spec is None:
        raise ConformanceError(f"seed family '{family.name}' declares no ladder")
    config = family.config_class() if config is None else config
    for topology in family.topologies:
        x = _sample_input(topology, channels)
        torch.manual_seed(0)
        seed = family.build(channels, topology, config)
        if not isinstance(seed, LadderModule):
            raise ConformanceError(f"seed family '{family.name}' declares a ladder but builds no LadderModule")
        if (seed.internal_kind, seed.internal_max_level, seed.internal_level) != (spec.kind, spec.max_level, spec.initial_level):
            raise ConformanceError(
                f"seed family '{family.name}': module ladder {seed.internal_kind!r}, max {seed.internal_max_level}, "
                f"level {seed.internal_level} differs from the declared {spec}"
            )
        counts = [seed.internal_effective_params(level) for level in range(spec.max_level + 1)]
        if counts[0] != 0 or any(b < a for a, b in zip(counts, counts[1:])):
            raise ConformanceError(f"seed family '{family.name}': effective params per level {counts} must start at 0 and never fall")
        if counts[-1] <= 0:
            raise ConformanceError(f"seed family '{family.name}': the top level uses no parameters")
        parameter_ids = [id(p) for p in seed.parameters()]
        _perturbed(seed).eval()
        with torch.no_grad():
            seed.set_internal_level(0)
            if not torch.allclose(seed(x), x, atol=atol):
                raise ConformanceError(f"seed family '{family.name}' ({topology}) is not the identity at level 0")
            for level in range(spec.max_level):
                seed.set_internal_level(level)
                before = seed(x)
                seed.set_internal_level(level + 1)
                if seed.internal_level != level + 1:
                    raise ConformanceError(f"seed family '{family.name}': set_internal_level({level + 1}) did not take")
                after = seed(x)
                if not torch.allclose(before, after, atol=atol):
                    gap = (before - after).abs().max().item()
                    raise ConformanceError(
                        f"seed family '{family.name}' ({topology}): growing to level {level + 1} changes the output "
                        f"(max {gap:.3g}); new capacity must enter at zero"
                    )
                _perturbed(seed, seed=level)  # the new capacity learns something before the next step
        if [id(p) for p in seed.parameters()] != parameter_ids:
            raise ConformanceError(f"seed family '{family.name}': level changes allocated or freed parameters")
        for level in range(spec.max_level):
            seed.set_internal_level(level)
            seed.zero_grad()
            out = seed(x)
            if out.requires_grad:  # at level 0 nothing runs: every parameter is inactive
                (out * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
            inactive = [p for p in seed.parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
            with torch.no_grad():
                reference = seed(x)
                saved = [p.detach().clone() for p in inactive]
                for parameter in inactive:
                    parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7)) * 5.0)
                changed = seed(x)
                for parameter, value in zip(inactive, saved):
                    parameter.copy_(value)
            if not torch.allclose(reference, changed, atol=atol):
                raise ConformanceError(
                    f"seed family '{family.name}' ({topology}): at level {level} the output depends on parameters "
                    "that receive no gradient there (inactive capacity must be inert)"
                )
        torch.manual_seed(0)
        twin_a = _perturbed(family.build(channels, topology, config)).eval()
        torch.manual_seed(0)
        twin_b = _perturbed(family.build(channels, topology, config)).eval()
        with torch.no_grad():
            for level in [spec.max_level, 0, 1, spec.max_level]:
                twin_a.set_internal_level(level)
                twin_b.set_internal_level(level)
                if not torch.equal(twin_a(x), twin_b(x)):
                    raise ConformanceError(f"seed family '{family.name}': level changes are not deterministic")


def check_host_family(
    family: HostFamily,
    task_info: TaskInfo,
    *,
    config: Any = None,
    batch: int = 4,
    atol: float = 1e-5,
) -> None:
    """A host's specs are ordered and routable: chaining ``forward_to``/``forward_from`` through
    every slot (and through subsets) equals ``forward``; activations match each spec's channels;
    an unknown slot or a backwards ``from_slot`` raises ``KeyError`` / ``ValueError``."""
    config = family.config_class() if config is None else config
    torch.manual_seed(0)
    host = family.build(config, task_info)
    specs = check_host(host, family.name)
    host.eval()
    generator = torch.Generator().manual_seed(7)
    if task_info.topology == "sequence":  # token ids
        x = torch.randint(0, task_info.num_classes, (batch, *task_info.input_shape), generator=generator)
    else:
        x = torch.randn(batch, *task_info.input_shape, generator=generator)
    channel_dim = 1 if family.topology == "image" else -1
    with torch.no_grad():
        reference = host(x)
        for subset in (specs, specs[::2], specs[-1:]):
            h = x
            previous = None
            for spec in subset:
                h = host.forward_to(spec.slot_id, h, from_slot=previous)
                if h.shape[channel_dim] != spec.channels:
                    raise ConformanceError(
                        f"host '{family.name}': activation at {spec.slot_id} has {h.shape[channel_dim]} "
                        f"channels, spec says {spec.channels}"
                    )
                previous = spec.slot_id
            routed = host.forward_from(previous, h)
            if routed.shape != reference.shape or not torch.allclose(routed, reference, atol=atol):
                raise ConformanceError(
                    f"host '{family.name}': routing through {[s.slot_id for s in subset]} differs from forward()"
                )
        bad_calls = [("an unknown slot id", lambda: host.forward_to("no-such-slot", x))]
        if len(specs) > 1:
            bad_calls.append(
                ("a backwards from_slot", lambda: host.forward_to(specs[0].slot_id, x, from_slot=specs[-1].slot_id))
            )
        for label, call in bad_calls:
            try:
                call()
            except (KeyError, ValueError):
                continue
            raise ConformanceError(f"host '{family.name}': routing with {label} did not raise")


def check_task_kind(kind: TaskKind, *, config: Any = None, batch_size: int = 8) -> Task:
    """A task builds, reports consistent info, yields batches of the declared shape, and scores them."""
    config = kind.config_class() if config is None else config
    task = kind.build(config, TaskContext(device=torch.device("cpu"), seed=0))
    info = task.info
    generator = torch.Generator().manual_seed(0)
    order = task.epoch_order(generator)
    if sorted(order.tolist()) != list(range(info.train_size)):
        raise ConformanceError(f"task '{kind.name}': epoch_order is not a permutation of {info.train_size} indices")
    x, y = task.train_batch(order[:batch_size], generator)
    if tuple(x.shape[1:]) != info.input_shape:
        raise ConformanceError(f"task '{kind.name}': batch shape {tuple(x.shape)} vs input_shape {info.input_shape}")
    val = task.validation_batches(batch_size)
    if sum(int(vx.shape[0]) for vx, _ in val) != info.val_size:
        raise ConformanceError(f"task '{kind.name}': validation batches do not cover val_size {info.val_size}")
    again = task.validation_batches(batch_size)
    if not all(torch.equal(a[0], b[0]) for a, b in zip(val, again)):
        raise ConformanceError(f"task '{kind.name}': validation set changes between calls")
    logits = torch.zeros(2, *y.shape, info.num_classes)  # (variants, batch[, time], classes)
    loss_sums, metric_sums = task.score(logits, y)
    if loss_sums.shape != (2,) or metric_sums.shape != (2,):
        raise ConformanceError(f"task '{kind.name}': score() must return per-variant sums of shape (V,)")
    if not bool(torch.isfinite(loss_sums).all()) or not all(0 <= float(m) <= x.shape[0] for m in metric_sums):
        raise ConformanceError(f"task '{kind.name}': score() gave losses {loss_sums} metrics {metric_sums}")
    return task


def sample_events() -> list[TelemetryEvent]:
    """One event of every type with plausible payloads (for sink tests)."""
    common = {"env_id": 0, "round": 0, "epoch": 1}
    seed = {"slot_id": "r0c0", "seed_id": "r0e0-r0c0-0", "blueprint_id": "norm"}
    samples: dict[TelemetryEventType, Any] = {
        TelemetryEventType.RUN_STARTED: payloads.RunStartedPayload(
            run_name="sample", run_dir="/tmp/sample", task="shapes", host="cnn", policy="heuristic",
            reward="basic", seed=0, rounds=1, envs=1, episode_length=3, slots=("r0c0",),
            blueprints=("norm",), host_params=1000, device="cpu", slot_surfaces=("segment_boundary",),
            score_basis="metric",
        ),
        TelemetryEventType.RUN_RESUMED: payloads.RunResumedPayload(round=0, epoch=1, discarded_events=2),
        TelemetryEventType.RUN_FINISHED: payloads.RunFinishedPayload(
            status="completed", rounds_completed=1, wall_seconds=1.5
        ),
        TelemetryEventType.ROUND_COMPLETED: payloads.RoundCompletedPayload(
            round=0, final_metrics=(0.5,), final_params=(1000,), mean_return=None
        ),
        TelemetryEventType.EPOCH_COMPLETED: payloads.EpochCompletedPayload(
            train_loss=1.0, val_loss=1.1, val_metric=0.5, host_params=1000, seed_params=10,
            fossilized_params=0, stage_counts={"DORMANT": 1}, train_seconds=0.1, validate_seconds=0.05,
            effective_seed_params=0.0, alpha_delta_sq_sum=0.0, **common,
        ),
        TelemetryEventType.ACTION_TAKEN: payloads.ActionTakenPayload(
            action={"op": "WAIT"}, success=True, **common
        ),
        TelemetryEventType.REWARD_COMPUTED: payloads.RewardComputedPayload(
            reward=0.1, components={"metric_gain": 0.1}, **common
        ),
        TelemetryEventType.SEED_GERMINATED: payloads.SeedGerminatedPayload(
            style="ADD", alpha_target=1.0, seed_params=10, built_params=10, **common, **seed
        ),
        TelemetryEventType.SEED_STAGE_CHANGED: payloads.SeedStageChangedPayload(
            from_stage=SeedStage.GERMINATED, to_stage=SeedStage.TRAINING, **common, **seed
        ),
        TelemetryEventType.SEED_FOSSILIZED: payloads.SeedFossilizedPayload(
            seed_params=10, alpha=1.0, contribution=0.02, seed_age_epochs=6, **common, **seed
        ),
        TelemetryEventType.SEED_PRUNED: payloads.SeedPrunedPayload(
            reason="policy", contribution=-0.01, seed_age_epochs=4, **common, **seed
        ),
        TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED: payloads.SeedInternalLevelChangedPayload(
            from_level=1, to_level=2, internal_effective_params=2000, **common, **seed
        ),
        TelemetryEventType.GOVERNOR_ROLLBACK: payloads.GovernorRollbackPayload(
            reason="non-finite loss", loss=float("nan"), restored_epoch=0, pruned_slots=("r0c0",), **common
        ),
        TelemetryEventType.POLICY_UPDATED: payloads.PolicyUpdatedPayload(round=0, metrics={"losses/policy_loss": 0.1}),
    }
    missing = set(EVENT_PAYLOADS) - set(samples)
    if missing:
        raise ConformanceError(f"sample_events lacks {sorted(t.value for t in missing)}")
    return [TelemetryEvent(event_type=kind, payload=payload) for kind, payload in samples.items()]


def check_sink_kind(kind: SinkKind, run_dir: Path, *, config: Any = None) -> Any:
    """A sink accepts every event type, flushes and closes; returns the sink for further checks."""
    config = kind.config_class() if config is None else config
    run_dir.mkdir(parents=True, exist_ok=True)
    sink = kind.build(config, SinkContext(run_dir=run_dir, run_name="sample", rounds=1, envs=1, episode_length=3))
    for event in sample_events():
        try:
            sink.handle(event)
        except Exception as exc:
            raise ConformanceError(
                f"sink '{kind.name}' failed on {event.event_type.value}: {type(exc).__name__}: {exc}"
            ) from exc
    sink.flush()
    sink.close()
    return sink


def config_with(config_class: type, **changes: Any) -> Any:
    """An instance of ``config_class`` with defaults and ``changes`` (a small test helper)."""
    return attrs.evolve(config_class(), **changes)
