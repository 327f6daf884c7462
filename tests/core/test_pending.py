"""The pending-transaction store: what may still land survives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from exitguard import ExitGuard, ExitStatus, FilePendingStore, Position, TradingHalt
from exitguard.errors import ErrorClass
from exitguard.faults import FaultSource
from exitguard.pending import MemoryPendingStore, PendingRecord, PendingStoreError
from exitguard.testing import RecordingHooks, ScriptedVenue, TxPlan, run_virtual
from exitguard.venue import ExitOrder, Fill, Lookup, OrderMode, Submission, TxStatus

POSITION = Position("pos-p", "SOL", 10.0, 100.0)


def record(tx_id: str = "tx9") -> PendingRecord:
    order = ExitOrder(POSITION, 10.0, OrderMode.MARKET, 95.0, 500, 2, 100_000)
    return PendingRecord.of(tx_id, order, guard="bot", venue="scripted",
                            cause=ErrorClass.RPC_TIMEOUT, sent_at=1.0)


def test_file_store_round_trips_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "pending.json"
    assert FilePendingStore(path).load() == []
    FilePendingStore(path).add(record("tx1"))
    store = FilePendingStore(path)
    store.add(record("tx2"))
    loaded = FilePendingStore(path).load()
    assert [r.tx_id for r in loaded] == ["tx1", "tx2"]
    assert loaded[0].order() == record("tx1").order()
    store.remove("tx1")
    assert [r.tx_id for r in FilePendingStore(path).load()] == ["tx2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"pending": [{}]}',
                                     b'{"pending": 3}', b"\xff\xfe"])
def test_a_corrupt_file_is_an_error_and_resume_halts_entries(tmp_path: Path,
                                                             content: bytes) -> None:
    path = tmp_path / "pending.json"
    path.write_bytes(content)
    with pytest.raises(PendingStoreError, match="pending file"):
        FilePendingStore(path).load()
    halt = TradingHalt(["ops"])

    async def main() -> None:
        guard = ExitGuard(ScriptedVenue(), pending_store=FilePendingStore(path), halt=halt)
        with pytest.raises(PendingStoreError):
            await guard.resume_pending()

    run_virtual(main())
    assert halt.is_halted
    assert "pending store" in (halt.reason or "")


def test_a_submission_is_recorded_until_it_resolves() -> None:
    store = MemoryPendingStore()
    venue = ScriptedVenue([TxPlan(hang=True, lands_after=12.0, expires_after=60.0)], price=95.0)
    seen: list[list[str]] = []

    async def main() -> ExitStatus:
        guard = ExitGuard(venue, pending_store=store)
        task = asyncio.create_task(guard.exit(POSITION, signal_price=95.0))
        await asyncio.sleep(5.0)
        seen.append([r.tx_id for r in store.load()])
        return (await task).status

    assert run_virtual(main()) is ExitStatus.CLOSED
    assert seen == [["tx1"]]
    assert store.load() == []


def test_a_failing_store_never_breaks_an_exit() -> None:
    class BrokenStore(MemoryPendingStore):
        def add(self, record: PendingRecord) -> None:
            raise OSError(28, "No space left on device")

    async def main() -> tuple[ExitStatus, str | None, int]:
        guard = ExitGuard(ScriptedVenue(price=95.0), pending_store=BrokenStore())
        outcome = await guard.exit(POSITION, signal_price=95.0)
        return (outcome.status, guard.pending_store_error,
                guard.fault_counts[FaultSource.PENDING_STORE])

    status, error, faults = run_virtual(main())
    assert status is ExitStatus.CLOSED
    assert error is not None
    assert "No space left" in error
    # Both failed writes (the record by client order id before sending, then by the venue's
    # id) are counted (exitguard_faults_total{pending_store}); the first is kept as the error.
    assert faults == 2


def test_resumed_submissions_are_taken_over_by_a_new_exit() -> None:
    # An earlier process left tx9 pending; it lands at 20 s. A new exit of the same position
    # must reconcile it instead of selling again.
    store = MemoryPendingStore()
    store.add(record("tx9"))

    class Chain(ScriptedVenue):
        async def lookup(self, submission: Submission) -> Lookup:
            now = asyncio.get_running_loop().time()
            if now >= 20.0:
                return Lookup(TxStatus.LANDED, Fill("tx9", 10.0, 94.0))
            return Lookup(TxStatus.PENDING)

    venue = Chain(price=95.0)
    hooks = RecordingHooks()

    async def main() -> tuple[ExitStatus, tuple[str, ...], int]:
        guard = ExitGuard(venue, name="bot", pending_store=store, hooks=hooks)
        assert await guard.resume_pending() == 1
        assert guard.pending_tx_ids == ("tx9",)
        outcome = await guard.exit(POSITION, signal_price=95.0, reason="re-exit")
        await guard.drain()
        return outcome.status, guard.pending_tx_ids, venue.submit_calls

    status, left, submits = run_virtual(main())
    assert status is ExitStatus.CLOSED
    assert submits == 0
    assert left == ()
    assert store.load() == []
