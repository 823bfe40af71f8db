"""Typed telemetry: the event type enum, one attrs payload per type, and their JSON form."""

from __future__ import annotations

import enum
import json
import time
from typing import Any

import attrs
import cattrs

from esper_core.errors import DataError

from esper_core.leyline.actions import BlendStyle
from esper_core.leyline.reports import SeedStateReport
from esper_core.leyline.stages import SeedStage


class TelemetryEventType(enum.Enum):
    RUN_STARTED = "RUN_STARTED"
    RUN_RESUMED = "RUN_RESUMED"
    RUN_FINISHED = "RUN_FINISHED"
    ROUND_COMPLETED = "ROUND_COMPLETED"
    EPOCH_COMPLETED = "EPOCH_COMPLETED"
    ACTION_TAKEN = "ACTION_TAKEN"
    REWARD_COMPUTED = "REWARD_COMPUTED"
    SEED_GERMINATED = "SEED_GERMINATED"
    SEED_STAGE_CHANGED = "SEED_STAGE_CHANGED"
    SEED_FOSSILIZED = "SEED_FOSSILIZED"
    SEED_PRUNED = "SEED_PRUNED"
    SEED_INTERNAL_LEVEL_CHANGED = "SEED_INTERNAL_LEVEL_CHANGED"
    GOVERNOR_ROLLBACK = "GOVERNOR_ROLLBACK"
    POLICY_UPDATED = "POLICY_UPDATED"


@attrs.frozen
class RunStartedPayload:
    run_name: str
    run_dir: str
    task: str
    host: str
    policy: str
    reward: str
    seed: int
    rounds: int
    envs: int
    episode_length: int
    slots: tuple[str, ...]
    blueprints: tuple[str, ...]
    host_params: int
    device: str
    #: the injection surface of each slot, in the order of ``slots``
    slot_surfaces: tuple[str, ...]
    #: what contributions and rewards are measured on: "metric", or "loss" (language tasks)
    score_basis: str


@attrs.frozen
class RunResumedPayload:
    """``round`` and ``epoch`` are the next (0-based) round and epoch to run; a resume can be mid-round."""

    round: int
    epoch: int
    discarded_events: int


@attrs.frozen
class RunFinishedPayload:
    status: str  # "completed", "failed" or "aborted"
    rounds_completed: int
    wall_seconds: float
    error: str | None = None


@attrs.frozen
class RoundCompletedPayload:
    """End of a round: each environment's final metric and size, the mean over environments of the
    undiscounted sum of rewards (None if no reward was paid), and wall seconds spent in this round's
    phases (``train``, ``validate`` — counterfactuals and governor included —, ``policy_act``,
    ``policy_update``); after a mid-round resume they cover the resumed part only. ``final_params`` counts
    parameters in use (the size rule in ``SeedStateReport``). ``control_metric`` is the final validation
    metric of the round's paired static control environment and ``control_val_loss`` its final validation
    loss (None when the reward uses none)."""

    round: int
    final_metrics: tuple[float, ...]
    final_params: tuple[int, ...]
    mean_return: float | None = None
    seconds: dict[str, float] = attrs.Factory(dict)
    control_metric: float | None = None
    control_val_loss: float | None = None


@attrs.frozen
class EpochCompletedPayload:
    """One environment's epoch. ``host_params`` is the bare host; ``seed_params`` counts live (not yet
    fossilized) seeds; ``fossilized_params`` counts fossilized seeds, each by its parameters in use (the
    size rule in ``SeedStateReport``); the model's size is their sum.
    ``stage_counts`` has every SeedStage name as a key (zeros included). ``effective_seed_params`` is
    the rent base (alpha x parameters in use for live seeds, parameters in use for fossils) and
    ``alpha_delta_sq_sum`` the alpha shock base: the sum over slots of the squared alpha change since
    the environment's previous epoch (the roadmap's rent and shock proxies)."""

    env_id: int
    round: int
    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float
    host_params: int
    seed_params: int
    fossilized_params: int
    stage_counts: dict[str, int]
    train_seconds: float
    validate_seconds: float
    effective_seed_params: float
    alpha_delta_sq_sum: float


@attrs.frozen
class ActionTakenPayload:
    env_id: int
    round: int
    epoch: int
    action: dict[str, Any]
    success: bool
    reason: str = ""


@attrs.frozen
class RewardComputedPayload:
    env_id: int
    round: int
    epoch: int
    reward: float
    components: dict[str, float]


@attrs.frozen
class SeedGerminatedPayload:
    env_id: int
    round: int
    epoch: int
    slot_id: str
    seed_id: str
    blueprint_id: str
    style: str
    alpha_target: float
    #: the seed's size: parameters in use (the size rule in ``SeedStateReport``)
    seed_params: int
    #: every parameter the seed allocates (a ladder builds all levels up front); memory, not size
    built_params: int
    internal_level: int = 0
    #: a ladder seed's parameters in use at ``internal_level`` (what rent is charged on); 0 without a ladder
    internal_effective_params: int = 0


@attrs.frozen
class SeedStageChangedPayload:
    env_id: int
    round: int
    epoch: int
    slot_id: str
    seed_id: str
    blueprint_id: str
    from_stage: SeedStage
    to_stage: SeedStage


@attrs.frozen
class SeedFossilizedPayload:
    env_id: int
    round: int
    epoch: int
    slot_id: str
    seed_id: str
    blueprint_id: str
    seed_params: int
    alpha: float
    contribution: float | None
    seed_age_epochs: int
    internal_level: int = 0
    #: a ladder seed's parameters in use at its frozen level (what the host keeps paying for); 0 without a ladder
    internal_effective_params: int = 0


@attrs.frozen
class SeedPrunedPayload:
    env_id: int
    round: int
    epoch: int
    slot_id: str
    seed_id: str
    blueprint_id: str
    reason: str
    contribution: float | None
    seed_age_epochs: int


@attrs.frozen
class SeedInternalLevelChangedPayload:
    """A GROW_INTERNAL or SHRINK_INTERNAL that succeeded (emitted by Kasmina only then)."""

    slot_id: str
    env_id: int
    seed_id: str
    blueprint_id: str
    from_level: int
    to_level: int
    internal_effective_params: int
    round: int
    epoch: int


@attrs.frozen
class GovernorRollbackPayload:
    env_id: int
    round: int
    epoch: int
    reason: str
    loss: float | None
    restored_epoch: int
    pruned_slots: tuple[str, ...]


@attrs.frozen
class PolicyUpdatedPayload:
    round: int
    metrics: dict[str, float]


EVENT_PAYLOADS: dict[TelemetryEventType, type] = {
    TelemetryEventType.RUN_STARTED: RunStartedPayload,
    TelemetryEventType.RUN_RESUMED: RunResumedPayload,
    TelemetryEventType.RUN_FINISHED: RunFinishedPayload,
    TelemetryEventType.ROUND_COMPLETED: RoundCompletedPayload,
    TelemetryEventType.EPOCH_COMPLETED: EpochCompletedPayload,
    TelemetryEventType.ACTION_TAKEN: ActionTakenPayload,
    TelemetryEventType.REWARD_COMPUTED: RewardComputedPayload,
    TelemetryEventType.SEED_GERMINATED: SeedGerminatedPayload,
    TelemetryEventType.SEED_STAGE_CHANGED: SeedStageChangedPayload,
    TelemetryEventType.SEED_FOSSILIZED: SeedFossilizedPayload,
    TelemetryEventType.SEED_PRUNED: SeedPrunedPayload,
    TelemetryEventType.SEED_INTERNAL_LEVEL_CHANGED: SeedInternalLevelChangedPayload,
    TelemetryEventType.GOVERNOR_ROLLBACK: GovernorRollbackPayload,
    TelemetryEventType.POLICY_UPDATED: PolicyUpdatedPayload,
}


@attrs.frozen
class TelemetryEvent:
    """One typed event. ``payload`` must be the attrs class registered for ``event_type``."""

    event_type: TelemetryEventType
    payload: Any
    timestamp: float = attrs.field(factory=time.time)

    def __attrs_post_init__(self) -> None:
        expected = EVENT_PAYLOADS[self.event_type]
        if type(self.payload) is not expected:
            raise TypeError(
                f"{self.event_type.value} needs a {expected.__name__} payload, "
                f"got {type(self.payload).__name__}"
            )


_json_converter = cattrs.Converter()
_json_converter.register_unstructure_hook(SeedStage, lambda stage: stage.name)
_json_converter.register_structure_hook(SeedStage, lambda value, _: SeedStage[value])
_json_converter.register_unstructure_hook(BlendStyle, lambda style: style.name)
_json_converter.register_structure_hook(BlendStyle, lambda value, _: BlendStyle[value])


def report_to_dict(report: SeedStateReport) -> dict[str, Any]:
    """A SeedStateReport as plain values (enums by name), e.g. for checkpoints."""
    return _json_converter.unstructure(report)


def report_from_dict(data: dict[str, Any]) -> SeedStateReport:
    return _json_converter.structure(data, SeedStateReport)


def global_epoch(round_index: int, epoch: int, episode_length: int) -> int:
    """The run-wide epoch index (the x axis every sink shares): ``round * episode_length + epoch``."""
    return round_index * episode_length + epoch


def event_to_dict(event: TelemetryEvent) -> dict[str, Any]:
    """The JSON-ready form: ``{"event": TYPE, "time": float, "data": {...}}``."""
    return {
        "event": event.event_type.value,
        "time": event.timestamp,
        "data": _json_converter.unstructure(event.payload),
    }


def event_to_json(event: TelemetryEvent) -> str:
    return json.dumps(event_to_dict(event), sort_keys=False, allow_nan=True)


def event_from_dict(record: dict[str, Any]) -> TelemetryEvent:
    """Rebuild a typed event from its JSON form (raises ``ValueError`` on a foreign record)."""
    try:
        event_type = TelemetryEventType(record["event"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not an Esper telemetry record: {record!r:.120}") from exc
    payload = _json_converter.structure(record["data"], EVENT_PAYLOADS[event_type])
    return TelemetryEvent(event_type=event_type, payload=payload, timestamp=record["time"])
