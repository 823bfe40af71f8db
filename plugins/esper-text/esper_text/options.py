"""The window and split options both text tasks share (attrs fields with their defaults and validators)."""

from __future__ import annotations

from typing import Any

import attrs

from esper_core.validators import in_range, int_in_range, optional

DEFAULT_CONTEXT_LENGTH = 64
MAX_CONTEXT_LENGTH = 8192
#: Bounds the stride and the window caps so that no index computation overflows a 64-bit integer.
MAX_COUNT = 2**40
DEFAULT_VAL_FRACTION = 0.1
#: 32 batches of 128 per epoch; the windows kept are spread evenly over the training text.
DEFAULT_MAX_TRAIN_WINDOWS = 4096
DEFAULT_MAX_VAL_WINDOWS = 512


def context_length_field() -> Any:
    return attrs.field(default=DEFAULT_CONTEXT_LENGTH, validator=int_in_range(1, MAX_CONTEXT_LENGTH))


def val_fraction_field() -> Any:
    return attrs.field(default=DEFAULT_VAL_FRACTION, validator=in_range(0.01, 0.5))


def stride_field() -> Any:
    return attrs.field(default=None, validator=optional(int_in_range(1, MAX_COUNT)))


def max_windows_field(default: int) -> Any:
    return attrs.field(default=default, validator=int_in_range(0, MAX_COUNT))
