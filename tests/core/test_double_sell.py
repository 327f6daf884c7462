"""Ways a venue, a bot or a crash could make the guard sell more than the position.

Each test is a scenario that sold more than held (or forgot an order that could still land)
before the guard had one owner per position: it asserts on the venue double's ground truth
(``ScriptedVenue`` keeps what really sold), never only on what the guard reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path
from typing import Any

import pytest

from exitguard import CircuitBreaker, ExitGuard, Position, RetryPolicy
from exitguard.breaker import BreakerState
from exitguard.errors import ConfigError, NetworkError, OrderNotSent, RpcTimeout
from exitguard.outcome import ExitOutcome, ExitStatus
from exitguard.pending import FilePendingStore, MemoryPendingStore, PendingRecord
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual, unchecked_fill
from exitguard.venue import ExitOrder, Fill, Lookup, Submission, TxStatus

POSITION = Position("pos-ds", "SOL", 10.0, 100.0)
EPS = 1e-9
HANGS_THEN_LANDS = TxPlan(hang=True, lands_after=40.0, expires_after=90.0)


def sold(venue: ScriptedVenue) -> float:
    return venue.sold_eventually(POSITION.id)


# -- 1. one exit per position at a time ---------------------------------------------------


def test_two_concurrent_exits_of_one_position_send_one_order_and_share_the_outcome() -> None:
    venue = ScriptedVenue([TxPlan(lands_after=1.0)], price=95.0)

    async def main() -> list[ExitOutcome]:
        guard = ExitGuard(venue)
        return list(await asyncio.gather(
            guard.exit(POSITION, signal_price=95.0), guard.exit(POSITION, signal_price=95.0)))

    first, second = run_virtual(main())
    assert venue.submit_calls == 1
    assert sold(venue) == pytest.approx(10.0)
    assert first is second  # the second call joined the running exit
    assert first.status is ExitStatus.CLOSED


def test_an_exit_started_while_another_reconciles_joins_it() -> None:
    venue = ScriptedVenue([TxPlan(hang=True, lands_after=12.0, expires_after=60.0)], price=95.0)

    async def main() -> tuple[ExitOutcome, ExitOutcome]:
        guard = ExitGuard(venue)
        first = asyncio.ensure_future(guard.exit(POSITION, signal_price=95.0))
        await asyncio.sleep(10.0)  # the first exit is reconciling its timed-out order
        second = await guard.exit(POSITION, signal_price=95.0)
        return await first, second

    first, second = run_virtual(main())
    assert venue.submit_calls == 1
    assert sold(venue) == pytest.approx(10.0)
    assert first is second


# -- 2. what landed is subtracted; what may land is taken over -----------------------------


def test_a_re_exit_after_a_landing_seen_in_the_background_sends_nothing() -> None:
    venue = ScriptedVenue([HANGS_THEN_LANDS], price=95.0)

    async def main() -> tuple[ExitOutcome, ExitOutcome]:
        guard = ExitGuard(venue)
        first = await guard.exit(POSITION, signal_price=95.0)
        await guard.drain()  # the background sees tx1 land at 40 s
        return first, await guard.exit(POSITION, signal_price=95.0)

    first, again = run_virtual(main())
    assert first.status is ExitStatus.UNRESOLVED
    assert venue.submit_calls == 1
    assert sold(venue) == pytest.approx(10.0)
    assert again.status is ExitStatus.CLOSED
    assert again.sold_before == pytest.approx(10.0)
    assert again.remaining_size == 0.0


@pytest.mark.parametrize("how", ["aclose", "gave_up"])
def test_stopping_background_reconciliation_never_forgets_an_order(how: str) -> None:
    venue = ScriptedVenue([HANGS_THEN_LANDS], price=95.0)

    async def main() -> tuple[tuple[str, ...], ExitOutcome]:
        guard = ExitGuard(venue, background_reconcile_for=5.0)
        await guard.exit(POSITION, signal_price=95.0)
        if how == "aclose":
            await guard.aclose()
        else:
            await guard.drain()  # polls for 5 s, gives up long before the 40 s landing
        listed = guard.pending_tx_ids
        await asyncio.sleep(20.0)
        return listed, await guard.exit(POSITION, signal_price=95.0)

    listed, again = run_virtual(main())
    assert listed == ("tx1",)
    assert venue.submit_calls == 1  # the re-exit reconciled tx1 instead of selling again
    assert sold(venue) == pytest.approx(10.0)
    assert again.status is ExitStatus.CLOSED
    assert [fill.tx_id for fill in again.fills] == ["tx1"]


def test_after_a_kill_and_restart_a_landing_is_subtracted_from_the_re_exit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pending.json"
    venue = ScriptedVenue([HANGS_THEN_LANDS], price=95.0)

    async def main() -> ExitOutcome:
        killed = ExitGuard(venue, name="bot", pending_store=FilePendingStore(path))
        task = asyncio.ensure_future(killed.exit(POSITION, signal_price=95.0))
        await asyncio.sleep(5.0)
        task.cancel()  # SIGKILL: nothing after this point runs in the old process
        await asyncio.gather(task, return_exceptions=True)
        killed.book.stop_background(killed.book.entry(POSITION.id))

        restarted = ExitGuard(venue, name="bot", pending_store=FilePendingStore(path))
        assert await restarted.resume_pending() == 1
        await restarted.drain()  # tx1 lands at 40 s: a late fill
        # ... and a third process, started after that, still knows it was sold.
        third = ExitGuard(venue, name="bot", pending_store=FilePendingStore(path))
        return await third.exit(POSITION, signal_price=95.0)

    again = run_virtual(main())
    assert venue.submit_calls == 1
    assert sold(venue) == pytest.approx(10.0)
    assert again.status is ExitStatus.CLOSED
    assert again.sold_before == pytest.approx(10.0)


def test_a_restarted_guard_takes_over_the_old_orders_even_without_resume_pending(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pending.json"
    venue = ScriptedVenue([HANGS_THEN_LANDS, TxPlan()], price=95.0)

    async def main() -> ExitOutcome:
        killed = ExitGuard(venue, name="bot", pending_store=FilePendingStore(path))
        task = asyncio.ensure_future(killed.exit(POSITION, signal_price=95.0))
        await asyncio.sleep(5.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        killed.book.stop_background(killed.book.entry(POSITION.id))
        restarted = ExitGuard(venue, name="bot", pending_store=FilePendingStore(path))
        return await restarted.exit(POSITION, signal_price=95.0, reason="re-exit")

    again = run_virtual(main())
    assert sold(venue) <= 10.0 + EPS
    assert venue.violations == []
    assert again.status in (ExitStatus.CLOSED, ExitStatus.UNRESOLVED)


# -- 3. partial fills are kept across exits ------------------------------------------------


def test_a_re_exit_after_a_partial_fill_sells_only_the_rest() -> None:
    # First exit: 4 of 10 fill, then a 6-unit order hangs past the deadline and lands late.
    venue = ScriptedVenue([TxPlan(fill_fraction=0.4),
                           TxPlan(hang=True, lands_after=40.0, expires_after=90.0), TxPlan()],
                          price=95.0)

    async def main() -> tuple[ExitOutcome, ExitOutcome]:
        guard = ExitGuard(venue)
        first = await guard.exit(POSITION, signal_price=95.0)
        return first, await guard.exit(POSITION, signal_price=95.0)

    first, again = run_virtual(main())
    assert first.status is ExitStatus.UNRESOLVED
    assert first.filled_size == pytest.approx(4.0)
    assert again.sold_before == pytest.approx(4.0)
    assert sold(venue) == pytest.approx(10.0)
    assert venue.submit_calls == 2  # the re-exit took the 6-unit order over, sent nothing


# -- 4 and 5. fills are checked against the guard's own order ------------------------------


def test_a_fill_that_names_another_transaction_is_not_counted() -> None:
    class Replays(ScriptedVenue):
        async def confirm(self, submission: Submission) -> Fill:
            fill = await super().confirm(submission)
            return Fill("tx1", fill.size, fill.price) if submission.tx_id == "tx2" else fill

    venue = Replays([TxPlan(fill_fraction=0.2), TxPlan(lands_after=0.5)], price=95.0)

    async def main() -> ExitOutcome:
        return await ExitGuard(venue).exit(POSITION, signal_price=95.0)

    outcome = run_virtual(main())
    assert [fill.tx_id for fill in outcome.fills] == ["tx1", "tx2"]  # tx2 via lookup
    assert outcome.filled_size == pytest.approx(sold(venue))
    assert sold(venue) <= 10.0 + EPS


def test_a_fill_larger_than_the_guards_order_is_not_believed() -> None:
    class Inflates(ScriptedVenue):
        async def submit(self, order: ExitOrder) -> Submission:
            real = await super().submit(order)  # echoes a bigger order than was sent
            return Submission(real.tx_id, ExitOrder(order.position, 25.0, order.mode,
                                                    order.reference_price,
                                                    order.max_slippage_bps, order.attempt))

        async def confirm(self, submission: Submission) -> Fill:
            await asyncio.sleep(0.1)
            return Fill(submission.tx_id, 25.0, 95.0)

        async def lookup(self, submission: Submission) -> Lookup:
            return Lookup(TxStatus.LANDED, Fill(submission.tx_id, 25.0, 95.0))

    venue = Inflates([TxPlan()], price=95.0)

    async def main() -> ExitOutcome:
        return await ExitGuard(venue, deadline=5.0).exit(POSITION, signal_price=95.0)

    outcome = run_virtual(main())
    assert outcome.filled_size <= 10.0
    assert outcome.status is ExitStatus.UNRESOLVED  # never believed, never forgotten
    assert venue.submit_calls == 1


# -- 6. free text never says "expired" for the guard ---------------------------------------


@pytest.mark.parametrize("error", [ConnectionError("SSL certificate has expired"),
                                   OSError("session expired"), RuntimeError("API key expired")],
                         ids=type)
def test_an_error_text_with_expired_in_it_is_not_a_dead_transaction(error: Exception) -> None:
    venue = ScriptedVenue([TxPlan(confirm_error=error, lands_after=3.0), TxPlan()], price=95.0)

    async def main() -> ExitOutcome:
        guard = ExitGuard(venue, policy=RetryPolicy(max_attempts=3))
        outcome = await guard.exit(POSITION, signal_price=95.0)
        await guard.drain()
        return outcome

    run_virtual(main())
    assert venue.violations == []
    assert sold(venue) == pytest.approx(10.0)
    assert venue.submit_calls == 1


# -- 7. FAILED means nothing may still land ------------------------------------------------


class SubmitsThenAnswers(ScriptedVenue):
    """The order goes out; then submit answers ``answer`` (or raises it)."""

    def __init__(self, answer: Any, **options: Any) -> None:
        super().__init__([TxPlan(lands_after=0.5)], price=95.0, **options)
        self.answer = answer

    async def submit(self, order: ExitOrder) -> Submission:
        await super().submit(order)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "answer",
    [None, RuntimeError("Transaction already been processed"), RpcTimeout("read timed out"),
     NetworkError("connection reset after write")],
    ids=["None", "already processed", "timeout", "reset"],
)
def test_a_submit_that_sent_and_then_failed_is_reconciled_not_resent(answer: Any) -> None:
    venue = SubmitsThenAnswers(answer)

    async def main() -> ExitOutcome:
        guard = ExitGuard(venue)
        outcome = await guard.exit(POSITION, signal_price=95.0)
        await guard.drain()
        return outcome

    outcome = run_virtual(main())
    assert venue.submit_calls == 1
    assert sold(venue) == pytest.approx(10.0)
    assert outcome.status is ExitStatus.CLOSED
    assert outcome.filled_size == pytest.approx(10.0)


def test_a_synchronous_submit_is_used_not_awaited_into_a_type_error() -> None:
    class SyncSubmit(ScriptedVenue):
        def submit(self, order: ExitOrder) -> Submission:  # type: ignore[override]
            self.submit_calls += 1
            loop = asyncio.get_running_loop()
            from exitguard.testing import SentTx

            tx = SentTx(f"tx{self.submit_calls}", order, TxPlan(lands_after=0.5), loop.time())
            self.sent.append(tx)
            return Submission(tx.tx_id, order, tx.expires_at)

    venue = SyncSubmit(price=95.0)

    async def main() -> ExitOutcome:
        return await ExitGuard(venue).exit(  # type: ignore[arg-type]  # a sync submit
            POSITION, signal_price=95.0)

    outcome = run_virtual(main())
    assert outcome.status is ExitStatus.CLOSED
    assert venue.submit_calls == 1
    assert sold(venue) == pytest.approx(10.0)


def test_a_submit_cut_off_by_the_guards_timeout_is_an_unknown_outcome() -> None:
    class SlowAfterSending(ScriptedVenue):
        async def submit(self, order: ExitOrder) -> Submission:
            submission = await super().submit(order)
            await asyncio.sleep(30.0)  # the answer never comes in time
            return submission

    venue = SlowAfterSending([TxPlan(lands_after=1.0), TxPlan()], price=95.0)

    async def main() -> ExitOutcome:
        return await ExitGuard(venue).exit(POSITION, signal_price=95.0)

    outcome = run_virtual(main())
    assert venue.submit_calls == 1
    assert sold(venue) == pytest.approx(10.0)
    assert outcome.status is ExitStatus.CLOSED


def test_only_a_definite_rejection_is_resent_at_once_and_spends_no_attempt() -> None:
    class Recording(ScriptedVenue):
        orders: list[ExitOrder]

        async def submit(self, order: ExitOrder) -> Submission:
            self.orders = [*getattr(self, "orders", []), order]
            return await super().submit(order)

    venue = Recording([TxPlan(send_error=OrderNotSent("rejected locally"))] * 3 + [TxPlan()],
                      price=95.0)

    async def main() -> ExitOutcome:
        guard = ExitGuard(venue, policy=RetryPolicy(max_attempts=1, initial_backoff=0.1))
        return await guard.exit(POSITION, signal_price=95.0)

    outcome = run_virtual(main())
    assert outcome.status is ExitStatus.CLOSED
    assert venue.submit_calls == 4  # three "not sent" did not spend the one attempt
    assert len(venue.sent) == 1
    # ... and each resend is the same order: one client order id, so it cannot fill twice.
    assert len({order.client_order_id for order in venue.orders}) == 1


# -- 8. the deadline holds against a venue that ignores cancellation ------------------------


@pytest.mark.parametrize("method", ["price", "submit", "confirm", "lookup"])
def test_a_venue_that_swallows_cancellation_cannot_hold_the_exit(method: str) -> None:
    class Stubborn(ScriptedVenue):
        async def _stall(self) -> None:
            try:
                await asyncio.sleep(1e6)
            except asyncio.CancelledError:
                await asyncio.sleep(2.0)  # ignores the cancellation and keeps going

        async def price(self, position: Position) -> float:
            if method == "price":
                await self._stall()
            return await super().price(position)

        async def submit(self, order: ExitOrder) -> Submission:
            if method == "submit":
                await self._stall()
            return await super().submit(order)

        async def confirm(self, submission: Submission) -> Fill:
            if method in ("confirm", "lookup"):
                # Never lands, and shrugs off cancellation (a bounded number of times only
                # so that the test's event loop can close).
                for _ in range(3):
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.sleep(1e6)
            return await super().confirm(submission)

        async def lookup(self, submission: Submission) -> Lookup:
            if method == "lookup":
                await self._stall()
            return await super().lookup(submission)

    venue = Stubborn([TxPlan(lands_after=None, expires_after=1e5)], price=95.0)

    async def main() -> tuple[ExitOutcome, float, int]:
        guard = ExitGuard(venue, deadline=0.5, background_reconcile_for=1.0,
                          policy=RetryPolicy(total_timeout=0.5, attempt_timeout=0.5,
                                             min_attempt_time=0.05))
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await guard.exit(POSITION, signal_price=95.0)
        return outcome, loop.time() - started, len(guard.calls.in_flight)

    outcome, took, left_running = run_virtual(main())
    assert took <= 0.5 + 1e-6
    assert outcome.elapsed_s <= 0.5 + 1e-6
    assert sold(venue) <= 10.0 + EPS
    if method in ("confirm", "lookup"):
        assert left_running >= 1  # the stubborn call is tracked, not awaited


# -- 10. every path out of an exit releases the breaker's probe slot -----------------------


def test_a_probe_that_escapes_with_a_base_exception_releases_the_half_open_slot() -> None:
    class Escape(BaseException):
        pass

    class Explodes(ScriptedVenue):
        exploded = False

        async def submit(self, order: ExitOrder) -> Submission:
            if not self.exploded:
                self.exploded = True
                raise Escape()
            return await super().submit(order)

    venue = Explodes(price=95.0)

    async def main() -> tuple[ExitOutcome, BreakerState]:
        breaker = CircuitBreaker(1, name="dex", cooldown=10)
        breaker.record_failure()
        await asyncio.sleep(10)  # half-open: one probe slot
        guard = ExitGuard(venue, breaker=breaker, refuse_when_open=True)
        with pytest.raises(Escape):
            await guard.exit(POSITION, signal_price=95.0)
        outcome = await guard.exit(POSITION, signal_price=95.0)  # gets the slot again
        return outcome, breaker.state

    outcome, state = run_virtual(main())
    assert outcome.status is not ExitStatus.REFUSED
    assert state is BreakerState.CLOSED
    assert sold(venue) <= 10.0 + EPS


# -- 11 and 12. bad values are refused where they enter ------------------------------------


def test_a_boolean_is_never_a_price_or_a_size() -> None:
    class TruePrice(ScriptedVenue):
        async def price(self, position: Position) -> float:
            return True

    venue = TruePrice(price=95.0)

    async def main() -> ExitOutcome:
        return await ExitGuard(venue).exit(POSITION, signal_price=95.0)

    run_virtual(main())
    assert venue.sent[0].order.reference_price == 95.0  # the signal price, not 1.0
    with pytest.raises(ValueError, match="size"):
        Fill("tx", True, 95.0)
    with pytest.raises(ValueError, match="price"):
        Fill("tx", 1.0, True)


def test_a_non_string_transaction_id_never_reaches_the_pending_file(tmp_path: Path) -> None:
    path = tmp_path / "pending.json"

    class NumericIds(ScriptedVenue):
        async def submit(self, order: ExitOrder) -> Submission:
            real = await super().submit(order)
            fake = object.__new__(Submission)
            for name, value in (("tx_id", 12345), ("order", order), ("expires_at", None),
                                ("venue_data", {})):
                object.__setattr__(fake, name, value)
            del real
            return fake

    venue = NumericIds([TxPlan(lands_after=1.0)], price=95.0)

    async def main() -> ExitOutcome:
        guard = ExitGuard(venue, name="bot", pending_store=FilePendingStore(path))
        outcome = await guard.exit(POSITION, signal_price=95.0)
        await guard.drain()
        return outcome

    run_virtual(main())
    assert sold(venue) == pytest.approx(10.0)
    FilePendingStore(path).load()  # the next start can read its own file
    with pytest.raises(TypeError):
        MemoryPendingStore().add(_record_with_id(12345))


def _record_with_id(tx_id: object) -> PendingRecord:
    order = ExitOrder(POSITION, 10.0, __import__("exitguard").venue.OrderMode.MARKET, 95.0,
                      500, 1)
    record = PendingRecord.of("x", order, guard="g", venue="v",
                              cause=__import__("exitguard").ErrorClass.RPC_TIMEOUT, sent_at=1.0)
    object.__setattr__(record, "tx_id", tx_id)
    return record


# -- 13. one pending file, several guards -------------------------------------------------


def test_two_stores_on_one_file_never_erase_each_others_records(tmp_path: Path) -> None:
    path = tmp_path / "pending.json"
    a, b = FilePendingStore(path), FilePendingStore(path)
    a.load()
    b.load()
    a.add(_named("A1", "guard-a"))
    b.add(_named("B1", "guard-b"))
    a.remove("A1")  # resolving A's order must not erase B's
    assert [r.tx_id for r in FilePendingStore(path).load()] == ["B1"]


def _named(tx_id: str, guard: str) -> PendingRecord:
    order = ExitOrder(POSITION, 10.0, __import__("exitguard").venue.OrderMode.MARKET, 95.0,
                      500, 1)
    return PendingRecord.of(tx_id, order, guard=guard, venue="v",
                            cause=__import__("exitguard").ErrorClass.RPC_TIMEOUT, sent_at=1.0)


# -- 14. bounds on configuration -----------------------------------------------------------


def test_a_reconcile_interval_that_would_mean_millions_of_look_ups_is_refused() -> None:
    with pytest.raises(ConfigError, match="reconcile_interval"):
        ExitGuard(ScriptedVenue(), reconcile_interval=1e-6)


def test_a_hung_confirmation_is_reconciled_by_lookup_while_it_hangs() -> None:
    # The transaction lands after 3 s but confirm never answers: the guard learns it from
    # lookup while confirm still hangs, instead of waiting out the attempt timeout.
    venue = ScriptedVenue([TxPlan(hang=True, lands_after=3.0, expires_after=60.0)], price=95.0)

    async def main() -> ExitOutcome:
        return await ExitGuard(venue, deadline=8.0).exit(POSITION, signal_price=95.0)

    outcome = run_virtual(main())
    assert outcome.status is ExitStatus.CLOSED
    assert outcome.elapsed_s < 5.0
    assert not math.isnan(outcome.filled_size)


def test_attempts_are_sized_to_the_deadline() -> None:
    # deadline 8 s with 2 attempts: one hung attempt may not take the whole budget.
    venue = ScriptedVenue([TxPlan(hang=True, lands_after=None, expires_after=2.0), TxPlan()],
                          price=95.0)

    async def main() -> ExitOutcome:
        return await ExitGuard(venue, deadline=8.0).exit(POSITION, signal_price=95.0)

    outcome = run_virtual(main())
    assert outcome.status is ExitStatus.CLOSED
    assert venue.submit_calls == 2
    assert venue.sent[1].sent_at < 8.0


def test_garbage_fill_objects_from_a_lying_venue_are_never_counted() -> None:
    class Lies(ScriptedVenue):
        async def lookup(self, submission: Submission) -> Lookup:
            return Lookup(TxStatus.LANDED, unchecked_fill(submission.tx_id, True, 95.0))

    venue = Lies([TxPlan(hang=True, lands_after=None, expires_after=1e9)], price=95.0)

    async def main() -> ExitOutcome:
        return await ExitGuard(venue, deadline=5.0).exit(POSITION, signal_price=95.0)

    outcome = run_virtual(main())
    assert outcome.fills == ()
    assert outcome.status is ExitStatus.UNRESOLVED


def test_a_halt_whose_write_failed_is_written_again_and_said_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging as std_logging
    from collections.abc import Sequence

    from exitguard.halt import FileHaltStore, StoredRecord, TradingHalt

    class FullDisk(FileHaltStore):
        full = True

        def write(self, records: Sequence[StoredRecord]) -> None:
            if self.full:
                raise OSError(28, "No space left on device")
            super().write(records)

    from exitguard.testing import RecordingHooks

    store = FullDisk(tmp_path / "halt.json")
    halt = TradingHalt(["alice"], store=store)
    hooks = RecordingHooks()
    ExitGuard(ScriptedVenue(), halt=halt, hooks=hooks, name="bot")
    with caplog.at_level(std_logging.CRITICAL, logger="exitguard"):
        halt.halt("breaker opened")
    assert "LOST ON RESTART" in caplog.text
    assert "halt_not_saved" in hooks.names()  # the pager pages on it
    assert halt.store_failures == 1
    store.full = False
    halt._last_save_try = 0.0  # the retry is rate-limited in wall time; no sleeping in tests
    with pytest.raises(__import__("exitguard").errors.TradingHalted):
        halt.check_entry()  # retries the write first
    assert TradingHalt(["alice"], store=FileHaltStore(tmp_path / "halt.json")).is_halted
