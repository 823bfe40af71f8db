"""Kasmina: seed slots, their lifecycle mechanics and the morphogenetic model wrapper."""

from esper_core.kasmina.blending import AlphaSchedule, BlendGate, blend, curve_value
from esper_core.kasmina.host import HostModule, check_host
from esper_core.kasmina.ladder import LadderModule
from esper_core.kasmina.model import MorphogeneticModel
from esper_core.kasmina.slot import LifecycleSettings, OpResult, SeedSlot, count_parameters

__all__ = [
    "AlphaSchedule",
    "BlendGate",
    "HostModule",
    "LadderModule",
    "LifecycleSettings",
    "MorphogeneticModel",
    "OpResult",
    "SeedSlot",
    "blend",
    "check_host",
    "count_parameters",
    "curve_value",
]
