"""RetryPolicy, EscalationStep/EscalationLadder and AdaptiveExitExecutor: values and bad input."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest

from exitguard import (
    ConfigError,
    ErrorClass,
    EscalationLadder,
    EscalationStep,
    OrderMode,
    Position,
    RetryPolicy,
)
from exitguard.compat import AdaptiveExitExecutor
from exitguard.errors import EXIT_RETRYABLE, TRANSIENT

NAN = math.nan
INF = math.inf
POSITION = Position("pos-1", "SOL", 10.0, 100.0)


# -- RetryPolicy: the two presets -----------------------------------------------------------


def test_the_constructors_defaults_are_the_exit_policy() -> None:
    policy = RetryPolicy()
    assert policy == RetryPolicy.exit_policy()
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (2, 0.5, 5.0)
    assert (policy.backoff_multiplier, policy.total_timeout) == (2.5, 20.0)
    assert policy.retryable == EXIT_RETRYABLE
    assert ErrorClass.RPC_TIMEOUT in policy.retryable
    assert ErrorClass.NETWORK in policy.retryable


def test_general_is_another_policy_and_default_its_deprecated_name() -> None:
    policy = RetryPolicy.general()
    assert policy != RetryPolicy()
    with pytest.warns(DeprecationWarning, match=r"RetryPolicy\.general\(\)"):
        assert RetryPolicy.default() == policy
    assert policy.max_attempts == 3
    assert policy.initial_backoff == 1.0
    assert policy.max_backoff == 10.0
    assert policy.backoff_multiplier == 2.0
    assert policy.total_timeout == 30.0
    # Only RpcTimeout and NetworkError are retried.
    assert policy.retryable == TRANSIENT == {ErrorClass.RPC_TIMEOUT, ErrorClass.NETWORK}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetryPolicy.general(), [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
        (RetryPolicy.exit_policy(), [0.5, 1.25, 3.125, 5.0, 5.0]),
        (RetryPolicy(initial_backoff=0.1, max_backoff=0.1, backoff_multiplier=1.0),
         [0.1, 0.1, 0.1]),
    ],
)
def test_backoff_is_exponential_and_capped(policy: RetryPolicy, expected: list[float]) -> None:
    got = [policy.backoff(n) for n in range(1, len(expected) + 1)]
    assert got == pytest.approx(expected)


def test_backoff_never_overflows() -> None:
    policy = RetryPolicy(backoff_multiplier=10.0)
    assert policy.backoff(10_000) == policy.max_backoff
    # An integer multiplier takes the integer power path (int too large for float).
    assert RetryPolicy(backoff_multiplier=3).backoff(100_000) == 5.0
    assert policy.backoff(0) == policy.initial_backoff  # nonsense retry numbers clamp
    assert policy.backoff(-3) == policy.initial_backoff


def test_jitter_only_shortens_the_backoff() -> None:
    policy = RetryPolicy(jitter=0.5)
    rng = random.Random(7)
    delays = [policy.backoff(2, rng) for _ in range(200)]
    base = RetryPolicy().backoff(2)
    assert all(base * 0.5 <= d <= base for d in delays)
    assert len(set(delays)) > 100  # it really varies
    assert RetryPolicy(jitter=0.0).backoff(2, rng) == base


def test_policy_is_immutable_and_retryable_is_frozen() -> None:
    policy = RetryPolicy(retryable=[ErrorClass.NETWORK])  # type: ignore[arg-type]
    assert policy.retryable == frozenset({ErrorClass.NETWORK})
    assert isinstance(policy.retryable, frozenset)
    assert policy.is_retryable(ErrorClass.NETWORK)
    assert not policy.is_retryable(ErrorClass.RPC_TIMEOUT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 9  # type: ignore[misc]


# -- RetryPolicy: bad input ---------------------------------------------------------------

BAD_POLICY_VALUES: list[tuple[str, Any]] = [
    ("max_attempts", 0),
    ("max_attempts", -1),
    ("max_attempts", 1.5),
    ("max_attempts", True),
    ("max_attempts", "2"),
    ("max_attempts", None),
    ("initial_backoff", 0),
    ("initial_backoff", -0.5),
    ("initial_backoff", NAN),
    ("initial_backoff", INF),
    ("initial_backoff", True),
    ("initial_backoff", "0.5"),
    ("max_backoff", 0),
    ("max_backoff", -5.0),
    ("max_backoff", NAN),
    ("max_backoff", INF),
    ("max_backoff", True),
    ("max_backoff", 0.1),  # below initial_backoff (0.5)
    ("backoff_multiplier", 0.5),
    ("backoff_multiplier", 0),
    ("backoff_multiplier", -2.0),
    ("backoff_multiplier", NAN),
    ("backoff_multiplier", INF),
    ("backoff_multiplier", True),
    ("total_timeout", 0),
    ("total_timeout", -20.0),
    ("total_timeout", NAN),
    ("total_timeout", INF),
    ("total_timeout", False),
    ("attempt_timeout", 0),
    ("attempt_timeout", -1),
    ("attempt_timeout", NAN),
    ("attempt_timeout", INF),
    ("attempt_timeout", True),
    ("min_attempt_time", -0.1),
    ("min_attempt_time", NAN),
    ("min_attempt_time", 20.0),  # not below total_timeout
    ("min_attempt_time", True),
    ("jitter", -0.1),
    ("jitter", 1.5),
    ("jitter", NAN),
    ("jitter", True),
    ("retryable", {"network"}),
    ("retryable", None),
    ("retryable", 5),
]


@pytest.mark.parametrize(("field", "value"), BAD_POLICY_VALUES)
def test_retry_policy_rejects_impossible_values(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy(**{field: value})
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert f"RetryPolicy.{field}" in str(info.value)


def test_max_backoff_below_initial_names_both() -> None:
    with pytest.raises(ConfigError, match=r"max_backoff must be >= initial_backoff \(2\.0\)"):
        RetryPolicy(initial_backoff=2.0, max_backoff=1.0)
    # Equal is fine: a constant backoff.
    assert RetryPolicy(initial_backoff=2.0, max_backoff=2.0).backoff(3) == 2.0


# -- EscalationStep / EscalationLadder: bad input ----------------------------------------

BAD_STEP_VALUES: list[tuple[str, Any]] = [
    ("mode", "limit"),
    ("mode", None),
    ("max_slippage_bps", -1),
    ("max_slippage_bps", 10_000),
    ("max_slippage_bps", 1.5),
    ("max_slippage_bps", NAN),
    ("max_slippage_bps", True),
    ("priority_fee", -1),
    ("priority_fee", 1.5),
    ("priority_fee", True),
    ("attempts", 0),
    ("attempts", -1),
    ("attempts", 1.0),
    ("attempts", True),
]


@pytest.mark.parametrize(("field", "value"), BAD_STEP_VALUES)
def test_escalation_step_rejects_impossible_values(field: str, value: Any) -> None:
    good: dict[str, Any] = {"mode": OrderMode.LIMIT, "max_slippage_bps": 100}
    with pytest.raises(ConfigError) as info:
        EscalationStep(**{**good, field: value})
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert f"EscalationStep.{field}" in str(info.value)


STEP = EscalationStep(OrderMode.LIMIT, 100)
BAD_LADDER_VALUES: list[tuple[str, Any]] = [
    ("steps", ()),
    ("steps", []),
    ("steps", None),
    ("steps", ("limit",)),
    ("steps", (STEP, None)),
    ("fee_multiplier", 0.5),
    ("fee_multiplier", NAN),
    ("fee_multiplier", INF),
    ("fee_multiplier", True),
    ("max_priority_fee", -1),
    ("max_priority_fee", 1.5),
    ("max_priority_fee", True),
    ("max_slippage_bps", -1),
    ("max_slippage_bps", 10_000),
    ("max_slippage_bps", True),
]


@pytest.mark.parametrize(("field", "value"), BAD_LADDER_VALUES)
def test_escalation_ladder_rejects_impossible_values(field: str, value: Any) -> None:
    good: dict[str, Any] = {"steps": (STEP,)}
    with pytest.raises(ConfigError) as info:
        EscalationLadder(**{**good, field: value})
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert f"EscalationLadder.{field}" in str(info.value)


def test_escalation_values_at_the_edges_are_accepted() -> None:
    step = EscalationStep(OrderMode.MARKET, 0, priority_fee=0, attempts=1)
    assert step.max_slippage_bps == 0
    assert EscalationStep(OrderMode.MARKET, 9_999).max_slippage_bps == 9_999
    ladder = EscalationLadder([step], fee_multiplier=1.0)  # type: ignore[arg-type]
    assert ladder.steps == (step,)  # a list is turned into a tuple
    assert EscalationLadder.of([step, step]).steps == (step, step)


# -- The ladder ----------------------------------------------------------------------------


def test_default_ladder_is_limit_100_then_market_500() -> None:
    ladder = EscalationLadder.default()
    assert [(s.mode, s.max_slippage_bps) for s in ladder.steps] == [
        (OrderMode.LIMIT, 100),
        (OrderMode.MARKET, 500),
    ]
    assert [ladder.step_index(f) for f in range(4)] == [0, 1, 1, 1]
    assert ladder.failures_before(0) == 0
    assert ladder.failures_before(1) == 1


def test_step_attempts_decide_when_to_move_on() -> None:
    ladder = EscalationLadder(
        (
            EscalationStep(OrderMode.LIMIT, 50, attempts=2),
            EscalationStep(OrderMode.LIMIT, 150, attempts=3),
            EscalationStep(OrderMode.MARKET, 500),
        )
    )
    assert [ladder.step_index(f) for f in range(8)] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert [ladder.failures_before(i) for i in range(3)] == [0, 2, 5]


def test_order_applies_fee_escalation_and_caps() -> None:
    ladder = EscalationLadder(
        (EscalationStep(OrderMode.MARKET, 900, priority_fee=1_000),),
        fee_multiplier=3.0,
        max_priority_fee=20_000,
        max_slippage_bps=400,
    )
    fees = []
    for tries in range(5):
        order = ladder.order(
            POSITION, size=4.0, reference_price=95.0, attempt=tries + 1, step_index=0,
            tries_at_step=tries,
        )
        assert order.max_slippage_bps == 400  # the step's 900 is capped by the ladder
        assert order.mode is OrderMode.MARKET
        assert order.size == 4.0
        assert order.attempt == tries + 1
        fees.append(order.priority_fee)
    assert fees == [1_000, 3_000, 9_000, 20_000, 20_000]


def test_order_without_fee_stays_without_fee() -> None:
    ladder = EscalationLadder((EscalationStep(OrderMode.LIMIT, 100),))
    order = ladder.order(
        POSITION, size=1.0, reference_price=90.0, attempt=3, step_index=7, tries_at_step=2
    )
    assert order.priority_fee is None
    assert order.max_slippage_bps == 100  # an out-of-range step index uses the last step


def test_adaptive_exit_fallback_to_market_order() -> None:
    # The original design leaves this test empty ("would normally call execute_limit_order
    # internally"). Made real: AdaptiveExitExecutor picks the ladder step from the count of
    # failed attempts: a limit order at 100 bps first, a market order at 500 bps after one
    # failure (mode_switch_threshold = 1), then the fee escalates, capped.
    executor = AdaptiveExitExecutor()
    assert executor.ladder == EscalationLadder.default()
    assert [executor.mode_for(f) for f in range(4)] == [
        OrderMode.LIMIT, OrderMode.MARKET, OrderMode.MARKET, OrderMode.MARKET,
    ]

    first = executor.order_for(POSITION, 10.0, 95.0, failed_attempts=0)
    assert first.mode is OrderMode.LIMIT
    assert first.max_slippage_bps == 100
    assert first.attempt == 1
    assert first.priority_fee == 10_000
    assert first.worst_price == pytest.approx(95.0 * 0.99)

    second = executor.order_for(POSITION, 10.0, 95.0, failed_attempts=1)
    assert second.mode is OrderMode.MARKET
    assert second.max_slippage_bps == 500
    assert second.attempt == 2
    assert second.priority_fee == 100_000  # the market step's own fee, not escalated yet
    assert second.worst_price == pytest.approx(95.0 * 0.95)

    fees = [executor.order_for(POSITION, 10.0, 95.0, f).priority_fee for f in range(1, 8)]
    # x2 per resubmission at the market step, capped at 2_000_000.
    assert fees == [100_000, 200_000, 400_000, 800_000, 1_600_000, 2_000_000, 2_000_000]
    assert all(
        executor.order_for(POSITION, 10.0, 95.0, f).max_slippage_bps <= 500 for f in range(10)
    )


def test_adaptive_executor_with_market_first_ladder() -> None:
    # AdaptiveExitExecutor::new(ExitMode::MarketOrder) in the original design: market from
    # the start.
    executor = AdaptiveExitExecutor(
        EscalationLadder((EscalationStep(OrderMode.MARKET, 300, priority_fee=5),))
    )
    assert executor.mode_for(0) is OrderMode.MARKET
    order = executor.order_for(POSITION, 2.5, 50.0, failed_attempts=0)
    assert (order.mode, order.max_slippage_bps, order.size) == (OrderMode.MARKET, 300, 2.5)
    short = Position("pos-2", "SOL", 1.0, 100.0, side="short")
    assert executor.order_for(short, 1.0, 50.0, 0).worst_price == pytest.approx(51.5)


def test_fee_escalation_survives_a_very_long_run_of_resubmissions() -> None:
    # 2.0 ** 2000 overflows a float: the cap must still decide, not an OverflowError.
    executor = AdaptiveExitExecutor()
    assert executor.order_for(POSITION, 1.0, 95.0, failed_attempts=2_000).priority_fee == (
        2_000_000
    )
    uncapped = EscalationLadder(
        (EscalationStep(OrderMode.MARKET, 100, priority_fee=5),), fee_multiplier=2.0
    )
    fee = uncapped.order(
        POSITION, size=1.0, reference_price=95.0, attempt=1, step_index=0, tries_at_step=5_000
    ).priority_fee
    assert fee is not None
    assert fee > 10**18  # without a cap the fee only grows, and stays an int
