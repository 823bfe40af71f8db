"""Kasmina: seed slots, their lifecycle mechanics and the morphogenetic model wrapper."""

from esper_core.kasmina.blending import ActivationLayout, AlphaSchedule, BlendGate, blend, curve_value, resolve_topology
from esper_core.kasmina.host import HostModule, check_host
from esper_core.kasmina.inventory import MAX_SUBTARGETS, SubtargetInventory
from esper_core.kasmina.ladder import LadderModule
from esper_core.kasmina.model import ModelLifecycleState, MorphogeneticModel
from esper_core.kasmina.slot import LifecycleSettings, OpResult, SeedSlot, SlotLifecycleState, count_parameters

__all__ = [
    "MAX_SUBTARGETS",
    "ActivationLayout",
    "AlphaSchedule",
    "BlendGate",
    "HostModule",
    "LadderModule",
    "LifecycleSettings",
    "ModelLifecycleState",
    "MorphogeneticModel",
    "OpResult",
    "SeedSlot",
    "SlotLifecycleState",
    "SubtargetInventory",
    "blend",
    "check_host",
    "count_parameters",
    "curve_value",
    "resolve_topology",
]
