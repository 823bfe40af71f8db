"""Fixtures for the esper-heuristic tests: esper_core.testing's builders with this plugin's defaults, and scenario helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from esper_core.leyline import SeedStage, SeedStateReport
from esper_core.tamiyo import ActionMasks, EnvObservation, PolicyContext
from esper_core.testing import (
    SEED_FAMILIES,
    SLOT_IDS,
    action_masks,
    flat_history,
    policy_context,
    rising_history,
)
from esper_core.testing import observation as shared_observation
from esper_core.testing import slot_report as shared_slot_report
from esper_heuristic import Decision, HeuristicConfig, HeuristicPolicy

EPISODE_LENGTH = 40


def build_context(
    *,
    n_envs: int = 1,
    seed: int = 0,
    max_seeds: int = 3,
    episode_length: int = EPISODE_LENGTH,
    slot_ids: Sequence[str] = SLOT_IDS,
    seed_families: Sequence[str] = SEED_FAMILIES,
    seed_family_params: Sequence[int] | None = None,
    subtarget_count: int = 1,
) -> PolicyContext:
    """A policy context; ``seed_family_params`` (one size per seed family, the same in every slot) defaults
    to 100 * (index + 1); ``subtarget_count`` is the run's subtarget head size K."""
    return policy_context(
        n_envs=n_envs, seed=seed, max_seeds=max_seeds, episode_length=episode_length, slot_ids=slot_ids,
        seed_families=seed_families, sizes=seed_family_params, subtarget_count=subtarget_count,
    )


def build_slot(
    slot: int,
    stage: SeedStage = SeedStage.DORMANT,
    *,
    contribution: float | None = None,
    epochs_in_stage: int = 0,
    seed_family: str | None = None,
    seed_id: str | None = None,
    blend_out: bool = False,
    env_id: int = 0,
    seed_params: int | None = None,
) -> SeedStateReport:
    """A slot report; any stage but DORMANT carries a seed (id and seed family default from the slot;
    ``seed_params`` defaults to the seed family's size in ``build_context``: 100 * (its index + 1))."""
    return shared_slot_report(
        slot, stage, env_id=env_id, family=seed_family, seed_id=seed_id, blend_out=blend_out,
        seed_params=seed_params, contribution=contribution, epochs_in_stage=epochs_in_stage,
    )


def build_observation(
    *,
    epoch: int,
    slots: Mapping[int, SeedStateReport] | None = None,
    metric_history: tuple[float, ...] | None = None,
    env_id: int = 0,
    episode_length: int = EPISODE_LENGTH,
    max_seeds: int = 3,
    seed_families: Sequence[str] = SEED_FAMILIES,
) -> EnvObservation:
    """An observation; slots not given are DORMANT; the history defaults to a plateau."""
    return shared_observation(
        epoch, slots or {}, env_id=env_id, metric_history=metric_history, episode_length=episode_length,
        max_seeds=max_seeds, seed_families=seed_families,
    )


def build_masks(
    observations: Sequence[EnvObservation],
    *,
    max_seeds: int = 3,
    seed_family_allowed: Sequence[Sequence[bool]] | None = None,
    subtarget_count: int = 1,
) -> ActionMasks:
    return action_masks(
        observations, max_seeds=max_seeds, seed_family_allowed=seed_family_allowed, subtarget_count=subtarget_count
    )


def build_heuristic(
    *,
    n_envs: int = 1,
    max_seeds: int = 3,
    seed_family_params: Sequence[int] | None = None,
    subtarget_count: int = 1,
    policy_class: type[HeuristicPolicy] = HeuristicPolicy,
    config_class: type[HeuristicConfig] = HeuristicConfig,
    **options: object,
) -> HeuristicPolicy:
    """A heuristic policy (or ``policy_class`` with ``config_class``) with ``options`` as its config, its
    episode begun (``seed_family_params`` and ``subtarget_count`` go to ``build_context``)."""
    context = build_context(
        n_envs=n_envs, max_seeds=max_seeds, seed_family_params=seed_family_params, subtarget_count=subtarget_count
    )
    policy = policy_class(config_class(**options), context)
    policy.begin_episode(0, n_envs)
    return policy


def decide_one(
    policy: HeuristicPolicy,
    observation: EnvObservation,
    *,
    max_seeds: int = 3,
    seed_family_allowed: Sequence[Sequence[bool]] | None = None,
) -> Decision:
    """Run one ``act`` for a single environment and return its decision (action, rule, reason); the masks
    have the policy's subtarget head size."""
    masks = build_masks([observation], max_seeds=max_seeds, seed_family_allowed=seed_family_allowed,
                        subtarget_count=policy.context.subtarget_count)
    actions = policy.act([observation], masks)
    decision = policy.last_decisions[0]
    assert actions == [decision.action]
    return decision


class ScenarioKit:
    """The builders above, handed to tests as the ``kit`` fixture."""

    slot_ids = SLOT_IDS
    seed_families = SEED_FAMILIES
    episode_length = EPISODE_LENGTH
    context = staticmethod(build_context)
    slot = staticmethod(build_slot)
    observation = staticmethod(build_observation)
    masks = staticmethod(build_masks)
    flat_history = staticmethod(flat_history)
    rising_history = staticmethod(rising_history)
    heuristic = staticmethod(build_heuristic)
    decide = staticmethod(decide_one)


@pytest.fixture(scope="session")
def kit() -> ScenarioKit:
    return ScenarioKit()
