"""One check for configured numbers (exitguard._validate), used by every constructor: a bool is
never a number, NaN and infinity never pass where a finite number belongs, and the error names
the field."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from exitguard import CircuitBreaker, ConfigError, RetryPolicy
from exitguard._validate import at_least, fraction, non_negative, number, positive, whole
from exitguard.artefacts.rules import Thresholds
from exitguard.deadline import ExitDeadline
from exitguard.sim import Conditions, MarketSpec, VenueSpec
from exitguard.tracker import ExitAttemptTracker

BAD_POSITIVE = [True, False, math.nan, math.inf, -math.inf, 0, -1.0, "1", None]


@pytest.mark.parametrize("value", BAD_POSITIVE)
def test_positive_refuses_bools_nan_infinity_and_non_positive(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^Owner\.field must be a finite number > 0, got"):
        positive("Owner", "field", value)


def test_each_check_accepts_what_it_should_and_returns_a_float() -> None:
    assert positive("O", "f", 2) == 2.0
    assert isinstance(positive("O", "f", 2), float)
    assert positive("O", "f", math.inf, allow_inf=True) == math.inf
    assert non_negative("O", "f", 0) == 0.0
    assert number("O", "f", -3.5) == -3.5
    assert number("O", "f", math.inf, finite=False) == math.inf
    assert at_least("O", "f", 1, 1) == 1.0
    assert fraction("O", "f", 0) == 0.0
    assert fraction("O", "f", 1) == 1.0
    assert whole("O", "f", 3, 1) == 3


@pytest.mark.parametrize(("check", "value"), [
    (lambda v: non_negative("O", "f", v), True),
    (lambda v: non_negative("O", "f", v), -0.5),
    (lambda v: number("O", "f", v), math.nan),
    (lambda v: number("O", "f", v), math.inf),
    (lambda v: at_least("O", "f", v, 1), 0.5),
    (lambda v: fraction("O", "f", v), 1.5),
    (lambda v: fraction("O", "f", v, zero=False), 0),
    (lambda v: fraction("O", "f", v), True),
    (lambda v: whole("O", "f", v, 1), True),
    (lambda v: whole("O", "f", v, 1), 0),
    (lambda v: whole("O", "f", v, 1), 1.0),
])
def test_each_check_refuses_what_it_should(
    check: Callable[[object], object], value: object
) -> None:
    with pytest.raises(ConfigError) as info:
        check(value)
    assert info.value.field == "f"


@pytest.mark.parametrize(("build", "field"), [
    (lambda v: ExitDeadline(v), "seconds"),
    (lambda v: CircuitBreaker(cooldown=v), "cooldown"),
    (lambda v: CircuitBreaker(window=v), "window"),
    (lambda v: RetryPolicy(total_timeout=v), "total_timeout"),
    (lambda v: ExitAttemptTracker(emergency_threshold=v), "emergency_threshold"),
    (lambda v: MarketSpec(start_price=v), "start_price"),
    (lambda v: VenueSpec(fee_scale=v), "fee_scale"),
    (lambda v: Conditions(latency_median=v), "latency_median"),
    (lambda v: Thresholds(deadline_seconds=v), "deadline_seconds"),
])
@pytest.mark.parametrize("value", [True, math.nan, -1.0])
def test_constructors_share_the_check_and_name_the_field(
    build: Callable[[object], object], field: str, value: object
) -> None:
    with pytest.raises(ConfigError) as info:
        build(value)
    assert info.value.field == field
    assert field in str(info.value)
