"""Typed telemetry: the event type enum, one attrs payload per type, and their JSON form."""

from __future__ import annotations

import enum
import json
import time
import typing
from typing import Any

import attrs
import cattrs
from cattrs.v import format_exception

from esper_core.errors import DataError
from esper_core.leyline.actions import BlendStyle
from esper_core.leyline.stages import SeedStage

__all__ = [
    "EVENT_PAYLOADS",
    "GRADIENT_ANOMALY_KINDS",
    "GRADIENT_SITES",
    "POLICY_ANOMALY_KINDS",
    "ActionTakenPayload",
    "EpochCompletedPayload",
    "GovernorRollbackPayload",
    "GradientAnomalyPayload",
    "PolicyAnomalyPayload",
    "PolicyUpdatedPayload",
    "RewardComputedPayload",
    "RoundCompletedPayload",
    "RunFinishedPayload",
    "RunResumedPayload",
    "RunStartedPayload",
    "SeedFossilizedPayload",
    "SeedGerminatedPayload",
    "SeedInternalLevelChangedPayload",
    "SeedPrunedPayload",
    "SeedStageChangedPayload",
    "SeedSubtargetChangedPayload",
    "TelemetryEvent",
    "TelemetryEventType",
    "event_from_dict",
    "event_to_dict",
    "event_to_json",
]


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
    SEED_SUBTARGET_CHANGED = "SEED_SUBTARGET_CHANGED"
    GOVERNOR_ROLLBACK = "GOVERNOR_ROLLBACK"
    POLICY_UPDATED = "POLICY_UPDATED"
    GRADIENT_ANOMALY = "GRADIENT_ANOMALY"
    POLICY_ANOMALY = "POLICY_ANOMALY"


def _one_of(*allowed: str) -> Any:
    """An attrs validator: the value is one of ``allowed`` (a one-line message naming the field)."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in allowed:
            raise ValueError(f"{attribute.name} must be one of {', '.join(allowed)}, got {value!r}")

    return check


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
    #: torch's intra-op thread count for the run (``torch.get_num_threads()``); None: not recorded
    #: (records written before this field existed)
    torch_threads: int | None = None


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
    #: units per group of a grouped ladder (``LadderModule.internal_group_size``); None for other seeds
    internal_group_size: int | None = None
    #: groups in use (== ``internal_level``) of a grouped ladder; None for other seeds
    internal_active_groups: int | None = None


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
    #: units per group of a grouped ladder (``LadderModule.internal_group_size``); None for other seeds
    internal_group_size: int | None = None
    #: groups in use (== ``internal_level``) of a grouped ladder; None for other seeds
    internal_active_groups: int | None = None


@attrs.frozen
class SeedPrunedPayload:
    """A seed left its slot without being fossilized. ``reason`` says why: ``policy`` (the policy's
    PRUNE), ``rollback`` (a governor rollback removed it), or the lifecycle gate that failed."""

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
    #: units per group of a grouped ladder (``LadderModule.internal_group_size``); None for other ladders
    internal_group_size: int | None = None
    #: groups in use after the change (== ``to_level``) for a grouped ladder; None for other ladders
    internal_active_groups: int | None = None


@attrs.frozen
class SeedSubtargetChangedPayload:
    """An ENABLE_SUBTARGET or DISABLE_SUBTARGET that succeeded (emitted by Kasmina only then; added in
    0.2.1). A GROW_INTERNAL / SHRINK_INTERNAL of a seed that is both a ladder and an inventory emits
    ``SEED_INTERNAL_LEVEL_CHANGED`` instead."""

    slot_id: str
    env_id: int
    seed_id: str
    blueprint_id: str
    #: the group switched, 0..K-1
    subtarget_idx: int
    #: True for ENABLE_SUBTARGET, False for DISABLE_SUBTARGET
    enabled: bool
    #: enabled groups after the change
    subtarget_active_count: int
    #: the seed's parameters in use under its mask after the change (the size rule)
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
    """A policy's ``end_episode`` metrics (the keys the core reads are in ``Policy.end_episode``)."""

    round: int
    metrics: dict[str, float]


#: What a gradient anomaly is about: a seed (``name`` is its slot id) or a part of the host (``name``
#: is the host segment's name, ``"host"`` for the whole host).
GRADIENT_SITES = ("seed", "host_segment")
#: ``non_finite``: a NaN or infinite gradient norm; ``exploding``: norm above the threshold;
#: ``vanishing``: a TRAINING seed's norm below the threshold; ``dead_seed``: a TRAINING seed got no gradient.
GRADIENT_ANOMALY_KINDS = ("non_finite", "exploding", "vanishing", "dead_seed")
#: ``entropy_collapse``: an action head's entropy below the threshold; ``value_loss_blowup``: the value
#: loss above a multiple of its running median (or not finite); ``kl_spike``: approx KL above the threshold.
POLICY_ANOMALY_KINDS = ("entropy_collapse", "value_loss_blowup", "kl_spike")


@attrs.frozen
class GradientAnomalyPayload:
    """A gradient pathology measured after one environment's epoch of training (see
    ``esper_core.telemetry.anomalies``). ``value`` is the gradient norm, ``threshold`` the bound it
    crossed, in the same unit (None for ``non_finite``, which has no bound)."""

    env_id: int
    round: int
    epoch: int
    where: str = attrs.field(validator=_one_of(*GRADIENT_SITES))
    #: the slot id (``where == "seed"``) or the host segment's name
    name: str
    kind: str = attrs.field(validator=_one_of(*GRADIENT_ANOMALY_KINDS))
    value: float
    threshold: float | None
    seed_id: str | None = None


@attrs.frozen
class PolicyAnomalyPayload:
    """A learning pathology of the policy, read from its ``end_episode`` metrics (see
    ``esper_core.telemetry.anomalies``). ``value`` and ``threshold`` share a unit: nats for
    ``entropy_collapse`` (of ``head``), the value loss for ``value_loss_blowup``, approx KL for ``kl_spike``.
    ``threshold`` is None when the value was not finite and no bound applied (a NaN value loss in the
    first rounds, before there is a median to compare with)."""

    round: int
    kind: str = attrs.field(validator=_one_of(*POLICY_ANOMALY_KINDS))
    value: float
    threshold: float | None
    head: str | None = None


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
    TelemetryEventType.SEED_SUBTARGET_CHANGED: SeedSubtargetChangedPayload,
    TelemetryEventType.GOVERNOR_ROLLBACK: GovernorRollbackPayload,
    TelemetryEventType.POLICY_UPDATED: PolicyUpdatedPayload,
    TelemetryEventType.GRADIENT_ANOMALY: GradientAnomalyPayload,
    TelemetryEventType.POLICY_ANOMALY: PolicyAnomalyPayload,
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


def _strict_int(value: Any, type_: Any) -> int:
    if type_ is not int:  # a subclass (an IntEnum without its own hook) reached through int: by value
        return type_(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _strict_float(value: Any, type_: Any) -> float:
    if type_ is not float:
        return type_(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _strict_str(value: Any, type_: Any) -> str:
    if type_ is not str:  # e.g. a StrEnum: by value
        return type_(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _strict_bool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _is_variadic_tuple(type_: Any) -> bool:
    return typing.get_origin(type_) is tuple and typing.get_args(type_)[-1:] == (Ellipsis,)


def _variadic_tuple_hook(type_: Any, converter: cattrs.Converter) -> Any:
    """``tuple[X, ...]`` from a JSON list only (cattrs would split a string into characters)."""
    item_type = typing.get_args(type_)[0]

    def structure(value: Any, _type: Any) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        return tuple(converter.structure(item, item_type) for item in value)

    return structure


#: Structures and unstructures events (and, through copies, checkpoint state records): enums by name; on reading, every field must
#: be present with its declared JSON type (no coercion of strings to numbers), and unknown keys are errors.
_json_converter = cattrs.Converter(forbid_extra_keys=True)
_json_converter.register_structure_hook(int, _strict_int)
_json_converter.register_structure_hook(float, _strict_float)
_json_converter.register_structure_hook(str, _strict_str)
_json_converter.register_structure_hook(bool, _strict_bool)
_json_converter.register_structure_hook_factory(_is_variadic_tuple, _variadic_tuple_hook)
_json_converter.register_unstructure_hook(SeedStage, lambda stage: stage.name)
_json_converter.register_structure_hook(SeedStage, lambda value, _: SeedStage[value])
_json_converter.register_unstructure_hook(BlendStyle, lambda style: style.name)
_json_converter.register_structure_hook(BlendStyle, lambda value, _: BlendStyle[value])


def event_to_dict(event: TelemetryEvent) -> dict[str, Any]:
    """The JSON-ready form: ``{"event": TYPE, "time": float, "data": {...}}``."""
    return {
        "event": event.event_type.value,
        "time": event.timestamp,
        "data": _json_converter.unstructure(event.payload),
    }


def event_to_json(event: TelemetryEvent) -> str:
    return json.dumps(event_to_dict(event), sort_keys=False, allow_nan=True)


def _schema_problems(exc: Exception) -> str:
    """cattrs' structuring errors as ``"problem @ $.field"`` phrases joined by ``; ``."""

    def describe(error: BaseException, type_: Any) -> str:
        if isinstance(error, (KeyError, ValueError, TypeError)) and error.args:
            if isinstance(error, KeyError):
                if type_ is not None and isinstance(type_, type) and issubclass(type_, enum.Enum):
                    return f"{error.args[0]!r} is not a {type_.__name__} name"
                return "required field missing"
            return str(error.args[0])
        return format_exception(error, type_)

    return "; ".join(cattrs.transform_error(exc, format_exception=describe))


def event_from_dict(record: Any) -> TelemetryEvent:
    """Rebuild a typed event from its JSON form. A record that is not an Esper event, or whose payload
    does not match its event type's schema (a missing, unknown or mistyped field), raises ``DataError``
    with one line naming the event type and the fields."""
    if not isinstance(record, dict) or set(record) != {"event", "time", "data"}:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"not an Esper event record (needs exactly the keys data, event, time; got {keys})")
    try:
        event_type = TelemetryEventType(record["event"])
    except ValueError:
        raise DataError(f"unknown event type {record['event']!r}") from None
    timestamp = record["time"]
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        raise DataError(f"{event_type.value} event has a non-numeric time {timestamp!r}")
    payload_type = EVENT_PAYLOADS[event_type]
    if not isinstance(record["data"], dict):
        raise DataError(f"{event_type.value} event data is not an object")
    try:
        payload = _json_converter.structure(record["data"], payload_type)
    except Exception as exc:  # parse boundary: cattrs raises a group of arbitrary per-field errors
        raise DataError(f"{event_type.value} event does not match its schema: {_schema_problems(exc)}") from None
    return TelemetryEvent(event_type=event_type, payload=payload, timestamp=float(timestamp))
