"""Tamiyo: the controller side (observations, action masks and the controller interface)."""

from esper_core.tamiyo.controller import Controller, PolicyContext
from esper_core.tamiyo.masks import ActionMasks, compute_masks, slot_valid_for
from esper_core.tamiyo.observation import EnvObservation

__all__ = ["ActionMasks", "Controller", "EnvObservation", "PolicyContext", "compute_masks", "slot_valid_for"]
