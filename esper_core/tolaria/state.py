"""Typed checkpoint state: the engine's checkpoint record, and the converter that round-trips every state record."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import attrs
import cattrs
import torch

from esper_core.errors import CheckpointError
from esper_core.tolaria.environment import EnvironmentState, OpaqueState


@attrs.frozen
class EventRecordMark:
    """How much of ``events.jsonl`` a checkpoint covers: its first ``bytes`` bytes, holding ``lines``
    complete lines (one event each) whose sha256 is ``sha256``. A resume verifies it before changing
    anything and cuts the record back to it."""

    bytes: int
    lines: int
    sha256: str


@attrs.frozen
class RngState:
    """The global random number generators' states (``runs.rng_state``): python, numpy and torch."""

    python: list[Any]
    numpy: list[Any]
    torch: torch.Tensor


@attrs.frozen
class EngineCheckpoint:
    """What a run checkpoint holds: the next ``round`` and ``epoch`` to run, each environment's state
    when the checkpoint is mid-round (None at a round boundary), the event record mark, the
    policy's own state (its ``state_dict``, opaque to the core), the RNG states and the value-loss
    history that policy anomalies are judged on."""

    round: int
    epoch: int
    env_states: list[EnvironmentState] | None
    events: EventRecordMark
    policy: OpaqueState
    rng: RngState
    #: every finished round's value loss, oldest first (the policy's anomaly history)
    value_losses: list[float] = attrs.Factory(list)


def _structure_opaque(value: Any, _type: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a state dict, got {type(value).__name__}")
    return value


def _structure_tensor(value: Any, _type: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return value


@functools.cache
def state_converter() -> cattrs.Converter:
    """The telemetry converter (strict types, enums by name, unknown keys refused), plus tensors kept as
    they are: checkpoints are read with ``weights_only=True``, which handles tensors itself."""
    from esper_core.leyline import FactoredAction, SeedStateReport
    from esper_core.leyline.telemetry import _json_converter
    from esper_core.tolaria.environment import PendingDecision
    from esper_core.tolaria.governor import GovernorState

    # string annotations (``from __future__ import annotations``) resolved, so enums structure as enums
    # (the kasmina lifecycle records resolve their own at import)
    for record in (FactoredAction, SeedStateReport, PendingDecision, GovernorState, EnvironmentState, EventRecordMark, RngState, EngineCheckpoint):
        attrs.resolve_types(record)
    converter = _json_converter.copy()
    converter.register_structure_hook(torch.Tensor, _structure_tensor)
    converter.register_unstructure_hook(torch.Tensor, lambda tensor: tensor)
    converter.register_structure_hook(OpaqueState, _structure_opaque)
    converter.register_unstructure_hook(OpaqueState, lambda state: state)
    from esper_core.kasmina.slot import SlotLifecycleState
    from esper_core.leyline import SeedMetrics

    for record, renamed in ((SlotLifecycleState, _RENAMED_SLOT_FIELDS), (SeedMetrics, _RENAMED_METRIC_FIELDS)):
        converter.register_structure_hook(record, _reading_old_names(converter.get_structure_hook(record), renamed))
    return converter


#: fields renamed in 0.2.0 (metric -> score: they hold the score), read under their old names from
#: checkpoints written before
_RENAMED_SLOT_FIELDS = {"metric_at_germination": "score_at_germination", "last_metric": "last_score"}
_RENAMED_METRIC_FIELDS = {
    "metric_at_germination": "score_at_germination",
    "metric_delta_since_germination": "score_delta_since_germination",
}


def _reading_old_names(structure: Any, renamed: dict[str, str]) -> Any:
    def read(value: Any, type_: Any) -> Any:
        if isinstance(value, dict) and any(old in value for old in renamed):
            value = {renamed.get(key, key): item for key, item in value.items()}
        return structure(value, type_)

    return read


def checkpoint_to_dict(checkpoint: EngineCheckpoint) -> dict[str, Any]:
    return state_converter().unstructure(checkpoint)


def checkpoint_from_dict(payload: dict[str, Any], path: Path) -> EngineCheckpoint:
    """The typed checkpoint, or ``CheckpointError`` (one line) naming the file and the first problems."""
    data = {key: value for key, value in payload.items() if key not in ("format", "version")}
    try:
        return state_converter().structure(data, EngineCheckpoint)
    except Exception as exc:  # parse boundary: cattrs raises a group of arbitrary per-field errors
        problems = cattrs.transform_error(exc) if isinstance(exc, cattrs.BaseValidationError) else [str(exc)]
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(f"checkpoint '{path}' is not a complete Esper run checkpoint: {shown}") from None
