"""Tolaria: the execution engine (environments, the epoch loop, the governor, run start and resume)."""

from esper_core.tolaria.environment import Environment, ValidationResult
from esper_core.tolaria.governor import Governor

__all__ = ["Environment", "Governor", "ValidationResult"]
