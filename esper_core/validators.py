"""The attrs validators core and plugin configs share: finite numbers, ranges, counts and choices."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

__all__ = [
    "InvalidValue",
    "Validator",
    "finite",
    "in_range",
    "int_in_range",
    "non_negative",
    "non_negative_int",
    "one_of",
    "optional",
    "positive",
    "positive_int",
    "probability",
]

#: An attrs field validator: ``(instance, attribute, value) -> None``, raising on a bad value.
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


class InvalidValue(ValueError):
    """A field's value is out of bounds or of the wrong kind.

    ``field`` is the attribute name, ``reason`` the sentence that follows it (``"must be a finite
    number > 0, got inf"``) and ``value`` the rejected value. The config loader renders
    ``[section] field: reason`` from these attributes; it never parses the message text.
    """

    def __init__(self, field: str, reason: str, value: Any = None) -> None:
        self.field = field
        self.reason = reason
        self.value = value
        super().__init__(f"{field} {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.reason, self.value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bound_text(bound: float) -> str:
    """``0`` for 0.0, ``0.5`` for 0.5: bounds read as a person would write them."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e15 else repr(float(bound))


def _range_text(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> str:
    if low is not None and high is not None:
        opening = "[" if low_inclusive else "("
        closing = "]" if high_inclusive else ")"
        return f" in {opening}{_bound_text(low)}, {_bound_text(high)}{closing}"
    if low is not None:
        return f" {'>=' if low_inclusive else '>'} {_bound_text(low)}"
    if high is not None:
        return f" {'<=' if high_inclusive else '<'} {_bound_text(high)}"
    return ""


def _within(value: float, low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> bool:
    if low is not None and not (value >= low if low_inclusive else value > low):
        return False
    if high is not None and not (value <= high if high_inclusive else value < high):
        return False
    return True


def in_range(
    low: float | None,
    high: float | None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Validator:
    """A finite number (not a bool) between ``low`` and ``high``; ``None`` leaves that side open."""
    rule = f"must be a finite number{_range_text(low, high, low_inclusive, high_inclusive)}"

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        finite_number = _is_number(value) and math.isfinite(value)
        if not finite_number or not _within(value, low, high, low_inclusive, high_inclusive):
            raise InvalidValue(attribute.name, f"{rule}, got {value!r}", value)

    return check


def finite() -> Validator:
    """Any finite number (NaN, +inf, -inf and bools are rejected)."""
    return in_range(None, None)


def positive() -> Validator:
    """A finite number > 0."""
    return in_range(0.0, None, low_inclusive=False)


def non_negative() -> Validator:
    """A finite number >= 0."""
    return in_range(0.0, None)


def probability() -> Validator:
    """A finite number in [0, 1]."""
    return in_range(0.0, 1.0)


def int_in_range(low: int | None, high: int | None = None) -> Validator:
    """An integer (not a bool) with ``low <= value <= high``; ``None`` leaves that side open."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not _is_integer(value):
            raise InvalidValue(attribute.name, f"must be an integer, got {value!r}", value)
        if low is not None and value < low:
            raise InvalidValue(attribute.name, f"must be >= {low}, got {value!r}", value)
        if high is not None and value > high:
            raise InvalidValue(attribute.name, f"must be <= {high}, got {value!r}", value)

    return check


def positive_int() -> Validator:
    """An integer >= 1."""
    return int_in_range(1)


def non_negative_int() -> Validator:
    """An integer >= 0."""
    return int_in_range(0)


def one_of(*choices: Any) -> Validator:
    """One of ``choices`` (compared with ``==``; ``True`` is not ``1``)."""
    listed = ", ".join(str(choice) for choice in choices)

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not any(value == choice and type(value) is type(choice) for choice in choices):
            raise InvalidValue(attribute.name, f"must be one of {listed}, got {value!r}", value)

    return check


def optional(validator: Validator | list[Validator]) -> Validator:
    """``None``, or a value every one of ``validator`` accepts."""
    validators = list(validator) if isinstance(validator, (list, tuple)) else [validator]

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        for each in validators:
            each(instance, attribute, value)

    return check
