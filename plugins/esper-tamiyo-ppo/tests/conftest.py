"""Fixtures for the esper-tamiyo-ppo tests: esper_core.testing's builders with this plugin's defaults, synthetic rollouts, toy-engine runs."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from esper_core.config import parse_config
from esper_core.leyline import SeedStage, SeedStateReport
from esper_core.plugins import PluginManager
from esper_core.tamiyo import ActionMasks, EnvObservation, PolicyContext
from esper_core.testing import (
    SEED_FAMILIES,
    SLOT_IDS,
    action_masks,
    comparable,
    events_of,
    final_checkpoint,
    merge_sections,
    policy_context,
    policy_updates,
    same_state,
    toy_plugin_manager,
    toy_run_data,
)
from esper_core.testing import observation as build_observation
from esper_core.testing import slot_report as build_slot_report
from esper_tamiyo_ppo import PPOConfig, PPOPolicy
from esper_tamiyo_ppo import plugin as ppo_plugin

EPISODE_LENGTH = 6


def build_context(
    *, n_envs: int = 2, seed: int = 0, episode_length: int = EPISODE_LENGTH, max_seeds: int = 3,
    subtarget_count: int = 1,
) -> PolicyContext:
    return policy_context(
        n_envs=n_envs, seed=seed, episode_length=episode_length, max_seeds=max_seeds, subtarget_count=subtarget_count
    )


def build_policy(
    *, n_envs: int = 2, seed: int = 0, episode_length: int = EPISODE_LENGTH, subtarget_count: int = 1,
    **options: Any,
) -> PPOPolicy:
    """A ppo policy on the 3-slot, 3-seed-family test context (2 minibatches and no minimum of
    decisions per update unless told otherwise; a subtarget head of ``subtarget_count``)."""
    options.setdefault("num_minibatches", 2)
    options.setdefault("min_decisions_per_update", 0)  # the tests count rounds_per_update rounds exactly
    context = build_context(n_envs=n_envs, seed=seed, episode_length=episode_length, subtarget_count=subtarget_count)
    return PPOPolicy(PPOConfig(**options), context)


def slot_report(index: int, stage: SeedStage, *, family: int = 0, blend_out: bool = False,
                contribution: float | None = None, env_id: int = 0) -> SeedStateReport:
    """A slot report with seed family number ``family``; blending and holding seeds are at alpha 0.5."""
    return build_slot_report(
        index, stage, env_id=env_id, family=SEED_FAMILIES[family], seed_id=f"seed-{index}",
        alpha=0.5 if stage in (SeedStage.BLENDING, SeedStage.HOLDING) else 0.0, blend_out=blend_out,
        seed_params=100, effective_params=50.0 if stage is not SeedStage.DORMANT else 0.0,
        contribution=contribution, epochs_in_stage=1, seed_age_epochs=0,
    )


def observation(epoch: int, slots: Sequence[SeedStateReport], *, env_id: int = 0, metric: float = 0.5,
                episode_length: int = EPISODE_LENGTH, max_seeds: int = 3) -> EnvObservation:
    """An observation whose metric rose by 0.01 an epoch to ``metric`` (losses fall alongside)."""
    history = tuple(metric - 0.01 * (epoch - k) for k in range(epoch + 1))
    return build_observation(
        epoch, slots, env_id=env_id, metric_history=history, val_loss=1.0 - history[-1],
        train_loss=0.9 - history[-1], loss_history=tuple(1.0 - value for value in history),
        episode_length=episode_length, max_seeds=max_seeds,
    )


def random_batch(rng: random.Random, epoch: int, n_envs: int) -> tuple[list[EnvObservation], ActionMasks]:
    """Observations with random slot stages and their masks."""
    stages = list(SeedStage)
    observations = []
    for env in range(n_envs):
        reports = [
            slot_report(index, rng.choice(stages), family=rng.randrange(len(SEED_FAMILIES)),
                        blend_out=rng.random() < 0.2, contribution=rng.choice([None, rng.uniform(-0.1, 0.1)]),
                        env_id=env)
            for index in range(len(SLOT_IDS))
        ]
        observations.append(observation(epoch, reports, env_id=env, metric=rng.uniform(0.2, 0.9)))
    return observations, action_masks(observations, max_seeds=3)


def play_round(policy: PPOPolicy, *, seed: int = 0, round_index: int = 0,
               episode_length: int = EPISODE_LENGTH, close: bool = True) -> list[list]:
    """One synthetic round (episode_length - 1 decisions, rewards from the seeded RNG); returns the actions.
    ``close`` False stops before ``end_episode``."""
    rng = random.Random(seed)
    n_envs = policy.context.n_envs
    policy.begin_episode(round_index, n_envs)
    actions = []
    for epoch in range(episode_length - 1):
        observations, masks = random_batch(rng, epoch, n_envs)
        actions.append(policy.act(observations, masks))
        policy.record([rng.uniform(-1.0, 1.0) for _ in range(n_envs)], terminal=epoch == episode_length - 2)
    if close:
        policy.end_episode(round_index)
    return actions


def rollout_batch(policy: PPOPolicy, *, seed: int = 0):
    """A closed round turned into a SequenceBatch (without updating)."""
    play_round(policy, seed=seed, close=False)
    policy.buffer.close_round()
    config = policy.config
    return policy.buffer.sequences(config.gamma, config.gae_lambda, config.sequence_length)


# -- engine helpers -----------------------------------------------------------------------------------

#: The ppo options every engine test starts from (2 minibatches, an update every round).
PPO_POLICY: dict[str, Any] = {"name": "ppo", "num_minibatches": 2, "min_decisions_per_update": 0}


@pytest.fixture
def manager() -> PluginManager:
    """The core's built-in plugin, the testing kit's toy plugin and this plugin (no entry points)."""
    return toy_plugin_manager(ppo_plugin)


@pytest.fixture
def run_config(manager: PluginManager, tmp_path: Path) -> Callable[..., Any]:
    """A factory for toy run configs of the ppo policy writing into ``tmp_path``; keyword tables are
    merged in (a policy table naming another policy replaces the ppo one)."""

    def factory(**sections: dict[str, Any]):
        data = toy_run_data(tmp_path / "runs", run={"name": "ppo"}, policy=PPO_POLICY)
        return parse_config(merge_sections(data, sections), manager)

    return factory


def final_policy_state(run_dir: Path) -> dict[str, Any]:
    return final_checkpoint(run_dir)["policy"]


class Kit:
    """The builders above, handed to tests as the ``kit`` fixture (test modules cannot import conftest)."""

    slot_ids = SLOT_IDS
    seed_families = SEED_FAMILIES
    episode_length = EPISODE_LENGTH
    context = staticmethod(build_context)
    policy = staticmethod(build_policy)
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

