"""Retry policies and the escalation ladder: validated at construction, immutable after."""

from __future__ import annotations

import math
import random
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._validate import at_least, fraction, number, positive, whole
from .errors import EXIT_RETRYABLE, TRANSIENT, ConfigError, ErrorClass
from .venue import ExitOrder, OrderMode, Position

__all__ = [
    "AdaptiveExitExecutor",
    "ConfigError",
    "EscalationLadder",
    "EscalationStep",
    "RetryPolicy",
]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry; times in seconds.

    Two presets, and the constructor's defaults are the first:

    * ``RetryPolicy()`` == ``RetryPolicy.exit_policy()``: what ``ExitGuard`` uses unless
      given another; retries every error class an exit can recover from.
    * ``RetryPolicy.general()``: for any other call (``BoundedRetryExecutor``'s default);
      more patient per attempt, and retries only transient errors (network, timeout).

    ``total_timeout`` bounds the
    submission phase: no attempt starts after it, and none starts with less than
    ``min_attempt_time`` left. ``attempt_timeout`` bounds each attempt's wait for a
    confirmation (always further cut to the time left, and to the submission budget
    divided by ``max_attempts``, so one hung attempt cannot eat the whole budget). An order
    that was sent and failed, or whose outcome stayed unknown, spends one of
    ``max_attempts``; an order the venue proves it never sent (``OrderNotSent``) spends
    none (such resends are bounded by the deadline and the backoff). Attempts that fill part
    of a position make progress and do not count against ``max_attempts``; at most
    ``max_partial_fills`` of them are made in one exit, with the backoff between them.
    """

    max_attempts: int = 2
    initial_backoff: float = 0.5
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.5
    total_timeout: float = 20.0
    attempt_timeout: float = 8.0
    retryable: frozenset[ErrorClass] = field(default=EXIT_RETRYABLE)
    min_attempt_time: float = 0.25
    jitter: float = 0.0
    max_partial_fills: int = 10

    def __post_init__(self) -> None:
        owner = "RetryPolicy"
        whole(owner, "max_attempts", self.max_attempts, 1)
        whole(owner, "max_partial_fills", self.max_partial_fills, 1)
        positive(owner, "initial_backoff", self.initial_backoff)
        positive(owner, "max_backoff", self.max_backoff)
        if self.max_backoff < self.initial_backoff:
            raise ConfigError(
                owner, "max_backoff", f"must be >= initial_backoff ({self.initial_backoff})",
                self.max_backoff,
            )
        at_least(owner, "backoff_multiplier", self.backoff_multiplier, 1)
        positive(owner, "total_timeout", self.total_timeout)
        positive(owner, "attempt_timeout", self.attempt_timeout)
        minimum = number(owner, "min_attempt_time", self.min_attempt_time, finite=False)
        if minimum < 0 or minimum >= self.total_timeout:
            raise ConfigError(
                owner, "min_attempt_time", "must be >= 0 and below total_timeout", minimum
            )
        fraction(owner, "jitter", self.jitter)
        try:
            retryable = frozenset(self.retryable)
        except TypeError:
            raise ConfigError(
                owner, "retryable", "must be a collection of ErrorClass values", self.retryable
            ) from None
        if not all(isinstance(c, ErrorClass) for c in retryable):
            raise ConfigError(owner, "retryable", "must hold ErrorClass values", self.retryable)
        object.__setattr__(self, "retryable", retryable)

    @classmethod
    def general(cls) -> RetryPolicy:
        """For calls other than exits (``BoundedRetryExecutor``'s default): 3 attempts, 1 s
        doubling to 10 s, 30 s in all, transient errors only. Not ``RetryPolicy()``."""
        return cls(
            max_attempts=3, initial_backoff=1.0, max_backoff=10.0, backoff_multiplier=2.0,
            total_timeout=30.0, attempt_timeout=10.0, retryable=TRANSIENT,
        )

    @classmethod
    def default(cls) -> RetryPolicy:
        """Deprecated name of :meth:`general` (it is not the default ``RetryPolicy()``)."""
        warnings.warn("RetryPolicy.default() is now RetryPolicy.general(); RetryPolicy() is"
                      " the exit policy", DeprecationWarning, stacklevel=2)
        return cls.general()

    @classmethod
    def exit_policy(cls) -> RetryPolicy:
        """ExitGuard's policy, the same as ``RetryPolicy()``: 2 attempts, 500 ms x2.5 up to
        5 s, 20 s in all, every error class an exit can recover from."""
        return cls()

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """The wait before retry ``retry_number`` (1 = the first retry), capped at max_backoff."""
        exponent = max(retry_number - 1, 0)
        try:
            delay = self.initial_backoff * self.backoff_multiplier**exponent
        except OverflowError:
            delay = self.max_backoff
        delay = min(delay, self.max_backoff)
        if self.jitter:
            delay *= 1 - self.jitter * (rng or random).random()
        return delay

    def is_retryable(self, error_class: ErrorClass) -> bool:
        return error_class in self.retryable


@dataclass(frozen=True, slots=True)
class EscalationStep:
    """One rung of the ladder. ``attempts`` is how many tries this step gets before the next."""

    mode: OrderMode
    max_slippage_bps: int
    priority_fee: int | None = None
    attempts: int = 1

    def __post_init__(self) -> None:
        owner = "EscalationStep"
        if not isinstance(self.mode, OrderMode):
            raise ConfigError(owner, "mode", "must be an OrderMode", self.mode)
        whole(owner, "max_slippage_bps", self.max_slippage_bps, 0)
        if self.max_slippage_bps >= 10_000:
            raise ConfigError(
                owner, "max_slippage_bps", "must be below 10000", self.max_slippage_bps
            )
        if self.priority_fee is not None:
            whole(owner, "priority_fee", self.priority_fee, 0)
        whole(owner, "attempts", self.attempts, 1)


@dataclass(frozen=True, slots=True)
class EscalationLadder:
    """Limit first, then market with wider slippage: the original design's fallback, generalised.

    Each resubmission at the same step multiplies the priority fee by ``fee_multiplier``
    (an expired transaction wants a higher fee), capped at ``max_priority_fee``; slippage is
    capped at ``max_slippage_bps``. A slippage error moves to the next step at once.
    """

    steps: tuple[EscalationStep, ...]
    fee_multiplier: float = 1.5
    max_priority_fee: int | None = None
    max_slippage_bps: int = 1_000

    def __post_init__(self) -> None:
        owner = "EscalationLadder"
        try:
            steps = tuple(self.steps)
        except TypeError:
            raise ConfigError(
                owner, "steps", "must be a sequence of EscalationStep values", self.steps
            ) from None
        if not steps:
            raise ConfigError(owner, "steps", "must hold at least one step", self.steps)
        if not all(isinstance(s, EscalationStep) for s in steps):
            raise ConfigError(owner, "steps", "must hold EscalationStep values", self.steps)
        object.__setattr__(self, "steps", steps)
        at_least(owner, "fee_multiplier", self.fee_multiplier, 1)
        if self.max_priority_fee is not None:
            whole(owner, "max_priority_fee", self.max_priority_fee, 0)
        whole(owner, "max_slippage_bps", self.max_slippage_bps, 0)
        if self.max_slippage_bps >= 10_000:
            raise ConfigError(
                owner, "max_slippage_bps", "must be below 10000", self.max_slippage_bps
            )

    @classmethod
    def default(cls) -> EscalationLadder:
        """Limit at 100 bps, then market at 500 bps after one failure (the original design's
        values)."""
        return cls(
            steps=(
                EscalationStep(OrderMode.LIMIT, 100, priority_fee=10_000, attempts=1),
                EscalationStep(OrderMode.MARKET, 500, priority_fee=100_000, attempts=1),
            ),
            fee_multiplier=2.0,
            max_priority_fee=2_000_000,
            max_slippage_bps=500,
        )

    @classmethod
    def of(cls, steps: Iterable[EscalationStep], **options: object) -> EscalationLadder:
        return cls(tuple(steps), **options)  # type: ignore[arg-type]

    def step_index(self, failures: int) -> int:
        """The step for an exit that has failed ``failures`` times (the last step repeats)."""
        remaining = failures
        for index, step in enumerate(self.steps):
            if remaining < step.attempts:
                return index
            remaining -= step.attempts
        return len(self.steps) - 1

    def failures_before(self, index: int) -> int:
        """How many failures it takes to reach step ``index``."""
        return sum(step.attempts for step in self.steps[:index])

    def order(
        self,
        position: Position,
        *,
        size: float,
        reference_price: float,
        attempt: int,
        step_index: int,
        tries_at_step: int,
    ) -> ExitOrder:
        """Build the order for one attempt, caps applied."""
        step = self.steps[min(step_index, len(self.steps) - 1)]
        fee = step.priority_fee
        if fee is not None:
            try:
                scaled = fee * self.fee_multiplier ** max(tries_at_step, 0)
            except OverflowError:  # a long run of resubmissions: the cap decides
                scaled = math.inf
            if self.max_priority_fee is not None:
                scaled = min(scaled, self.max_priority_fee)
            fee = int(scaled) if math.isfinite(scaled) else sys.maxsize
        return ExitOrder(
            position=position,
            size=size,
            mode=step.mode,
            reference_price=reference_price,
            max_slippage_bps=min(step.max_slippage_bps, self.max_slippage_bps),
            attempt=attempt,
            priority_fee=fee,
        )


class AdaptiveExitExecutor:
    """The original design's adaptive exit (exitguard.compat): picks the ladder step from the
    count of failed attempts."""

    __slots__ = ("ladder",)

    def __init__(self, ladder: EscalationLadder | None = None) -> None:
        self.ladder = ladder or EscalationLadder.default()

    def mode_for(self, failed_attempts: int) -> OrderMode:
        return self.ladder.steps[self.ladder.step_index(failed_attempts)].mode

    def order_for(
        self, position: Position, size: float, reference_price: float, failed_attempts: int
    ) -> ExitOrder:
        index = self.ladder.step_index(failed_attempts)
        return self.ladder.order(
            position,
            size=size,
            reference_price=reference_price,
            attempt=failed_attempts + 1,
            step_index=index,
            tries_at_step=failed_attempts - self.ladder.failures_before(index),
        )
