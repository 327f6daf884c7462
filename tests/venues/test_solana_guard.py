"""The incident, scripted: ExitGuard + JupiterSwapVenue against LiteSVM behind loopback RPC
and Jupiter servers, with blocks produced every few milliseconds.

Every scenario ends with the validator's ground truth: the wallet never sold more than the
position, no new sell was first sent while an earlier one could still land
(``assert_no_early_resign``), and the outcome's fills are exactly the transactions that
landed successfully, in size and in signature.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

pytest.importorskip("solders.litesvm")
pytest.importorskip("solana.rpc.async_api")


from exitguard import ExitGuard, ExitOutcome, ExitStatus, Position, RetryPolicy
from exitguard.pending import FilePendingStore
from exitguard.testing import RecordingHooks
from exitguard.venues.solana import JupiterSwapVenue, solana_ladder
from tests.support import REPO
from tests.support.solana_chain import (
    INPUT_DECIMALS,
    INPUT_MINT,
    OUTPUT_DECIMALS,
    OUTPUT_MINT,
    Cluster,
    cluster,
    loopback_client,
)

LAMPORTS = 10**INPUT_DECIMALS
BLOCK_TIME = 0.01  # seconds per block: a 20-block validity expires in about 0.2 s
POSITION = Position("sol-stop", "SOL", 2.0, 105.0)


@pytest.fixture
def net() -> Iterator[Cluster]:
    with cluster(validity=20, status_cache=60) as c:
        yield c


async def produce_blocks(net: Cluster, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(BLOCK_TIME)
        net.chain.produce(1)


@asynccontextmanager
async def running(net: Cluster, **options: Any) -> AsyncIterator[JupiterSwapVenue]:
    rpc = loopback_client(net.rpc_url)
    settings: dict[str, Any] = {"rpc_timeout": 0.3, "http_timeout": 1.0,
                                "confirm_interval": 0.01, "rebroadcast_interval": 0.05}
    settings.update(options)
    # Plain-HTTP loopback: skip building a TLS context per test (0.2 s each on a busy box).
    http = httpx2.AsyncClient(verify=False)
    venue = JupiterSwapVenue(rpc, net.chain.wallet, input_mint=INPUT_MINT,
                             output_mint=OUTPUT_MINT, input_decimals=INPUT_DECIMALS,
                             output_decimals=OUTPUT_DECIMALS, jupiter_url=net.jupiter_url,
                             http=http, **settings)
    stop = asyncio.Event()
    producer = asyncio.create_task(produce_blocks(net, stop))
    try:
        yield venue
    finally:
        stop.set()
        await producer
        await venue.aclose()
        await http.aclose()
        await rpc.close()


def guard_for(venue: JupiterSwapVenue, **options: Any) -> ExitGuard:
    settings: dict[str, Any] = {
        "policy": RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05,
                              total_timeout=6.0, attempt_timeout=0.3, min_attempt_time=0.05),
        "deadline": 8.0, "ladder": solana_ladder(), "reconcile_interval": 0.02,
        "max_reconcile_interval": 0.1, "background_reconcile_for": 5.0,
    }
    settings.update(options)
    return ExitGuard(venue, **settings)


def assert_ground_truth(net: Cluster, outcome: ExitOutcome) -> None:
    chain = net.chain
    sold = chain.sold_lamports
    assert sold <= POSITION.size * LAMPORTS, "the wallet sold more than the position"
    chain.assert_no_early_resign()
    landed = sorted(chain.succeeded())
    assert sorted(f.tx_id for f in outcome.fills) == landed
    assert round(outcome.filled_size * LAMPORTS) == sold
    if outcome.status is ExitStatus.CLOSED:
        assert sold == POSITION.size * LAMPORTS


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


def test_confirmations_stop_answering_while_the_sell_lands_late(net: Cluster) -> None:
    """The incident: no status for a long while, then the first transaction lands. A guard
    that re-signed on the timeout would have sold twice."""

    async def main() -> ExitOutcome:
        async with running(net) as venue:
            net.chain.fault("sendTransaction", "queue")
            net.chain.deliver_after(12)  # lands 12 blocks later, before expiry...
            # ...and the next status answers still say nothing (counted, not timed: a
            # loaded machine must not let the guard skip the blind window).
            net.chain.hide_landings = 5
            guard = guard_for(venue)
            return await guard.exit(POSITION, signal_price=100.0, reason="stop_loss")

    outcome = run(main())
    assert outcome.status is ExitStatus.CLOSED, outcome.reason
    assert net.chain.hidden_landings > 0  # it landed while statuses still said nothing
    assert len(net.chain.sent) == 1
    assert_ground_truth(net, outcome)


def metric_total(registry: Any, name: str, **labels: str) -> float:
    return float(sum(sample.value for family in registry.collect() for sample in family.samples
                     if sample.name == name and all(sample.labels.get(k) == v
                                                    for k, v in labels.items())))


def test_a_lost_transaction_is_replaced_only_after_its_blockhash_expired(
    net: Cluster,
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from exitguard.telemetry import instrument

    registry = prometheus_client.CollectorRegistry()
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))

    async def main() -> ExitOutcome:
        async with running(net) as venue:
            net.chain.lose = 1  # the first signature never lands, however often it is sent
            guard = guard_for(venue)
            instrument(guard, registry=registry, tracer_provider=provider, logs=False)
            return await guard.exit(POSITION, signal_price=100.0, reason="stop_loss")

    outcome = run(main())
    provider.shutdown()
    # The metrics agree with the chain: one exit closed, one attempt per signature sent.
    assert metric_total(registry, "exitguard_exits_total", outcome="closed") == 1
    assert metric_total(registry, "exitguard_exit_attempts_total") == len(net.chain.sent)
    # So do the traces: one attempt span per signature, with the fee Jupiter was asked for.
    attempts = [span for span in spans.get_finished_spans()
                if span.name == "exitguard.exit.attempt"]
    assert {str((span.attributes or {})["exitguard.tx_id"]) for span in attempts} == set(
        net.chain.sent)
    asked = [int(swap["computeUnitPriceMicroLamports"]) for swap in net.market.swaps]
    assert [int((span.attributes or {})["exitguard.order.priority_fee"])  # type: ignore[arg-type]
            for span in sorted(attempts, key=lambda span: span.start_time or 0)] == asked
    assert outcome.status is ExitStatus.CLOSED, outcome.reason
    sends = sorted(net.chain.sent.values(), key=lambda s: s.first_seen_height)
    assert len(sends) == 2
    assert sends[1].first_seen_height > sends[0].last_valid
    fees = [int(s.get("computeUnitPriceMicroLamports") or 0) for s in net.market.swaps]
    assert fees[-1] > fees[0]  # the replacement pays a higher priority fee
    assert_ground_truth(net, outcome)


def test_a_swap_failing_on_slippage_escalates_to_wider_slippage(net: Cluster) -> None:
    async def main() -> ExitOutcome:
        async with running(net, skip_preflight=True) as venue:
            net.market.fail_next_swaps = 1  # lands failed with custom error 6001
            guard = guard_for(venue)
            return await guard.exit(POSITION, signal_price=100.0, reason="stop_loss")

    outcome = run(main())
    assert outcome.status is ExitStatus.CLOSED, outcome.reason
    failed = [s for s, landed in net.chain.landed.items() if landed.err is not None]
    assert len(failed) == 1
    slippages = [int(q["slippageBps"]) for q in net.market.quotes]
    assert slippages[-1] > slippages[0]
    assert_ground_truth(net, outcome)


def test_a_send_that_lands_but_never_answers_is_not_sold_twice(net: Cluster) -> None:
    async def main() -> ExitOutcome:
        async with running(net) as venue:
            net.chain.fault("sendTransaction", "land_then_hang")
            net.chain.fault("getSignatureStatuses", "429", "hang", "429")
            guard = guard_for(venue)
            return await guard.exit(POSITION, signal_price=100.0, reason="stop_loss")

    outcome = run(main())
    assert outcome.status is ExitStatus.CLOSED, outcome.reason
    assert len(net.chain.sent) == 1
    assert_ground_truth(net, outcome)


def test_rpc_429_storm_and_hang_never_double_sell(net: Cluster) -> None:
    async def main() -> tuple[ExitOutcome, RecordingHooks]:
        async with running(net) as venue:
            net.chain.fault("sendTransaction", "429", "hang", "queue")
            net.chain.fault("getEpochInfo", "429", "429", "hang")
            net.chain.deliver_after(5)
            hooks = RecordingHooks()
            guard = guard_for(venue, hooks=hooks)
            outcome = await guard.exit(POSITION, signal_price=100.0, reason="stop_loss")
            await guard.drain(5)
            return outcome, hooks

    outcome, hooks = run(main())
    assert_ground_truth(net, outcome)
    # What the hooks reported as sold is what landed: no more, no less.
    claimed = {e[1].fill.tx_id for e in hooks.events
               if e[0] == "attempt_finished" and e[1].fill is not None}
    claimed |= {e[1].tx_id for e in hooks.events
                if e[0] == "transition" and e[1].detail == "landed"}
    claimed |= {e[1].tx_id for e in hooks.events if e[0] == "late_fill"}
    assert claimed == set(net.chain.succeeded())


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from solana.rpc.async_api import AsyncClient
    from solders.keypair import Keypair
    from exitguard import ExitGuard, Position, RetryPolicy
    from exitguard.pending import FilePendingStore
    from exitguard.venues.solana import JupiterSwapVenue, solana_ladder

    url, secret, store = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]

    async def main():
        rpc = AsyncClient(url, timeout=5, max_transport_retries=0)
        venue = JupiterSwapVenue(rpc, Keypair.from_bytes(secret), input_mint=sys.argv[4],
                                 output_mint=sys.argv[5], input_decimals=9,
                                 output_decimals=6, jupiter_url=url, rpc_timeout=0.3,
                                 confirm_interval=0.01, rebroadcast_interval=0.05)
        guard = ExitGuard(venue, policy=RetryPolicy(attempt_timeout=0.3, total_timeout=60,
                          initial_backoff=0.01), deadline=120, ladder=solana_ladder(),
                          reconcile_interval=0.02, pending_store=FilePendingStore(store))
        print("exiting", flush=True)
        await guard.exit(Position("sol-stop", "SOL", 2.0, 105.0), signal_price=100.0)

    asyncio.run(main())
    """
)


def kill_mid_exit(net: Cluster, store_path: Path, *, before_the_chain: bool = False) -> str:
    """Run an exit in a child process and SIGKILL it once its submission is recorded (its
    transaction in flight, the child never having seen a status); the signature. With
    ``before_the_chain``, every send hangs in the RPC server: the child is killed after
    recording its signed transaction and before any copy of it reached the chain."""
    chain = net.chain
    chain.fault("getSignatureStatuses", *["null"] * 10_000)  # the child never learns
    if before_the_chain:
        chain.fault("sendTransaction", *["hang"] * 10_000)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, net.rpc_url, bytes(chain.wallet).hex(),
         str(store_path), INPUT_MINT, OUTPUT_MINT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # Both: the guard records a submission before it broadcasts it (the submit
            # contract), so a kill on the record alone could come before anything was sent.
            recorded = store_path.exists() and json.loads(store_path.read_text())["pending"]
            if recorded and (chain.sent or (
                    before_the_chain and "sendTransaction" in chain.requests)):
                break
            assert child.poll() is None, child.communicate()
            time.sleep(0.02)
        else:
            pytest.fail("the child never recorded and sent a submission")
        child.send_signal(signal.SIGKILL)  # mid-exit: its transaction is in flight
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    chain.clear_faults()
    if before_the_chain:
        assert chain.sent == {}, "a copy reached the chain before the kill"
        (record,) = json.loads(store_path.read_text())["pending"]
        return str(record["tx_id"])
    assert len(chain.sent) == 1
    (signature,) = chain.sent
    return signature


def test_killed_mid_exit_the_restarted_guard_finds_the_late_landing(
    net: Cluster, tmp_path: Path,
) -> None:
    store_path = tmp_path / "pending.json"
    chain = net.chain
    chain.fault("sendTransaction", "queue")
    signature = kill_mid_exit(net, store_path)
    assert chain.land_queued() == [signature]  # it lands after the process died

    async def restart() -> tuple[int, list[Any], bool]:
        async with running(net) as venue:
            guard = guard_for(venue, pending_store=FilePendingStore(store_path))
            taken = await guard.resume_pending()
            drained = await guard.drain(10)
            return taken, [fill for _, fill in guard.late_fills], drained

    taken, late, drained = run(restart())
    assert taken == 1
    assert drained
    assert [f.tx_id for f in late] == [signature]
    assert chain.sold_lamports == 2 * LAMPORTS
    assert len(chain.sent) == 1  # nothing re-signed
    assert json.loads(store_path.read_text())["pending"] == []


def test_the_example_exits_against_the_local_validator(net: Cluster, tmp_path: Path) -> None:
    example = REPO / "examples" / "solana_jupiter.py"
    keyfile = tmp_path / "id.json"
    keyfile.write_text(json.dumps(list(bytes(net.chain.wallet))))
    stop = threading.Event()

    def blocks() -> None:
        while not stop.wait(BLOCK_TIME):
            net.chain.produce(1)

    producer = threading.Thread(target=blocks, daemon=True)
    producer.start()
    net.chain.lose = 1  # the first transaction is lost: the example waits out its expiry
    try:
        done = subprocess.run(
            [sys.executable, str(example), "--size", "2", "--entry", "105"],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
                 "EXITGUARD_SOLANA_KEYPAIR": str(keyfile),
                 "EXITGUARD_SOLANA_RPC": net.rpc_url, "EXITGUARD_JUPITER_URL": net.jupiter_url,
                 "EXITGUARD_PENDING": str(tmp_path / "pending.json"),
                 "EXITGUARD_CONFIRM_INTERVAL": "0.02"},
        )
    finally:
        stop.set()
        producer.join(5)
    assert done.returncode == 0, done.stderr
    assert "status=closed sold=2 SOL" in done.stdout, done.stdout
    assert net.chain.sold_lamports == 2 * LAMPORTS
    net.chain.assert_no_early_resign()
    (landed,) = net.chain.succeeded()
    assert landed in done.stdout


def test_after_a_restart_a_lost_sell_expires_and_the_re_exit_closes(
    net: Cluster, tmp_path: Path,
) -> None:
    """The killed process's sell never lands. The restarted guard knows it only from the
    pending store: its venue_data (blockhash, lastValidBlockHeight, signed bytes) is what
    lets the venue call it EXPIRED once the height passes, and only then is a new sell
    signed; without it the old sell stays may-land and the re-exit cannot close."""
    store_path = tmp_path / "pending.json"
    chain = net.chain
    chain.lose = 1  # the killed process's transaction never lands
    old = kill_mid_exit(net, store_path)
    (record,) = json.loads(store_path.read_text())["pending"]
    assert record["tx_id"] == old
    assert {"blockhash", "last_valid_block_height", "signed_tx"} <= set(record["venue_data"])

    async def restart() -> ExitOutcome:
        async with running(net) as venue:
            guard = guard_for(venue, pending_store=FilePendingStore(store_path),
                              deadline=3.0, policy=RetryPolicy(
                                  max_attempts=4, initial_backoff=0.01, max_backoff=0.05,
                                  total_timeout=2.5, attempt_timeout=0.3,
                                  min_attempt_time=0.05))
            await guard.resume_pending()
            # The same stop-loss again: the guard must wait for the old transaction's
            # blockhash to expire before a new one is signed.
            outcome = await guard.exit(POSITION, signal_price=100.0, reason="stop_loss")
            await guard.drain(1)
            return outcome

    outcome = run(restart())
    assert outcome.status is ExitStatus.CLOSED, outcome.reason
    assert old not in chain.succeeded()
    (fill,) = outcome.fills
    assert fill.tx_id != old  # a new signature, signed after the old one expired
    assert_ground_truth(net, outcome)


def test_killed_between_recording_and_sending_nothing_is_signed_until_expiry(
    net: Cluster, tmp_path: Path,
) -> None:
    """The child signed and recorded its sell, then died before any copy reached the chain.
    The restarted guard cannot know whether a copy is still travelling: it either lands
    that same transaction (its stored bytes) or signs a new one only once the old
    blockhash expired. Never both, and the position closes."""
    store_path = tmp_path / "pending.json"
    chain = net.chain
    old = kill_mid_exit(net, store_path, before_the_chain=True)
    (record,) = json.loads(store_path.read_text())["pending"]
    old_last_valid = int(record["venue_data"]["last_valid_block_height"])
    builds_before = len(chain.builds)

    async def restart() -> ExitOutcome:
        async with running(net) as venue:
            guard = guard_for(venue, pending_store=FilePendingStore(store_path))
            await guard.resume_pending()
            outcome = await guard.exit(POSITION, signal_price=100.0, reason="stop_loss")
            await guard.drain(2)
            return outcome

    outcome = run(restart())
    assert outcome.status is ExitStatus.CLOSED, outcome.reason
    assert chain.sold_lamports == 2 * LAMPORTS
    new_builds = chain.builds[builds_before:]
    if old in chain.succeeded():
        assert new_builds == [], "a second sell was built while the first one landed"
    else:
        assert new_builds, "the position closed without a new sell?"
        assert min(new_builds) > old_last_valid, (
            f"a new sell built at {new_builds} while {old[:8]} could land until"
            f" {old_last_valid}")
    assert_ground_truth(net, outcome)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_fault_scripts_keep_the_ground_truth(net: Cluster, seed: int) -> None:
    """A random mix of the scripted faults; whatever the outcome, what the guard reports
    (fills, then late fills after draining) is exactly what landed, never more than the
    position, and no sell was signed while an earlier one could land."""
    rng = random.Random(seed)
    chain = net.chain
    chain.lose = rng.choice([0, 0, 1])
    net.market.fail_next_swaps = rng.choice([0, 1])
    chain.fault("sendTransaction", *rng.choices(
        ["ok", "queue", "drop", "429", "hang", "land_then_hang"], k=4))
    chain.fault("getSignatureStatuses", *rng.choices(["ok", "null", "429", "hang"], k=6))
    chain.fault("getEpochInfo", *rng.choices(["ok", "429", "hang", "behind"], k=3))
    chain.deliver_after(rng.randint(1, 30))

    async def main() -> tuple[ExitOutcome, list[Any]]:
        async with running(net, skip_preflight=rng.random() < 0.5) as venue:
            guard = guard_for(venue, deadline=4.0, policy=RetryPolicy(
                max_attempts=4, initial_backoff=0.01, max_backoff=0.05, total_timeout=3.0,
                attempt_timeout=0.3, min_attempt_time=0.05))
            outcome = await guard.exit(POSITION, signal_price=100.0, reason="stop_loss")
            chain.deliver_after(1)  # whatever is still in flight gets its chance
            assert await guard.drain(5), "background reconciliation did not finish"
            return outcome, [fill for _, fill in guard.late_fills]

    outcome, late = run(main())
    sold = chain.sold_lamports
    assert sold <= POSITION.size * LAMPORTS
    chain.assert_no_early_resign()
    reported = [f.tx_id for f in outcome.fills] + [f.tx_id for f in late]
    assert sorted(reported) == sorted(chain.succeeded()), (outcome.status, outcome.reason)
    assert round((outcome.filled_size + sum(f.size for f in late)) * LAMPORTS) == sold


def test_the_last_attempt_lands_without_an_answer_and_is_reported(net: Cluster) -> None:
    """The only attempt's send lands but never answers. The guard tracked the signature
    from prepare on (before the send), so the hung send is an unknown outcome reconciled
    by lookup: the exit reports the sale instead of ending FAILED with the SOL gone."""
    async def main() -> ExitOutcome:
        async with running(net) as venue:
            net.chain.fault("sendTransaction", "land_then_hang")
            guard = guard_for(venue, policy=RetryPolicy(
                max_attempts=1, initial_backoff=0.01, max_backoff=0.05, total_timeout=3.0,
                attempt_timeout=0.3, min_attempt_time=0.05), deadline=4.0)
            return await guard.exit(POSITION, signal_price=100.0, reason="stop_loss")

    outcome = run(main())
    assert net.chain.sold_lamports == 2 * LAMPORTS  # it did sell
    assert outcome.status is ExitStatus.CLOSED, outcome.reason
    assert_ground_truth(net, outcome)
