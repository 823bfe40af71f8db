"""Shared builders for the esper-heuristic tests: a policy context, slot reports, observations and masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
import torch

from esper_core.kasmina import LifecycleSettings

from esper_core.leyline import (
    SEGMENT_BOUNDARY,
    InjectionSpec,
    SeedMetrics,
    SeedStage,
    SeedStateReport,
    SlotConfig,
)
from esper_core.tamiyo import ActionMasks, EnvObservation, PolicyContext, compute_masks
from esper_core.tasks import TaskInfo
from esper_heuristic import Decision, HeuristicConfig, HeuristicController

SLOT_IDS: tuple[str, ...] = ("r0c0", "r0c1", "r0c2")
BLUEPRINTS: tuple[str, ...] = ("conv_light", "conv_heavy", "attention")
EPISODE_LENGTH = 40


def build_context(
    *,
    n_envs: int = 1,
    seed: int = 0,
    max_seeds: int = 3,
    episode_length: int = EPISODE_LENGTH,
    slot_ids: Sequence[str] = SLOT_IDS,
    blueprints: Sequence[str] = BLUEPRINTS,
    blueprint_params: Sequence[int] | None = None,
) -> PolicyContext:
    """A policy context; ``blueprint_params`` (one size per blueprint, the same in every slot) defaults
    to 100 * (index + 1)."""
    default_sizes = tuple(100 * (index + 1) for index in range(len(blueprints)))
    sizes = default_sizes if blueprint_params is None else tuple(blueprint_params)
    specs = tuple(
        InjectionSpec(slot_id=slot_id, channels=8, surface=SEGMENT_BOUNDARY, order=index, host_block=index)
        for index, slot_id in enumerate(slot_ids)
    )
    return PolicyContext(
        slot_config=SlotConfig.from_specs(specs),
        blueprints=tuple(blueprints),
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
        blueprint_params=tuple(sizes for _ in slot_ids),
    )


def build_slot(
    slot: int,
    stage: SeedStage = SeedStage.DORMANT,
    *,
    contribution: float | None = None,
    epochs_in_stage: int = 0,
    blueprint: str | None = None,
    seed_id: str | None = None,
    blend_out: bool = False,
    env_id: int = 0,
    seed_params: int | None = None,
) -> SeedStateReport:
    """A slot report; any stage but DORMANT carries a seed (id and blueprint default from the slot;
    ``seed_params`` defaults to the blueprint's size in ``build_context``: 100 * (its index + 1))."""
    has_seed = stage is not SeedStage.DORMANT
    blueprint = (blueprint or BLUEPRINTS[0]) if has_seed else None
    if seed_params is None:
        seed_params = 100 * (BLUEPRINTS.index(blueprint) + 1) if blueprint in BLUEPRINTS else 0
    return SeedStateReport(
        env_id=env_id,
        slot_id=SLOT_IDS[slot],
        stage=stage,
        seed_id=(seed_id or f"seed-{SLOT_IDS[slot]}") if has_seed else None,
        blueprint_id=blueprint,
        blend_out=blend_out,
        seed_params=seed_params,
        metrics=SeedMetrics(
            counterfactual_contribution=contribution, epochs_in_stage=epochs_in_stage, seed_age_epochs=epochs_in_stage
        ),
    )


def flat_history(epoch: int, value: float = 0.5) -> tuple[float, ...]:
    """A validation history with no improvement at all (a plateau from the start)."""
    return tuple(value for _ in range(epoch + 1))


def rising_history(epoch: int, step: float = 0.02) -> tuple[float, ...]:
    """A validation history that improves by ``step`` every epoch (never a plateau for small deltas)."""
    return tuple(0.1 + step * index for index in range(epoch + 1))


def build_observation(
    *,
    epoch: int,
    slots: Mapping[int, SeedStateReport] | None = None,
    metric_history: tuple[float, ...] | None = None,
    env_id: int = 0,
    episode_length: int = EPISODE_LENGTH,
    max_seeds: int = 3,
    blueprints: Sequence[str] = BLUEPRINTS,
) -> EnvObservation:
    """An observation; slots not given are DORMANT; the history defaults to a plateau."""
    given = dict(slots or {})
    reports = tuple(given.get(index, build_slot(index, env_id=env_id)) for index in range(len(SLOT_IDS)))
    history = flat_history(epoch) if metric_history is None else metric_history
    return EnvObservation(
        env_id=env_id,
        round=0,
        epoch=epoch,
        episode_length=episode_length,
        val_metric=history[-1],
        val_loss=1.0,
        train_loss=1.0,
        metric_history=history,
        loss_history=tuple(1.0 for _ in history),
        host_params=1000,
        slots=reports,
        slot_config=SlotConfig.from_specs([
            InjectionSpec(slot_id=slot_id, channels=8, surface=SEGMENT_BOUNDARY, order=index, host_block=index)
            for index, slot_id in enumerate(SLOT_IDS)
        ]),
        surface_codes={SEGMENT_BOUNDARY: 0},
        blueprints=tuple(blueprints),
        max_seeds=max_seeds,
        last_action=None,
        last_action_success=True,
        last_action_reason="",
        rolled_back=False,
    )


def build_masks(
    observations: Sequence[EnvObservation],
    *,
    max_seeds: int = 3,
    blueprint_allowed: Sequence[Sequence[bool]] | None = None,
) -> ActionMasks:
    return compute_masks(
        [observation.slots for observation in observations],
        num_blueprints=len(observations[0].blueprints),
        max_seeds=max_seeds,
        blueprint_allowed=blueprint_allowed,
    )


def build_heuristic(
    *,
    n_envs: int = 1,
    max_seeds: int = 3,
    blueprint_params: Sequence[int] | None = None,
    **options: object,
) -> HeuristicController:
    """A heuristic controller with ``options`` as its config, its episode begun (``blueprint_params``
    goes to ``build_context``)."""
    context = build_context(n_envs=n_envs, max_seeds=max_seeds, blueprint_params=blueprint_params)
    controller = HeuristicController(HeuristicConfig(**options), context)
    controller.begin_episode(0, n_envs)
    return controller


def decide_one(
    controller: HeuristicController,
    observation: EnvObservation,
    *,
    max_seeds: int = 3,
    blueprint_allowed: Sequence[Sequence[bool]] | None = None,
) -> Decision:
    """Run one ``act`` for a single environment and return its decision (action, rule, reason)."""
    masks = build_masks([observation], max_seeds=max_seeds, blueprint_allowed=blueprint_allowed)
    actions = controller.act([observation], masks)
    decision = controller.last_decisions[0]
    assert actions == [decision.action]
    return decision


class ScenarioKit:
    """The builders above, handed to tests as the ``kit`` fixture."""

    slot_ids = SLOT_IDS
    blueprints = BLUEPRINTS
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
