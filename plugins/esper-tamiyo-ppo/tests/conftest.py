"""Shared builders for the esper-tamiyo-ppo tests: contexts, synthetic observations, rollouts, toy-engine runs."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from esper_core.config import parse_config
from esper_core.kasmina import LifecycleSettings
from esper_core.leyline import (
    SEGMENT_BOUNDARY,
    InjectionSpec,
    SeedMetrics,
    SeedStage,
    SeedStateReport,
    SlotConfig,
)
from esper_core.plugins import PluginManager
from esper_core.runs import CHECKPOINT_DIR, LATEST_CHECKPOINT, load_checkpoint
from esper_core.tamiyo import ActionMasks, EnvObservation, PolicyContext, compute_masks
from esper_core.tasks import TaskInfo
from esper_core.telemetry.report import read_events
from esper_tamiyo_ppo import PPOConfig, PPOController
from esper_tamiyo_ppo import plugin as ppo_plugin
from tests import toy_plugin

SLOT_IDS: tuple[str, ...] = ("r0c0", "r0c1", "r0c2")
BLUEPRINTS: tuple[str, ...] = ("conv_light", "conv_heavy", "attention")
EPISODE_LENGTH = 6


def build_context(
    *, n_envs: int = 2, seed: int = 0, episode_length: int = EPISODE_LENGTH, max_seeds: int = 3
) -> PolicyContext:
    specs = tuple(
        InjectionSpec(slot_id=slot_id, channels=8, surface=SEGMENT_BOUNDARY, order=index, host_block=index)
        for index, slot_id in enumerate(SLOT_IDS)
    )
    return PolicyContext(
        slot_config=SlotConfig.from_specs(specs),
        blueprints=BLUEPRINTS,
        surface_codes={SEGMENT_BOUNDARY: 0},
        n_envs=n_envs,
        episode_length=episode_length,
        max_seeds=max_seeds,
        lifecycle=LifecycleSettings(embargo_epochs=3, min_training_epochs=2),
        task_info=TaskInfo(
            name="toy", topology="image", input_shape=(3, 8, 8), num_classes=10,
            metric_name="accuracy", train_size=64, val_size=32,
        ),
        device=torch.device("cpu"),
        seed=seed,
        blueprint_params=tuple(tuple(100 * (index + 1) for index in range(len(BLUEPRINTS))) for _ in SLOT_IDS),
    )


def build_controller(
    *, n_envs: int = 2, seed: int = 0, episode_length: int = EPISODE_LENGTH, **options: Any
) -> PPOController:
    """A ppo controller on the 3-slot, 3-blueprint test context (2 minibatches and no minimum of
    decisions per update unless told otherwise)."""
    options.setdefault("num_minibatches", 2)
    options.setdefault("min_decisions_per_update", 0)  # the tests count rounds_per_update rounds exactly
    return PPOController(PPOConfig(**options), build_context(n_envs=n_envs, seed=seed, episode_length=episode_length))


def slot_report(index: int, stage: SeedStage, *, blueprint: int = 0, blend_out: bool = False,
                contribution: float | None = None, env_id: int = 0) -> SeedStateReport:
    has_seed = stage is not SeedStage.DORMANT
    return SeedStateReport(
        env_id=env_id,
        slot_id=SLOT_IDS[index],
        stage=stage,
        seed_id=f"seed-{index}" if has_seed else None,
        blueprint_id=BLUEPRINTS[blueprint] if has_seed else None,
        alpha=0.5 if stage in (SeedStage.BLENDING, SeedStage.HOLDING) else 0.0,
        blend_out=blend_out,
        seed_params=100 if has_seed else 0,
        effective_params=50.0 if has_seed else 0.0,
        metrics=SeedMetrics(counterfactual_contribution=contribution, epochs_in_stage=1),
    )


def observation(epoch: int, slots: Sequence[SeedStateReport], *, env_id: int = 0, metric: float = 0.5,
                episode_length: int = EPISODE_LENGTH, max_seeds: int = 3) -> EnvObservation:
    history = tuple(metric - 0.01 * (epoch - k) for k in range(epoch + 1))
    return EnvObservation(
        env_id=env_id, round=0, epoch=epoch, episode_length=episode_length,
        val_metric=history[-1], val_loss=1.0 - history[-1], train_loss=0.9 - history[-1],
        metric_history=history, loss_history=tuple(1.0 - value for value in history),
        host_params=1000, slots=tuple(slots), blueprints=BLUEPRINTS, max_seeds=max_seeds,
        slot_config=SlotConfig.from_specs([
            InjectionSpec(slot_id=slot_id, channels=8, surface=SEGMENT_BOUNDARY, order=index, host_block=index)
            for index, slot_id in enumerate(SLOT_IDS)
        ]),
        surface_codes={SEGMENT_BOUNDARY: 0},
        last_action=None, last_action_success=True, last_action_reason="", rolled_back=False,
    )


def random_batch(rng: random.Random, epoch: int, n_envs: int) -> tuple[list[EnvObservation], ActionMasks]:
    """Observations with random slot stages and their masks."""
    stages = list(SeedStage)
    observations = []
    for env in range(n_envs):
        reports = [
            slot_report(index, rng.choice(stages), blueprint=rng.randrange(len(BLUEPRINTS)),
                        blend_out=rng.random() < 0.2, contribution=rng.choice([None, rng.uniform(-0.1, 0.1)]),
                        env_id=env)
            for index in range(len(SLOT_IDS))
        ]
        observations.append(observation(epoch, reports, env_id=env, metric=rng.uniform(0.2, 0.9)))
    masks = compute_masks([obs.slots for obs in observations], num_blueprints=len(BLUEPRINTS), max_seeds=3)
    return observations, masks


def play_round(controller: PPOController, *, seed: int = 0, round_index: int = 0,
               episode_length: int = EPISODE_LENGTH, close: bool = True) -> list[list]:
    """One synthetic round (episode_length - 1 decisions, rewards from the seeded RNG); returns the actions.
    ``close`` False stops before ``end_episode``."""
    rng = random.Random(seed)
    n_envs = controller.context.n_envs
    controller.begin_episode(round_index, n_envs)
    actions = []
    for epoch in range(episode_length - 1):
        observations, masks = random_batch(rng, epoch, n_envs)
        actions.append(controller.act(observations, masks))
        controller.record([rng.uniform(-1.0, 1.0) for _ in range(n_envs)], terminal=epoch == episode_length - 2)
    if close:
        controller.end_episode(round_index)
    return actions


def rollout_batch(controller: PPOController, *, seed: int = 0):
    """A closed round turned into a SequenceBatch (without updating)."""
    play_round(controller, seed=seed, close=False)
    controller.buffer.close_round()
    config = controller.config
    return controller.buffer.sequences(config.gamma, config.gae_lambda, config.sequence_length)


# -- engine helpers -----------------------------------------------------------------------------------

TOY_RUN: dict[str, Any] = {
    "run": {"name": "ppo", "envs": 2, "episode_length": 8, "rounds": 1, "checkpoint_every": 2, "torch_threads": 1},
    "training": {"batch_size": 16, "eval_batch_size": 64},
    "task": {"name": "toy"},
    "policy": {"name": "ppo", "num_minibatches": 2, "min_decisions_per_update": 0},
    "sinks": {"memory": {}},
    "morphogenesis": {"min_training_epochs": 1, "embargo_epochs": 1},
}


@pytest.fixture
def manager() -> PluginManager:
    """The core's built-in plugin, the core tests' toy plugin and this plugin (no entry points)."""
    return PluginManager(autoload=False, extra=[toy_plugin, ppo_plugin])


@pytest.fixture
def run_config(manager: PluginManager, tmp_path: Path) -> Callable[..., Any]:
    """A factory for toy run configs writing into ``tmp_path``; keyword tables are merged in (a policy
    table naming another policy replaces the ppo one)."""

    def factory(**sections: dict[str, Any]):
        data = copy.deepcopy(TOY_RUN)
        data["run"]["output_dir"] = str(tmp_path / "runs")
        for section, values in sections.items():
            if section == "policy" and values.get("name", "ppo") != "ppo":
                data["policy"] = {}  # another policy: drop the ppo options
            data.setdefault(section, {}).update(values)
        return parse_config(data, manager)

    return factory


def events_of(run_dir: Path) -> list[dict]:
    return read_events(run_dir / "events.jsonl")


def comparable(records: list[dict]) -> list[tuple]:
    """Events without wall-clock values (``*_seconds`` fields, ``charts/SPS``) or resume bookkeeping."""
    skip = {"RUN_STARTED", "RUN_RESUMED", "RUN_FINISHED"}
    out = []
    for record in records:
        if record["event"] in skip:
            continue
        data = {
            key: value for key, value in record["data"].items() if not key.endswith("_seconds") and key != "seconds"
        }
        if record["event"] == "POLICY_UPDATED":
            data["metrics"] = {key: value for key, value in data["metrics"].items() if key != "charts/SPS"}
        out.append((record["event"], json.dumps(data, sort_keys=True)))
    return out


def policy_updates(run_dir: Path) -> list[dict[str, float]]:
    return [record["data"]["metrics"] for record in events_of(run_dir) if record["event"] == "POLICY_UPDATED"]


def final_policy_state(run_dir: Path) -> dict[str, Any]:
    return load_checkpoint(run_dir / CHECKPOINT_DIR / LATEST_CHECKPOINT)["policy"]


def same_state(a: Any, b: Any) -> bool:
    """Exact, recursive equality of checkpoint-style values (tensors compared element by element)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


class Kit:
    """The builders above, handed to tests as the ``kit`` fixture (test modules cannot import conftest)."""

    slot_ids = SLOT_IDS
    blueprints = BLUEPRINTS
    episode_length = EPISODE_LENGTH
    context = staticmethod(build_context)
    controller = staticmethod(build_controller)
    slot_report = staticmethod(slot_report)
    observation = staticmethod(observation)
    random_batch = staticmethod(random_batch)
    play_round = staticmethod(play_round)
    rollout_batch = staticmethod(rollout_batch)
    events_of = staticmethod(events_of)
    comparable = staticmethod(comparable)
    policy_updates = staticmethod(policy_updates)
    final_policy_state = staticmethod(final_policy_state)
    same_state = staticmethod(same_state)


@pytest.fixture(scope="session")
def kit() -> Kit:
    return Kit()

