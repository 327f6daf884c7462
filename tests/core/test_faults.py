"""Fault injection in the core: whatever breaks around an exit, the exit still behaves.

Faults: a hook that raises; a venue that raises unexpected exception types or answers
garbage (negative fill, fill larger than the order, NaN price, no transaction id); the exit
cancelled at every await point; a corrupt or unwritable halt file. (A pager whose webhooks
hang or fail: tests/alerting/test_pager_faults.py; an OTLP collector down or hanging and
/metrics never scraped: tests/telemetry/test_telemetry_faults.py.)

In every case the same four promises are checked:

* the exit returns an outcome within its deadline (or, when cancelled, re-raises the
  cancellation at once and still reports one outcome through the hooks);
* no position is sold twice: the venue's ground truth (``ScriptedVenue.sold_eventually``)
  never exceeds the position, and nothing is sent while an earlier order may still land;
* nothing already recorded is lost: fills seen before the fault stay in the outcome, and a
  submission that may still land is in ``pending_tx_ids`` and reconciled in the background;
* the failure is logged and counted once.

All of them run in virtual time (``run_virtual``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
from collections.abc import Callable, Coroutine, Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

from exitguard import (
    CircuitBreaker,
    ErrorClass,
    ExitGuard,
    ExitOutcome,
    ExitStatus,
    Fill,
    Hooks,
    Lookup,
    NetworkError,
    Position,
    RetryPolicy,
    Submission,
    TradingHalt,
    TradingHalted,
    TxStatus,
)
from exitguard.errors import HaltStoreError
from exitguard.events import AttemptReport, AttemptResult, ExitInfo, event_name
from exitguard.faults import FaultSource
from exitguard.halt import FileHaltStore, StoredRecord
from exitguard.state_machine import is_valid_path
from exitguard.testing import (
    FaultyVenue,
    RecordingHooks,
    ScriptedVenue,
    TxPlan,
    run_virtual,
    unchecked_fill,
)
from exitguard.venue import ExitOrder
from tests.support.faults import DEADLINE, HANG_FOREVER, POLICY, PRICE
from tests.support.logs import LogRecords

POSITION = Position("pos-fault", "SOL", 10.0, 100.0)
EPS = 1e-9


# -- helpers ----------------------------------------------------------------------------------


def run_exit(
    venue: ScriptedVenue,
    *,
    hooks: Sequence[Hooks] = (),
    deadline: float = DEADLINE,
    policy: RetryPolicy = POLICY,
    drain_for: float = 60.0,
    **guard_options: Any,
) -> tuple[ExitOutcome, ExitGuard, RecordingHooks]:
    """One exit in virtual time, then background reconciliation for ``drain_for`` seconds."""
    recording = RecordingHooks()

    async def main() -> tuple[ExitOutcome, ExitGuard]:
        guard = ExitGuard(
            venue, policy=policy, deadline=deadline, hooks=[*hooks, recording],
            background_reconcile_for=drain_for, **guard_options,
        )
        outcome = await guard.exit(POSITION, signal_price=95.0, reason="stop_loss")
        assert guard.in_flight == 0
        await guard.drain()
        _STILL_TRACKED[id(recording)] = guard.pending_tx_ids
        return outcome, guard

    outcome, guard = run_virtual(main())
    return outcome, guard, recording


#: What each recorded run's guard still tracked after background reconciliation stopped.
_STILL_TRACKED: dict[int, tuple[str, ...]] = {}


def assert_promises(
    outcome: ExitOutcome, venue: ScriptedVenue, recording: RecordingHooks, *,
    deadline: float = DEADLINE, knowable: bool = True,
) -> None:
    """The four promises, for one exit that returned.

    ``knowable``: the venue's answers let the guard learn every landing (else a landing may
    stay unknown: then it must still be pending, never forgotten).
    """
    # An outcome within the deadline, reported once, along a valid path.
    assert outcome.elapsed_s <= deadline + EPS
    assert recording.payloads("exit_finished") == [outcome]
    assert is_valid_path(outcome.history)
    assert outcome.history[-1].to_state.is_terminal
    # Never sold twice.
    assert venue.violations == []
    assert venue.sold_eventually(POSITION.id) <= POSITION.size + EPS
    assert outcome.filled_size <= POSITION.size + EPS
    # Nothing recorded is lost: what landed is in the fills, was reported late, or is
    # still pending.
    late = sum(fill.size for fill in recording.payloads("late_fill"))
    truth = venue.sold_eventually(POSITION.id)
    if knowable:
        assert outcome.filled_size + late == pytest.approx(truth)
    else:
        seen = {fill.tx_id for fill in outcome.fills}
        for tx in venue.sent:
            if tx.lands_at is not None and tx.tx_id not in seen:
                assert tx.tx_id in outcome.pending_tx_ids, tx.tx_id
    # What may still land is never forgotten: it resolved, or the guard still tracks it
    # (the next exit of the position reconciles it before sending anything).
    still_tracked = _STILL_TRACKED.get(id(recording), ())
    for tx_id in outcome.pending_tx_ids:
        assert outcome.status is ExitStatus.UNRESOLVED
        assert tx_id in still_tracked or any(
            tx_id == resolved for resolved, _ in recording.payloads("pending_resolved"))


# -- a hook that raises -----------------------------------------------------------------------


class HookBroke(Exception):
    pass


class RaisingObserver:
    def __call__(self, event: object) -> None:
        raise HookBroke(event_name(type(event)))


class RaisingHooks:
    """Raises at every event (at every other exit's start only after handing back a raising
    observer)."""

    def __init__(self) -> None:
        self.observers = 0

    def __call__(self, event: object) -> Any:
        if isinstance(event, ExitInfo):
            self.observers += 1
            if self.observers % 2:  # every other exit: the observer is there but raises
                return RaisingObserver()
        raise HookBroke(event_name(type(event)))


def _hook_scenario(extra: Sequence[Hooks]) -> tuple[list[ExitOutcome], RecordingHooks,
                                                     ExitGuard, ScriptedVenue]:
    """Three exits touching every hook: a retry with backoff, a hanging confirmation that
    lands after the deadline (late fill, breaker trip, halt), a resume, a clean close."""
    plans = [
        TxPlan(send_error=NetworkError("connection reset")),
        TxPlan(hang=True, lands_after=DEADLINE + 2.0, expires_after=100.0),
        TxPlan(),
        TxPlan(),
    ]
    venue = ScriptedVenue(plans, price=95.0)
    recording = RecordingHooks()
    halt = TradingHalt(approvers=["ops"])

    async def main() -> tuple[list[ExitOutcome], ExitGuard]:
        guard = ExitGuard(
            venue, policy=POLICY, deadline=DEADLINE, hooks=[*extra, recording],
            breaker=CircuitBreaker(1, name="venue"), halt=halt,
        )
        first = await guard.exit(POSITION, signal_price=95.0)
        await guard.drain()
        halt.resume("ops", "venue recovered")
        guard.breaker.reset()
        second = await guard.exit(Position("pos-2", "SOL", 1.0, 100.0), signal_price=95.0)
        third = await guard.exit(Position("pos-3", "SOL", 1.0, 100.0), signal_price=95.0)
        return [first, second, third], guard

    outcomes, guard = run_virtual(main())
    return outcomes, recording, guard, venue


def test_a_hook_that_raises_everywhere_changes_nothing_and_is_logged_once_per_method(
    logs: LogRecords,
) -> None:
    clean, clean_recording, _, _ = _hook_scenario([])
    raising = RaisingHooks()
    outcomes, recording, guard, venue = _hook_scenario([raising])

    # The exits went exactly as without the broken hook.
    for got, want in zip(outcomes, clean, strict=True):
        assert got.status is want.status
        assert got.attempts == want.attempts
        assert got.fills == want.fills
        assert got.elapsed_s == pytest.approx(want.elapsed_s)
        assert [r.to_state for r in got.history] == [r.to_state for r in want.history]
        assert got.elapsed_s <= DEADLINE
    assert [o.status for o in outcomes] == [
        ExitStatus.UNRESOLVED, ExitStatus.CLOSED, ExitStatus.CLOSED
    ]
    assert venue.violations == []
    # The hook after the broken one saw every event, in the same order.
    assert recording.names() == clean_recording.names()
    names = set(recording.names())
    assert {"retry", "backoff", "reconciled", "late_fill", "pending_resolved",
            "breaker_transition", "halted", "resumed"} <= names

    # Logged once per (hook class, method); every further failure counted.
    hooks = guard.hooks
    assert hooks is not None
    counts = hooks.failure_counts
    hook_logs = logs.of("exitguard.hooks", logging.ERROR)
    assert len(hook_logs) == len(counts)
    assert len({r.getMessage() for r in hook_logs}) == len(counts)
    observed = {"attempt_started", "attempt_finished", "retry", "backoff", "transition",
                "reconciled", "exit_finished"}
    for (owner, method), count in counts.items():
        if owner == "RaisingObserver":
            # Only exits 1 and 3 had a (raising) observer: exit 2's exit_started raised.
            assert method in observed
            assert count >= 1
        else:
            assert owner == "RaisingHooks"
    assert counts[("RaisingHooks", "exit_started")] == 1
    assert counts[("RaisingHooks", "late_fill")] == 1
    assert counts[("RaisingHooks", "halted")] == 1
    assert counts[("RaisingHooks", "resumed")] == 1
    assert counts[("RaisingHooks", "breaker_transition")] == len(
        recording.payloads("breaker_transition"))
    assert counts[("RaisingObserver", "exit_finished")] == 2
    assert raising.observers == 3
    # Counted as the guard's hook faults (exitguard_faults_total{component="hook"}), once
    # each, and nothing else is counted as a fault.
    faults = guard.fault_counts
    assert faults[FaultSource.HOOK] == sum(counts.values())
    assert {source for source, n in faults.items() if n} == {FaultSource.HOOK}


# -- a venue that raises unexpected exception types -------------------------------------------


class Unprintable(Exception):
    """An exception whose ``str()`` itself raises (seen in the wild with broken wrappers)."""

    def __str__(self) -> str:
        raise RuntimeError("cannot render this error")


UNEXPECTED: list[BaseException] = [
    KeyError("result"),
    RuntimeError("event loop is closed"),
    ZeroDivisionError("division by zero"),
    NotImplementedError(),
    RecursionError("maximum recursion depth exceeded"),
    AttributeError("'NoneType' object has no attribute 'signature'"),
    StopAsyncIteration(),
]


@pytest.mark.parametrize("method", ["price", "submit", "confirm", "lookup"])
@pytest.mark.parametrize("error", UNEXPECTED, ids=lambda e: type(e).__name__)
def test_a_venue_raising_an_unexpected_exception_type(
    method: str, error: BaseException, logs: LogRecords
) -> None:
    # For lookup to matter the confirmation must time out; the transaction lands at 2 s.
    plans = [TxPlan(hang=True, lands_after=2.0, expires_after=100.0)] if method == "lookup" \
        else []
    venue = FaultyVenue(plans, raises={method: error}, price=PRICE)
    outcome, _, recording = run_exit(venue, drain_for=10.0)
    assert_promises(outcome, venue, recording, knowable=method != "lookup")

    reports: list[AttemptReport] = recording.payloads("attempt_finished")
    kind = type(error).__name__
    if method == "price":
        # A failed quote never blocks the exit: the signal price stands in. Logged once.
        assert outcome.status is ExitStatus.CLOSED
        assert venue.sent[0].order.reference_price == 95.0
        assert len(logs.matching("price quote failed")) == 1
    elif method == "submit":
        # Raised by submit: the order may be out (the submit contract), so it is reconciled
        # by its client order id; the venue never saw it, and an unknown class is permanent.
        assert outcome.status is ExitStatus.FAILED
        assert venue.sent == []
        assert outcome.error_class is ErrorClass.UNKNOWN
        assert [(r.result, r.error_class) for r in reports] == [
            (AttemptResult.TIMEOUT, ErrorClass.UNKNOWN)
        ]
        assert "reconciling" in [r.to_state.value for r in outcome.history]
        assert reports[0].error is not None
        assert kind in reports[0].error
    elif method == "confirm":
        # Raised by confirm: the order is out, the outcome unknown; reconciled, never resent.
        assert outcome.status is ExitStatus.CLOSED
        assert venue.submit_calls == 1
        assert [(r.result, r.error_class) for r in reports] == [
            (AttemptResult.TIMEOUT, ErrorClass.UNKNOWN)
        ]
        assert reports[0].error is not None
        assert kind in reports[0].error
        assert "reconciling" in [r.to_state.value for r in outcome.history]
    else:
        # Every lookup fails: the landing stays unknown, so the exit ends unresolved at the
        # deadline with the transaction pending, and never sends a second order.
        assert outcome.status is ExitStatus.UNRESOLVED
        assert venue.submit_calls == 1
        assert outcome.pending_tx_ids == ("tx1",)
        assert len(reports) == 1
        assert reports[0].result is AttemptResult.TIMEOUT
        assert logs.matching(f"lookup of tx1 failed: {kind}")


@pytest.mark.parametrize("method", ["confirm", "classifier"])
def test_an_error_that_cannot_be_classified_keeps_the_sent_order_pending(method: str) -> None:
    # The order is out when confirm raises. If describing or classifying that error fails
    # (an exception whose str() raises, or a user classifier that raises), the guard falls
    # into its internal-error path. The order may still land, so it must stay pending and
    # be reconciled, not be forgotten behind a FAILED ("nothing may still land") outcome.
    plans = [TxPlan(lands_after=0.5, expires_after=100.0)]
    if method == "confirm":
        venue = FaultyVenue(plans, raises={"confirm": Unprintable()}, price=PRICE)
        options: dict[str, Any] = {}
    else:
        venue = FaultyVenue(plans, raises={"confirm": RuntimeError("rpc glitch")}, price=PRICE)

        def classify(exc: BaseException) -> ErrorClass:
            raise ValueError("classifier bug")

        options = {"classify": classify}
    outcome, guard, recording = run_exit(venue, **options)
    assert venue.sold_eventually() == pytest.approx(10.0)  # it did land
    assert_promises(outcome, venue, recording)
    assert outcome.status in (ExitStatus.CLOSED, ExitStatus.UNRESOLVED)
    # Either way the classification raised (the default classifier reads str(exc)).
    assert guard.fault_counts[FaultSource.CLASSIFIER] == 1


def test_a_raising_classifier_is_logged_once_per_guard_and_counted_every_time(
    logs: LogRecords,
) -> None:
    calls = 0

    def classify(exc: BaseException) -> ErrorClass:
        nonlocal calls
        calls += 1
        raise ValueError("classifier bug")

    venue = FaultyVenue(lambda i: TxPlan(send_error=NetworkError("reset")), price=PRICE)

    async def main() -> ExitGuard:
        guard = ExitGuard(venue, policy=POLICY, deadline=DEADLINE, classify=classify)
        for i in range(3):
            outcome = await guard.exit(Position(f"p{i}", "SOL", 1.0, 100.0), signal_price=95.0)
            assert outcome.status is ExitStatus.FAILED
        return guard

    guard = run_virtual(main())
    assert calls >= 3
    assert guard.fault_counts[FaultSource.CLASSIFIER] == calls
    assert len(logs.matching("the error classifier raised", logging.ERROR)) == 1


def test_a_dead_price_feed_is_logged_once_per_exit_and_counted_every_time(
    logs: LogRecords,
) -> None:
    venue = FaultyVenue(lambda i: TxPlan(send_error=NetworkError("reset")),
                        raises={"price": ConnectionResetError("price feed down")}, price=PRICE)

    async def main() -> ExitGuard:
        guard = ExitGuard(venue, policy=POLICY, deadline=DEADLINE)
        for i in range(2):
            await guard.exit(Position(f"p{i}", "SOL", 1.0, 100.0), signal_price=95.0)
        return guard

    guard = run_virtual(main())
    assert venue.calls["price"] >= 4  # a quote before each attempt
    assert guard.fault_counts[FaultSource.QUOTE] == venue.calls["price"]
    assert len(logs.matching("price quote failed")) == 2


def test_a_venue_raising_cancelled_error_on_its_own_is_a_venue_error() -> None:
    # Some client libraries leak a CancelledError that nobody asked for (a connection
    # torn down under them). The exit was not cancelled, so it must still return an
    # outcome rather than end the caller's task as if it had been cancelled.
    venue = FaultyVenue([TxPlan(lands_after=0.5)], raises={"confirm": asyncio.CancelledError()},
                        price=PRICE)
    outcome, _, recording = run_exit(venue)
    assert_promises(outcome, venue, recording)
    assert outcome.status is ExitStatus.CLOSED


# -- a venue that returns garbage -------------------------------------------------------------


def _landed(spoil: Callable[[Fill], Any]) -> Callable[[Lookup], Any]:
    def lookup(answer: Lookup) -> Any:
        return Lookup(answer.status, spoil(answer.fill)) if answer.fill else answer

    return lookup


GARBAGE_FILLS: dict[str, Callable[[Fill], Any]] = {
    "negative fill": lambda f: unchecked_fill(f.tx_id, -f.size, f.price),
    "zero fill": lambda f: unchecked_fill(f.tx_id, 0.0, f.price),
    "fill larger than the order": lambda f: unchecked_fill(f.tx_id, f.size * 2, f.price),
    "NaN price": lambda f: unchecked_fill(f.tx_id, f.size, math.nan),
    "infinite size": lambda f: unchecked_fill(f.tx_id, math.inf, f.price),
    "negative price": lambda f: unchecked_fill(f.tx_id, f.size, -f.price),
    "string size": lambda f: unchecked_fill(f.tx_id, str(f.size), f.price),  # type: ignore[arg-type]
    "None": lambda f: None,
    "a dict": lambda f: {"tx_id": f.tx_id, "size": f.size, "price": f.price},
}


@pytest.mark.parametrize("spoil", GARBAGE_FILLS.values(), ids=GARBAGE_FILLS.keys())
def test_a_garbage_confirmation_is_an_unknown_outcome_reconciled_by_lookup(
    spoil: Callable[[Fill], Any],
) -> None:
    venue = FaultyVenue([TxPlan(price=94.0)], garbage={"confirm": spoil}, price=PRICE)
    outcome, _, recording = run_exit(venue)
    assert_promises(outcome, venue, recording)
    # Never taken at face value: the truthful lookup says what was sold, once.
    assert outcome.status is ExitStatus.CLOSED
    assert venue.submit_calls == 1
    assert outcome.fills == (Fill("tx1", 10.0, 94.0),)
    assert outcome.avg_price == 94.0
    reports: list[AttemptReport] = recording.payloads("attempt_finished")
    assert [(r.result, r.error_class) for r in reports] == [
        (AttemptResult.TIMEOUT, ErrorClass.INVALID_RESPONSE)
    ]


@pytest.mark.parametrize("spoil", GARBAGE_FILLS.values(), ids=GARBAGE_FILLS.keys())
def test_garbage_from_confirm_and_lookup_stays_pending_and_keeps_earlier_fills(
    spoil: Callable[[Fill], Any],
) -> None:
    # The first order fills half (good answers); the second's answers are all garbage: the
    # guard cannot know whether it landed, so it keeps it pending (never resends) and keeps
    # the half it already has.
    def confirm_garbage(answer: Fill) -> Any:
        return answer if answer.tx_id == "tx1" else spoil(answer)

    def lookup_garbage(answer: Lookup) -> Any:
        if answer.fill is not None and answer.fill.tx_id == "tx1":
            return answer
        return _landed(spoil)(answer)

    venue = FaultyVenue([TxPlan(fill_fraction=0.5), TxPlan()],
                        garbage={"confirm": confirm_garbage, "lookup": lookup_garbage}, price=PRICE)
    outcome, _, recording = run_exit(venue, drain_for=20.0)
    assert_promises(outcome, venue, recording, knowable=False)
    assert outcome.status is ExitStatus.UNRESOLVED
    assert outcome.fills == (Fill("tx1", 5.0, 95.0),)  # recorded before the fault: kept
    assert outcome.pending_tx_ids == ("tx2",)
    assert venue.submit_calls == 2  # the remainder once, never again
    assert [tx.order.size for tx in venue.sent] == [10.0, 5.0]


GARBAGE_LOOKUPS: dict[str, Callable[[Lookup], Any]] = {
    "None": lambda answer: None,
    "a string": lambda answer: "landed",
    "status as text": lambda answer: Lookup("landed", answer.fill),  # type: ignore[arg-type]
    "landed without a fill": lambda answer: Lookup(TxStatus.LANDED, None),
    "landed twice the order": _landed(lambda f: Fill(f.tx_id, f.size * 2, f.price)),
    "landed at NaN": _landed(lambda f: Fill(f.tx_id, f.size, math.nan)),
}


@pytest.mark.parametrize("spoil", GARBAGE_LOOKUPS.values(), ids=GARBAGE_LOOKUPS.keys())
def test_a_garbage_lookup_is_still_unknown(spoil: Callable[[Lookup], Any]) -> None:
    venue = FaultyVenue([TxPlan(hang=True, lands_after=1.5, expires_after=100.0)],
                        garbage={"lookup": spoil}, price=PRICE)
    outcome, _, recording = run_exit(venue, drain_for=20.0)
    assert_promises(outcome, venue, recording, knowable=False)
    assert outcome.status is ExitStatus.UNRESOLVED
    assert outcome.pending_tx_ids == ("tx1",)
    assert venue.submit_calls == 1
    assert recording.payloads("late_fill") == []  # never counted from garbage


GARBAGE_PRICES: dict[str, Any] = {
    "NaN": math.nan, "infinity": math.inf, "negative": -95.0, "zero": 0.0, "text": "95.0",
    "None": None,
}


@pytest.mark.parametrize("price", GARBAGE_PRICES.values(), ids=GARBAGE_PRICES.keys())
def test_a_garbage_price_never_reaches_an_order(price: Any, logs: LogRecords) -> None:
    venue = FaultyVenue(garbage={"price": lambda answer: price}, price=PRICE)
    outcome, guard, recording = run_exit(venue)
    assert_promises(outcome, venue, recording)
    assert outcome.status is ExitStatus.CLOSED
    assert venue.sent[0].order.reference_price == 95.0  # the signal price stood in
    assert len(logs.matching("invalid price")) == 1
    assert guard.fault_counts[FaultSource.QUOTE] == venue.calls["price"] >= 1


GARBAGE_SUBMISSIONS: dict[str, Callable[[Submission], Any]] = {
    "None": lambda s: None,
    "empty tx id": lambda s: Submission("", s.order, s.expires_at),
}


@pytest.mark.parametrize("spoil", GARBAGE_SUBMISSIONS.values(), ids=GARBAGE_SUBMISSIONS.keys())
def test_a_garbage_submit_answer_is_never_followed_by_a_second_order(
    spoil: Callable[[Submission], Any],
) -> None:
    # submit returned (it did not raise), so the order may well be out. The guard tracked
    # it by its client order id before sending, so it reconciles it by that id instead of
    # sending another order: the venue finds it, and the exit closes with one order.
    venue = FaultyVenue(garbage={"submit": spoil}, price=PRICE)
    outcome, _, recording = run_exit(venue)
    assert_promises(outcome, venue, recording)
    assert venue.submit_calls == 1
    assert outcome.status is ExitStatus.CLOSED
    assert outcome.filled_size == pytest.approx(POSITION.size)
    reports: list[AttemptReport] = recording.payloads("attempt_finished")
    assert [r.result for r in reports] == [AttemptResult.TIMEOUT]


def test_a_bare_transaction_id_from_submit_is_taken_as_the_submission() -> None:
    # A venue that returns the signature string instead of a Submission: the id is enough to
    # confirm and reconcile, so the exit goes on (with a warning), never a second order.
    venue = FaultyVenue(garbage={"submit": lambda s: s.tx_id}, price=PRICE)
    outcome, _, recording = run_exit(venue)
    assert_promises(outcome, venue, recording)
    assert venue.submit_calls == 1
    assert outcome.status is ExitStatus.CLOSED


def test_a_failing_lookup_is_logged_once_per_transaction() -> None:
    # A lookup that keeps failing is polled every 0.25-2 s for the 600 s of background
    # reconciliation: a warning for each would be hundreds of lines per transaction. One
    # warning per transaction; every failure counted (exitguard_faults_total{lookup}).
    handler = LogRecords()
    logger = logging.getLogger("exitguard")
    logger.addHandler(handler)
    try:
        venue = FaultyVenue([HANG_FOREVER], raises={"lookup": ConnectionResetError("reset")},
                            price=PRICE)
        outcome, guard, recording = run_exit(venue, drain_for=60.0)
    finally:
        logger.removeHandler(handler)
    assert outcome.status is ExitStatus.UNRESOLVED
    assert venue.calls["lookup"] > 10
    assert len(handler.matching("lookup of tx1 failed")) == 1
    assert guard.fault_counts[FaultSource.LOOKUP] == venue.calls["lookup"]
    assert recording.payloads("exit_finished") == [outcome]


# -- cancellation at every await point --------------------------------------------------------


class YieldingVenue(ScriptedVenue):
    """Every venue call is an await point that really suspends (before it acts)."""

    async def price(self, position: Position) -> float:
        await asyncio.sleep(0)
        return await super().price(position)

    async def submit(self, order: ExitOrder) -> Submission:
        await asyncio.sleep(0)
        return await super().submit(order)

    async def confirm(self, submission: Submission) -> Fill:
        await asyncio.sleep(0)
        return await super().confirm(submission)

    async def lookup(self, submission: Submission) -> Lookup:
        await asyncio.sleep(0)
        return await super().lookup(submission)


VENUE_METHODS = ("price", "submit", "confirm", "lookup")


def _where(coro: Any) -> str:
    """Where a suspended exit waits: the venue method, or ``<guard function>.sleep``."""
    frames: list[str] = []
    while coro is not None and hasattr(coro, "cr_code"):
        name = coro.cr_code.co_name
        if name == "wait" and "what" in coro.cr_frame.f_locals:  # VenueCalls.wait(task, .., what)
            name = coro.cr_frame.f_locals["what"]
        frames.append(name)
        coro = coro.cr_await
    for name in frames:
        if name in VENUE_METHODS:
            return name
    guard_frames = [n for n in frames if n in ("_run", "_reconcile", "_attempt", "_quote")]
    return f"{guard_frames[-1] if guard_frames else frames[-1]}.{frames[-1]}"


class CancelAtSuspension:
    """Awaits ``coro`` and cancels the awaiting task exactly at its ``n``-th suspension.

    Every suspension (a venue call, a backoff or reconciliation sleep, a timeout) is counted;
    the cancellation is requested while the coroutine is about to block there, so it is
    delivered at that very await.
    """

    def __init__(self, coro: Coroutine[Any, Any, ExitOutcome], n: int) -> None:
        self.coro = coro
        self.n = n
        self.suspensions = 0
        self.cancelled_at: str | None = None

    def __await__(self) -> Generator[Any, Any, ExitOutcome]:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = self.coro.throw(error) if error is not None else self.coro.send(value)
            except StopIteration as stop:
                result: ExitOutcome = stop.value
                return result
            self.suspensions += 1
            if self.suspensions == self.n:
                self.cancelled_at = _where(self.coro)
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
            try:
                value, error = (yield yielded), None
            except BaseException as exc:  # delivered into the exit, as a Task would
                value, error = None, exc


# A path through every await point: a confirmation that times out and expires while being
# reconciled (lookup, reconciliation sleep), a send failure (backoff sleep), a partial fill,
# then a confirmation that times out and lands while being reconciled.
CANCEL_PLANS = [
    TxPlan(hang=True, lands_after=None, expires_after=1.5),
    TxPlan(send_error=NetworkError("connection reset")),
    TxPlan(fill_fraction=0.5),
    TxPlan(hang=True, lands_after=1.5, expires_after=10.0),
]
# The same, ending with a confirmation that never answers: unresolved at the deadline.
CANCEL_PLANS_UNRESOLVED = [*CANCEL_PLANS[:3], HANG_FOREVER]
CANCEL_POLICY = RetryPolicy(max_attempts=5, initial_backoff=0.2, max_backoff=0.5,
                            total_timeout=7.0, attempt_timeout=0.6, min_attempt_time=0.1)


def _cancel_at(n: int, plans: Sequence[TxPlan]) -> tuple[bool, str | None, int, ExitGuard,
                                                         YieldingVenue, RecordingHooks, float]:
    venue = YieldingVenue(plans, price=95.0)
    recording = RecordingHooks()

    async def main() -> tuple[bool, str | None, int, ExitGuard, float]:
        guard = ExitGuard(venue, policy=CANCEL_POLICY, deadline=8.0, hooks=recording,
                          breaker=CircuitBreaker(1, name="venue"),
                          background_reconcile_for=60.0, reconcile_interval=0.2)
        wrapper = CancelAtSuspension(
            guard.exit(POSITION, signal_price=95.0, reason="stop_loss"), n
        )
        cancelled = False
        try:
            await wrapper
        except asyncio.CancelledError:
            cancelled = True
        loop = asyncio.get_running_loop()
        cancel_time = loop.time()
        assert guard.in_flight == 0
        await guard.drain()
        assert guard.reconciling == 0
        return cancelled, wrapper.cancelled_at, wrapper.suspensions, guard, cancel_time

    cancelled, where, suspensions, guard, at = run_virtual(main())
    return cancelled, where, suspensions, guard, venue, recording, at


@pytest.mark.parametrize("plans", [CANCEL_PLANS, CANCEL_PLANS_UNRESOLVED],
                         ids=["closes", "unresolved"])
def test_cancelling_the_exit_at_every_await_point(plans: Sequence[TxPlan]) -> None:
    seen: set[str] = set()
    n = 0
    while True:
        n += 1
        cancelled, where, suspensions, guard, venue, recording, at = _cancel_at(n, plans)
        finished: list[ExitOutcome] = recording.payloads("exit_finished")
        assert len(finished) == 1, n  # one outcome reported, cancelled or not
        outcome = finished[0]
        assert is_valid_path(outcome.history), n
        assert outcome.history[-1].to_state.is_terminal, n
        assert venue.violations == [], n
        truth = venue.sold_eventually(POSITION.id)
        assert truth <= POSITION.size + EPS, n
        late = sum(fill.size for fill in recording.payloads("late_fill"))
        assert outcome.filled_size + late == pytest.approx(truth), n
        if not cancelled:
            assert suspensions == n - 1  # ran to the end: every point was visited
            break
        assert where is not None
        seen.add(where)
        assert outcome.reason == "cancelled", n
        assert outcome.status in (ExitStatus.FAILED, ExitStatus.UNRESOLVED), n
        assert guard.breaker.consecutive_failures == 0, n  # a cancel is not a venue failure
        # Whatever may still land at the cancel is pending (and then reconciled).
        fills = {fill.tx_id for fill in outcome.fills}
        for tx in venue.sent:
            may_land = tx.lands_at is not None and tx.tx_id not in fills
            unknown = tx.tx_id not in fills and not tx.sent_at + tx.plan.expires_after <= at
            if may_land or (unknown and tx.plan.hang):
                assert tx.tx_id in outcome.pending_tx_ids, (n, where, tx.tx_id)
        resolved = {tx_id for tx_id, _ in recording.payloads("pending_resolved")}
        # Resolved in the background, or still tracked once polling stopped: never forgotten.
        assert set(outcome.pending_tx_ids) <= resolved | set(guard.pending_tx_ids), n
        assert (outcome.status is ExitStatus.UNRESOLVED) == bool(outcome.pending_tx_ids), n
    assert n > 20
    assert {*VENUE_METHODS, "_run.sleep", "_reconcile.sleep"} <= seen, seen


@pytest.mark.parametrize("first_ends", ["unresolved", "cancelled"])
def test_exiting_again_while_an_earlier_order_may_land_never_sells_twice(first_ends: str) -> None:
    # The natural reaction of a bot to an UNRESOLVED (or cancelled) exit is to exit again.
    # The first order lands at 40 s; the second exit must not sell the position again.
    venue = ScriptedVenue([TxPlan(hang=True, lands_after=40.0, expires_after=90.0), TxPlan()],
                          price=95.0)
    recording = RecordingHooks()

    async def main() -> tuple[ExitOutcome, ExitOutcome]:
        guard = ExitGuard(venue, hooks=recording)
        if first_ends == "cancelled":
            task = asyncio.ensure_future(guard.exit(POSITION, signal_price=95.0))
            await asyncio.sleep(10.0)  # the confirmation is timing out
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            first = recording.payloads("exit_finished")[0]
        else:
            first = await guard.exit(POSITION, signal_price=95.0)
        second = await guard.exit(POSITION, signal_price=95.0, reason="retry")
        await guard.drain()
        return first, second

    first, second = run_virtual(main())
    assert first.status is ExitStatus.UNRESOLVED
    assert first.pending_tx_ids == ("tx1",)
    assert venue.violations == []
    assert venue.sold_eventually(POSITION.id) <= POSITION.size + EPS
    # The second exit took over the first order: it is pending there, or its fill.
    assert "tx1" in second.pending_tx_ids or any(f.tx_id == "tx1" for f in second.fills)


# -- corrupt or unwritable halt file ----------------------------------------------------------

CORRUPT_HALT_FILES: dict[str, bytes] = {
    "empty": b"",
    "truncated": b'{"halted": true, "reason": "breaker',
    "not json": b"halted=yes\n",
    "a list": b"[]",
    "null": b"null",
    "halted as text": b'{"halted": "no", "reason": "", "history": []}',
    "history record missing fields": b'{"halted": false, "reason": "", "history": [{}]}',
    "history not a list": b'{"halted": false, "reason": "", "history": 3}',
    "not UTF-8": b'\xff\xfe{"halted": false}',
    "nested too deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("content", CORRUPT_HALT_FILES.values(), ids=CORRUPT_HALT_FILES.keys())
def test_a_corrupt_halt_file_means_halted_and_exits_still_run(
    content: bytes, tmp_path: Path, logs: LogRecords
) -> None:
    path = tmp_path / "halt.json"
    path.write_bytes(content)
    halt = TradingHalt.from_file(path, approvers=["ops"])
    # Unknown state fails safe: entries halted until an approved resume; logged once.
    assert halt.is_halted
    assert halt.store_error is not None
    assert "halt file" in halt.store_error
    assert len(logs.of("exitguard.halt", logging.ERROR)) == 1
    with pytest.raises(TradingHalted):
        halt.check_entry()
    # Halts are reduce-only: exits still run, within the deadline.
    venue = FaultyVenue(price=PRICE)
    outcome, guard, recording = run_exit(venue, halt=halt)
    assert_promises(outcome, venue, recording)
    assert outcome.status is ExitStatus.CLOSED
    assert guard.fault_counts[FaultSource.HALT_STORE] == 1  # the one failed read
    with pytest.raises(TradingHalted):
        guard.check_entry()
    # An approved resume writes a good file over the corrupt one.
    halt.resume("ops", "checked the halt file by hand")
    assert halt.store_error is None
    reloaded = TradingHalt.from_file(path)
    assert reloaded.store_error is None  # a new, verified chain
    assert not reloaded.is_halted
    assert [r.actor for r in reloaded.history] == ["halt_store", "ops"]


class ReadOnlyFileHaltStore(FileHaltStore):
    """The halt file on a file system mounted read-only (tests run as root, so chmod would
    not stop a write): reads work, every write fails with EROFS."""

    def write(self, records: Sequence[StoredRecord]) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self.path))


def test_an_unwritable_halt_file_keeps_the_halt_in_memory(
    tmp_path: Path, logs: LogRecords
) -> None:
    path = tmp_path / "halt.json"
    halt = TradingHalt(approvers=["ops"], store=ReadOnlyFileHaltStore(path))
    assert not halt.is_halted  # a missing file: never halted
    # Every exit fails (the confirmation hangs): the breaker trips on the first and halts.
    venue = FaultyVenue([HANG_FOREVER], price=PRICE)
    outcome, guard, recording = run_exit(
        venue, halt=halt, breaker=CircuitBreaker(1, name="venue"), drain_for=5.0
    )
    assert_promises(outcome, venue, recording, knowable=False)
    assert outcome.status is ExitStatus.UNRESOLVED
    assert halt.is_halted
    assert "circuit breaker venue opened" in (halt.reason or "")
    assert halt.store_error is not None
    assert "cannot write halt store" in halt.store_error
    with pytest.raises(TradingHalted):
        guard.check_entry()
    # Counted once (one halt event to the hooks), logged once (the write failure).
    assert len(recording.payloads("halted")) == 1
    assert len(logs.matching("cannot write halt store", logging.ERROR)) == 1
    assert len(logs.matching("TRADING HALTED", logging.ERROR)) == 1
    assert guard.fault_counts[FaultSource.HALT_STORE] == 1  # the one failed write
    assert not path.exists()


def test_a_halt_file_that_becomes_unwritable_never_breaks_an_exit(
    tmp_path: Path, logs: LogRecords
) -> None:
    path = tmp_path / "state" / "halt.json"
    halt = TradingHalt.from_file(path, approvers=["ops"])
    halt.halt("manual", actor="ops")
    halt.resume("ops", "all clear")
    saved = path.read_bytes()
    # The directory turns into a file: every later write fails.
    path.unlink()
    path.with_name(f"{path.name}.lock").unlink()  # the writers' lock file
    path.parent.rmdir()
    path.parent.write_text("oops")
    venue = FaultyVenue([HANG_FOREVER], price=PRICE)
    outcome, _, recording = run_exit(venue, halt=halt, breaker=CircuitBreaker(1),
                                     drain_for=5.0)
    assert_promises(outcome, venue, recording, knowable=False)
    assert halt.is_halted
    assert [r.halted for r in halt.history] == [True, False, True]  # nothing lost in memory
    assert len(logs.matching("cannot write halt store", logging.ERROR)) == 1
    assert saved  # the last good state was on disk before it broke
    with pytest.raises(HaltStoreError):
        FileHaltStore(path).read()  # path's parent is a file: unreadable, hence halted
