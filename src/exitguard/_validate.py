"""Checks of configured numbers, written once: invalid config fails at construction, naming
the field.

Every check raises :class:`~exitguard.errors.ConfigError` (a ``ValueError``) whose message
reads ``Owner.field <problem>, got <value>``, and returns the value as a ``float`` (or
``int``). A bool is never a number here (``True`` is not 1.0: a flag passed where a number
belongs is a mistake), and NaN never passes (it compares false with everything, so a later
``x > 0`` would not catch it).

    from ._validate import positive
    self.cooldown = positive("CircuitBreaker", "cooldown", cooldown)

Standard library only: the core uses it.
"""

from __future__ import annotations

import math
from typing import TypeGuard

from .errors import ConfigError

__all__ = ["at_least", "fraction", "is_real", "non_negative", "number", "positive", "whole"]


def is_real(value: object) -> TypeGuard[int | float]:
    """An int or float that is neither a bool nor NaN (infinities pass)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and not (isinstance(value, float) and math.isnan(value)))


def number(owner: str, field: str, value: object, *, finite: bool = True) -> float:
    """A real number (finite unless ``finite=False``), as a float."""
    if not is_real(value):
        raise ConfigError(owner, field, "must be a number", value)
    if finite and math.isinf(value):
        raise ConfigError(owner, field, "must be a finite number", value)
    return float(value)


def positive(owner: str, field: str, value: object, *, allow_inf: bool = False) -> float:
    """A finite number > 0 (``allow_inf``: infinity too, e.g. "no time bound")."""
    if not (is_real(value) and value > 0 and (allow_inf or not math.isinf(value))):
        raise ConfigError(
            owner, field, "must be a number > 0" if allow_inf else "must be a finite number > 0",
            value,
        )
    return float(value)


def non_negative(owner: str, field: str, value: object) -> float:
    """A finite number >= 0."""
    if not (is_real(value) and value >= 0 and not math.isinf(value)):
        raise ConfigError(owner, field, "must be a finite number >= 0", value)
    return float(value)


def at_least(owner: str, field: str, value: object, minimum: float) -> float:
    """A finite number >= ``minimum`` (a multiplier: ``at_least(..., 1)``)."""
    if not (is_real(value) and value >= minimum and not math.isinf(value)):
        raise ConfigError(owner, field, f"must be a finite number >= {minimum:g}", value)
    return float(value)


def fraction(owner: str, field: str, value: object, *, zero: bool = True) -> float:
    """A number in [0, 1] (a probability, a ratio); ``zero=False``: in (0, 1]."""
    if not (is_real(value) and (value >= 0 if zero else value > 0) and value <= 1):
        raise ConfigError(
            owner, field, "must be a number in [0, 1]" if zero else "must be a number in (0, 1]",
            value,
        )
    return float(value)


def whole(owner: str, field: str, value: object, minimum: int) -> int:
    """An int (never a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(owner, field, "must be an integer", value)
    if value < minimum:
        raise ConfigError(owner, field, f"must be an integer >= {minimum}", value)
    return value
