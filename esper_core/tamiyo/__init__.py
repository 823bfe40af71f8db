"""Tamiyo: the deciding side (observations, action masks and the ``Policy`` interface)."""

from esper_core.tamiyo.controller import Controller, Policy, PolicyContext
from esper_core.tamiyo.masks import ActionMasks, compute_masks, slot_valid_for
from esper_core.tamiyo.observation import EnvObservation

__all__ = ["ActionMasks", "Controller", "EnvObservation", "Policy", "PolicyContext", "compute_masks", "slot_valid_for"]
