"""Builders for tests of plugins: policy inputs (contexts, slot reports, observations, masks) and toy-engine runs (configs, events, checkpoints).

Three parts, all importable from ``esper_core.testing``:

- **A policy on its own.** ``policy_context`` builds what a policy's ``build`` receives (three
  slots ``SLOT_IDS``, three seed families ``SEED_FAMILIES``); ``slot_report``, ``observation`` and
  ``action_masks`` build one decision's inputs, so ``act`` can be driven without an engine.
- **A plugin's records on their own.** ``registered_records(plugin, "hosts")`` calls one hook of a
  plugin and returns what it registered, by name; ``task_info`` describes a task for building a host
  without one.
- **A policy, reward or sink through the real engine.** ``toy_plugin_manager`` loads the toy
  plugin (``esper_core.testing.toy_plugin``: host, task, scripted policy and memory sink that train in
  milliseconds) next to the plugins under test; ``toy_run_data`` writes a small run config for it;
  ``start_run`` and ``resume_run`` are the engine's own entry points (what ``esper run`` calls) and
  ``engine_policy`` builds the policy a run would use; ``events_of``, ``policy_updates``,
  ``final_checkpoint``, ``comparable`` and ``same_state`` read and compare what a run wrote
  (exact-resume tests compare a resumed run with an uninterrupted one).

Every builder is deterministic and takes keywords for anything a test wants to vary.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from esper_core.kasmina.slot import LifecycleSettings
from esper_core.leyline import SEGMENT_BOUNDARY, InjectionSpec, SeedMetrics, SeedStage, SeedStateReport, SlotConfig
from esper_core.plugins import PluginManager
from esper_core.registry import KINDS
from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT, load_checkpoint
from esper_core.tamiyo.policy import PolicyContext
from esper_core.tamiyo.masks import ActionMasks, compute_masks
from esper_core.tamiyo.observation import EnvObservation
from esper_core.tasks import TaskInfo
from esper_core.telemetry.report import read_events
from esper_core.tolaria.engine import build_policy_and_reward, prepare, resume_run, start_run

__all__ = [
    "SEED_FAMILIES",
    "SLOT_IDS",
    "TOY_RUN",
    "action_masks",
    "comparable",
    "engine_policy",
    "events_of",
    "family_params",
    "final_checkpoint",
    "flat_history",
    "merge_sections",
    "observation",
    "policy_context",
    "policy_updates",
    "registered_records",
    "resume_run",
    "rising_history",
    "same_state",
    "slot_config",
    "slot_report",
    "start_run",
    "task_info",
    "toy_plugin_manager",
    "toy_run_data",
]

#: The slots of ``policy_context`` and ``observation``: one segment boundary after each of three blocks.
SLOT_IDS: tuple[str, ...] = ("r0c0", "r0c1", "r0c2")
#: The seed families of ``policy_context`` (its ``seed_families``), smallest first (see ``family_params``).
SEED_FAMILIES: tuple[str, ...] = ("conv_light", "conv_heavy", "attention")

# -- a policy on its own -------------------------------------------------------------------------------


def family_params(seed_families: Sequence[str] = SEED_FAMILIES) -> tuple[int, ...]:
    """The default size at birth of each seed family: 100 x (its index + 1)."""
    return tuple(100 * (index + 1) for index in range(len(seed_families)))


def slot_config(slot_ids: Sequence[str] = SLOT_IDS, channels: int = 8) -> SlotConfig:
    """Segment-boundary slots in the order given, one per host block."""
    return SlotConfig.from_specs([
        InjectionSpec(slot_id=slot_id, channels=channels, surface=SEGMENT_BOUNDARY, order=index, host_block=index)
        for index, slot_id in enumerate(slot_ids)
    ])


def policy_context(
    *,
    n_envs: int = 1,
    seed: int = 0,
    episode_length: int = 10,
    max_seeds: int = 3,
    slot_ids: Sequence[str] = SLOT_IDS,
    seed_families: Sequence[str] = SEED_FAMILIES,
    sizes: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    subtarget_count: int = 1,
) -> PolicyContext:
    """A policy context for an image task (3x8x8 inputs, 10 classes); ``sizes`` (one per seed family, the
    same in every slot) defaults to ``family_params``; embargo 3 and 2 minimum training epochs;
    ``subtarget_count`` is the ``subtarget`` head size K."""
    per_family = family_params(seed_families) if sizes is None else tuple(sizes)
    return PolicyContext(
        slot_config=slot_config(slot_ids),
        seed_families=tuple(seed_families),
        surface_codes={SEGMENT_BOUNDARY: 0},
        n_envs=n_envs,
        episode_length=episode_length,
        max_seeds=max_seeds,
        lifecycle=LifecycleSettings(embargo_epochs=3, min_training_epochs=2),
        task_info=TaskInfo(
            name="toy", topology="image", input_shape=(3, 8, 8), num_classes=10,
            metric_name="accuracy", train_size=64, val_size=32,
        ),
        device=torch.device(device),
        seed=seed,
        seed_family_params=tuple(per_family for _ in slot_ids),
        subtarget_count=subtarget_count,
    )


def slot_report(
    slot: int,
    stage: SeedStage = SeedStage.DORMANT,
    *,
    env_id: int = 0,
    family: str | None = None,
    seed_id: str | None = None,
    alpha: float = 0.0,
    blend_out: bool = False,
    seed_params: int | None = None,
    effective_params: float = 0.0,
    contribution: float | None = None,
    epochs_in_stage: int = 0,
    seed_age_epochs: int | None = None,
    slot_ids: Sequence[str] = SLOT_IDS,
    seed_families: Sequence[str] = SEED_FAMILIES,
    subtarget_mask: Sequence[bool] | None = None,
    subtarget_kind: str = "cnn_channel_group",
    subtarget_importance: Sequence[float] | None = None,
    epochs_since_subtarget_change: int | None = None,
) -> SeedStateReport:
    """The report of slot number ``slot``; any stage but DORMANT carries a seed: ``family`` (default the
    first seed family), ``seed_id`` (default ``seed-<slot id>``), ``seed_params`` (default the family's
    ``family_params`` size) and ``seed_age_epochs`` (default ``epochs_in_stage``). A seed with
    ``subtarget_mask`` (its K groups, True = enabled) has an inventory of ``subtarget_kind`` with
    ``subtarget_importance`` (default all 0.0)."""
    has_seed = stage is not SeedStage.DORMANT
    family = (family or seed_families[0]) if has_seed else None
    if seed_params is None:
        seed_params = family_params(seed_families)[list(seed_families).index(family)] if family in seed_families else 0
    return SeedStateReport(
        env_id=env_id,
        slot_id=slot_ids[slot],
        stage=stage,
        seed_id=(seed_id or f"seed-{slot_ids[slot]}") if has_seed else None,
        blueprint_id=family,
        alpha=alpha,
        blend_out=blend_out,
        seed_params=seed_params if has_seed else 0,
        effective_params=effective_params,
        **_inventory_fields(
            subtarget_mask if has_seed else None, subtarget_kind, subtarget_importance, epochs_since_subtarget_change
        ),
        metrics=SeedMetrics(
            counterfactual_contribution=contribution,
            epochs_in_stage=epochs_in_stage,
            seed_age_epochs=epochs_in_stage if seed_age_epochs is None else seed_age_epochs,
        ),
    )


def _inventory_fields(
    mask: Sequence[bool] | None,
    kind: str,
    importance: Sequence[float] | None,
    epochs_since_change: int | None,
) -> dict[str, object]:
    if mask is None:
        return {}
    active = tuple(bool(entry) for entry in mask)
    return {
        "subtarget_kind": kind,
        "subtarget_count": len(active),
        "subtarget_active_count": sum(active),
        "subtarget_active_mask": active,
        "subtarget_importance": tuple(float(x) for x in importance) if importance is not None else (0.0,) * len(active),
        "epochs_since_subtarget_change": epochs_since_change,
    }


def flat_history(epoch: int, value: float = 0.5) -> tuple[float, ...]:
    """A validation-metric history with no improvement at all (a plateau from the start)."""
    return tuple(value for _ in range(epoch + 1))


def rising_history(epoch: int, step: float = 0.02, start: float = 0.1) -> tuple[float, ...]:
    """A validation-metric history that improves by ``step`` every epoch from ``start``."""
    return tuple(start + step * index for index in range(epoch + 1))


def observation(
    epoch: int,
    slots: Sequence[SeedStateReport] | Mapping[int, SeedStateReport] | None = None,
    *,
    env_id: int = 0,
    metric_history: Sequence[float] | None = None,
    val_loss: float = 1.0,
    train_loss: float | None = 1.0,
    loss_history: Sequence[float] | None = None,
    episode_length: int = 10,
    max_seeds: int = 3,
    host_params: int = 1000,
    round_index: int = 0,
    slot_ids: Sequence[str] = SLOT_IDS,
    seed_families: Sequence[str] = SEED_FAMILIES,
    subtarget_count: int = 1,
) -> EnvObservation:
    """One environment's observation at ``epoch``. ``slots`` is every slot's report in order, or a
    mapping from slot number to report (slots not given are DORMANT). The metric history defaults to a
    plateau at 0.5 (``flat_history``), the loss history to ``val_loss`` at every epoch;
    ``subtarget_count`` is the run's ``subtarget`` head size K."""
    if slots is None or isinstance(slots, Mapping):
        given = dict(slots or {})
        reports = tuple(
            given.get(index, slot_report(index, env_id=env_id, slot_ids=slot_ids, seed_families=seed_families))
            for index in range(len(slot_ids))
        )
    else:
        reports = tuple(slots)
    history = flat_history(epoch) if metric_history is None else tuple(metric_history)
    return EnvObservation(
        env_id=env_id,
        round=round_index,
        epoch=epoch,
        episode_length=episode_length,
        val_metric=history[-1],
        val_loss=val_loss,
        train_loss=train_loss,
        metric_history=history,
        loss_history=tuple(val_loss for _ in history) if loss_history is None else tuple(loss_history),
        host_params=host_params,
        slots=reports,
        slot_config=slot_config(slot_ids),
        surface_codes={SEGMENT_BOUNDARY: 0},
        seed_families=tuple(seed_families),
        max_seeds=max_seeds,
        last_action=None,
        last_action_success=True,
        last_action_reason="",
        rolled_back=False,
        subtarget_count=subtarget_count,
    )


def action_masks(
    observations: Sequence[EnvObservation],
    *,
    max_seeds: int = 3,
    seed_family_allowed: Sequence[Sequence[bool]] | None = None,
    subtarget_count: int | None = None,
) -> ActionMasks:
    """The masks the engine would compute for ``observations`` (``seed_family_allowed[slot][family]``
    forbids seed families per slot, as the engine does for families that do not fit; ``subtarget_count``
    is the run's ``subtarget`` head size K, by default the observations')."""
    if subtarget_count is None:
        subtarget_count = observations[0].subtarget_count
    return compute_masks(
        [item.slots for item in observations],
        num_seed_families=len(observations[0].seed_families),
        max_seeds=max_seeds,
        seed_family_allowed=seed_family_allowed,
        subtarget_count=subtarget_count,
    )


# -- a plugin's records on their own -----------------------------------------------------------------------


def registered_records(plugin: Any, kind: str) -> dict[str, Any]:
    """What ``plugin`` (a module or object with hook implementations) registers of ``kind`` (a registry
    kind: ``"hosts"``, ``"seed_families"``, ``"tasks"``, ...), by name, in registration order, from
    calling its hook directly (no plugin manager, no other plugin). A plugin without that hook registers
    nothing."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")
    hook_name = KINDS[kind][0]
    records: dict[str, Any] = {}
    hook = getattr(plugin, hook_name, None)
    if hook is not None:
        hook(lambda record: records.__setitem__(record.name, record))
    return records


def task_info(
    *,
    topology: str = "image",
    input_shape: tuple[int, ...] = (3, 32, 32),
    num_classes: int = 10,
    score_basis: str = "metric",
    name: str = "t",
    train_size: int = 10,
    val_size: int = 10,
) -> TaskInfo:
    """A task's description for building a host without a task (accuracy as the metric); a language
    task is e.g. ``task_info(topology="sequence", input_shape=(8,), num_classes=11, score_basis="loss")``."""
    return TaskInfo(
        name=name, topology=topology, input_shape=input_shape, num_classes=num_classes,
        metric_name="accuracy", train_size=train_size, val_size=val_size, score_basis=score_basis,
    )


# -- a policy, reward or sink through the real engine -----------------------------------------------------

#: A run of the toy plugin: 2 environments x 8 epochs, 1 round, the scripted policy doing nothing, the
#: memory sink, one torch thread. ``toy_run_data`` copies it.
TOY_RUN: dict[str, Any] = {
    "run": {"name": "toyrun", "envs": 2, "episode_length": 8, "rounds": 1, "checkpoint_every": 2, "torch_threads": 1},
    "training": {"batch_size": 16, "eval_batch_size": 64},
    "task": {"name": "toy"},
    "policy": {"name": "scripted", "script": {}},
    "sinks": {"memory": {}},
    "morphogenesis": {"min_training_epochs": 1, "embargo_epochs": 1},
}


def toy_plugin_manager(*plugins: Any) -> PluginManager:
    """A plugin manager with the core's built-ins, the toy plugin and ``plugins`` (modules or objects with
    hook implementations) and no entry points, so a test sees exactly these plugins."""
    from esper_core.testing import toy_plugin

    return PluginManager(autoload=False, extra=[toy_plugin, *plugins])


def merge_sections(data: Mapping[str, Any], sections: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A deep copy of the config ``data`` with each table of ``sections`` merged into its section; a
    ``policy`` table naming another policy than the current one replaces the policy table (its options
    would not fit the other policy)."""
    merged = copy.deepcopy(dict(data))
    for section, values in sections.items():
        values = copy.deepcopy(dict(values))
        current = merged.get(section)
        renamed = isinstance(current, dict) and values.get("name", current.get("name")) != current.get("name")
        if section == "policy" and renamed:
            merged[section] = values
        else:
            merged.setdefault(section, {}).update(values)
    return merged


def toy_run_data(output_dir: str | Path, **sections: Mapping[str, Any]) -> dict[str, Any]:
    """``TOY_RUN`` writing into ``output_dir``, with ``sections`` merged in (``merge_sections``), e.g.
    ``toy_run_data(tmp_path, run={"rounds": 2}, policy={"name": "ppo"})``."""
    data = merge_sections(TOY_RUN, {"run": {"output_dir": str(output_dir)}})
    return merge_sections(data, sections)


def engine_policy(config: Any, manager: PluginManager) -> Any:
    """The policy the engine builds for the parsed run ``config`` (``esper_core.config.parse_config``),
    built exactly as a run builds it, without running anything."""
    policy, _reward = build_policy_and_reward(prepare(config, manager), manager)
    return policy


def events_of(run_dir: Path) -> list[dict[str, Any]]:
    """Every event record of a run, as raw JSON objects (``{"event": ..., "data": ...}``)."""
    return read_events(Path(run_dir) / "events.jsonl")


def policy_updates(run_dir: Path) -> list[dict[str, float]]:
    """The metrics of every ``POLICY_UPDATED`` event of a run, in order."""
    return [record["data"]["metrics"] for record in events_of(run_dir) if record["event"] == "POLICY_UPDATED"]


def final_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The run's latest checkpoint (its ``"policy"`` entry is the policy's ``state_dict``)."""
    return load_checkpoint(Path(run_dir) / CHECKPOINT_DIR / LATEST_CHECKPOINT)


def comparable(
    records: Sequence[dict[str, Any]], *, wall_clock_metrics: Sequence[str] = ("charts/SPS",)
) -> list[tuple[str, str]]:
    """Event records reduced to what must match between an interrupted-and-resumed run and an
    uninterrupted one: RUN_STARTED/RUN_RESUMED/RUN_FINISHED dropped, every ``seconds`` or ``*_seconds``
    field dropped, and the ``wall_clock_metrics`` of POLICY_UPDATED dropped."""
    skip = {"RUN_STARTED", "RUN_RESUMED", "RUN_FINISHED"}
    out = []
    for record in records:
        if record["event"] in skip:
            continue
        data = {
            key: value for key, value in record["data"].items() if not key.endswith("_seconds") and key != "seconds"
        }
        if record["event"] == "POLICY_UPDATED":
            data["metrics"] = {key: value for key, value in data["metrics"].items() if key not in wall_clock_metrics}
        out.append((record["event"], json.dumps(data, sort_keys=True)))
    return out


def same_state(a: Any, b: Any) -> bool:
    """Exact, recursive equality of checkpoint-style values (tensors compared element by element, with
    their dtypes; dicts by keys; lists and tuples alike)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
