"""Leyline: the shared contracts every Esper package speaks (stages, actions, specs, reports, events)."""

from esper_core.leyline.actions import (
    CAUSAL_RELEVANCE,
    ENUM_HEAD_SIZES,
    HEADS,
    MAX_SUBTARGETS,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlendStyle,
    FactoredAction,
    LifecycleOp,
    Tempo,
    is_relevant,
)
from esper_core.leyline.injection import MAX_SURFACE_CODE, SEGMENT_BOUNDARY, InjectionSpec, SlotConfig
from esper_core.leyline.reports import SeedMetrics, SeedStateReport
from esper_core.leyline.stages import (
    BLENDED_STAGES,
    INCUBATOR_STAGES,
    LIVE_STAGES,
    OCCUPIED_STAGES,
    RECOVERY_STAGES,
    TRANSITIONS,
    SeedStage,
    check_transition,
)
from esper_core.leyline.steps import epoch_step
from esper_core.leyline.telemetry import (
    EVENT_PAYLOADS,
    TelemetryEvent,
    TelemetryEventType,
    event_from_dict,
    event_to_dict,
    event_to_json,
)

__all__ = [
    "MAX_SUBTARGETS",
    "MAX_SURFACE_CODE",
    "AlphaCurve",
    "AlphaSpeed",
    "AlphaTarget",
    "BLENDED_STAGES",
    "BlendStyle",
    "CAUSAL_RELEVANCE",
    "ENUM_HEAD_SIZES",
    "EVENT_PAYLOADS",
    "FactoredAction",
    "HEADS",
    "INCUBATOR_STAGES",
    "InjectionSpec",
    "LIVE_STAGES",
    "LifecycleOp",
    "OCCUPIED_STAGES",
    "RECOVERY_STAGES",
    "SEGMENT_BOUNDARY",
    "SeedMetrics",
    "SeedStage",
    "SeedStateReport",
    "SlotConfig",
    "TRANSITIONS",
    "TelemetryEvent",
    "TelemetryEventType",
    "Tempo",
    "check_transition",
    "epoch_step",
    "event_from_dict",
    "event_to_dict",
    "event_to_json",
    "is_relevant",
]
