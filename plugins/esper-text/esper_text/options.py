"""The window and split options both text tasks share (attrs fields with their defaults and validators)."""

from __future__ import annotations

from typing import Any

import attrs

DEFAULT_CONTEXT_LENGTH = 64
DEFAULT_VAL_FRACTION = 0.1
#: 32 batches of 128 per epoch; the windows kept are spread evenly over the training text.
DEFAULT_MAX_TRAIN_WINDOWS = 4096
DEFAULT_MAX_VAL_WINDOWS = 512


def context_length_field() -> Any:
    return attrs.field(default=DEFAULT_CONTEXT_LENGTH, validator=[attrs.validators.ge(1), attrs.validators.le(8192)])


def val_fraction_field() -> Any:
    return attrs.field(default=DEFAULT_VAL_FRACTION, validator=[attrs.validators.ge(0.01), attrs.validators.le(0.5)])


def stride_field() -> Any:
    return attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))


def max_windows_field(default: int) -> Any:
    return attrs.field(default=default, validator=attrs.validators.ge(0))
