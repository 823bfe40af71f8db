"""Tamiyo: the deciding side (observations, action masks and the ``Policy`` interface)."""

from esper_core.tamiyo.features import (
    BASE_FEATURES,
    BASE_SIZE,
    SLOT_FEATURES,
    SLOT_SIZE,
    SUBTARGET_FEATURES,
    Feature,
    FeatureBatch,
    RENAMED_FEATURES,
    build_features,
    slot_layout,
    slot_size,
)
from esper_core.tamiyo.masks import ActionMasks, compute_masks, slot_valid_for
from esper_core.tamiyo.observation import EnvObservation
from esper_core.tamiyo.policy import Policy, PolicyContext

__all__ = [
    "BASE_FEATURES",
    "BASE_SIZE",
    "SLOT_FEATURES",
    "SLOT_SIZE",
    "SUBTARGET_FEATURES",
    "Feature",
    "FeatureBatch",
    "RENAMED_FEATURES",
    "ActionMasks",
    "EnvObservation",
    "Policy",
    "PolicyContext",
    "build_features",
    "slot_layout",
    "slot_size",
    "compute_masks",
    "slot_valid_for",
]
