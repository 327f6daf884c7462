"""JupiterSwapVenue on its own, against LiteSVM behind a loopback RPC and Jupiter server,
driven by the real solana-py AsyncClient. Every assertion about what was sold or landed
reads the validator (the pool's balance, LiteSVM's history), not the venue's word."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx2
import pytest

pytest.importorskip("solders.litesvm")
pytest.importorskip("solana.rpc.async_api")

from solana.rpc.async_api import AsyncClient
from solders.keypair import Keypair
from solders.transaction import VersionedTransaction
from solders.transaction_status import (
    InstructionErrorCustom,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
)

from exitguard.errors import (
    ConfigError,
    ErrorClass,
    InsufficientBalance,
    InvalidAccount,
    NetworkError,
    OrderNotSent,
    RpcTimeout,
    SlippageExceeded,
    TxExpired,
    default_classifier,
)
from exitguard.venue import (
    ExitOrder,
    OrderMode,
    Position,
    Submission,
    TwoPhaseVenue,
    TxStatus,
)
from exitguard.venues.solana import (
    DoubleSellRefused,
    JupiterSwapVenue,
    RateLimited,
    SwapFailed,
    _landed_failure,
    solana_ladder,
)
from tests.support.solana_chain import (
    INPUT_DECIMALS,
    INPUT_MINT,
    OUTPUT_DECIMALS,
    OUTPUT_MINT,
    Cluster,
    cluster,
    loopback_client,
)

_T = TypeVar("_T")
LAMPORTS = 10**INPUT_DECIMALS
POSITION = Position("sol-1", "SOL", 2.0, 120.0)


def market(size: float = 2.0, fee: int | None = 50_000, slippage: int = 300,
           attempt: int = 1) -> ExitOrder:
    return ExitOrder(POSITION, size, OrderMode.MARKET, 100.0, slippage, attempt, fee)


def run(coro: Awaitable[_T]) -> _T:
    async def bounded() -> _T:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def net() -> Iterator[Cluster]:
    with cluster(validity=20, status_cache=60) as c:
        yield c


@asynccontextmanager
async def venue_on(net: Cluster, keypair: Keypair | None = None,
                   **options: Any) -> AsyncIterator[JupiterSwapVenue]:
    rpc = loopback_client(net.rpc_url)
    settings: dict[str, Any] = {"rpc_timeout": 1.0, "http_timeout": 1.0,
                                "confirm_interval": 0.01, "rebroadcast_interval": 0.05}
    settings.update(options)
    # Plain-HTTP loopback: skip building a TLS context per test (0.2 s each on a busy box).
    http = httpx2.AsyncClient(verify=False)
    venue = JupiterSwapVenue(
        rpc, keypair or net.chain.wallet, input_mint=INPUT_MINT, output_mint=OUTPUT_MINT,
        input_decimals=INPUT_DECIMALS, output_decimals=OUTPUT_DECIMALS,
        jupiter_url=net.jupiter_url, http=http, **settings,
    )
    try:
        yield venue
    finally:
        await venue.aclose()
        await http.aclose()
        await rpc.close()


def scenario(net: Cluster, body: Callable[[JupiterSwapVenue], Awaitable[_T]],
             **options: Any) -> _T:
    async def main() -> _T:
        async with venue_on(net, **options) as venue:
            return await body(venue)

    return run(main())


# -- the contract ---------------------------------------------------------------------------


def test_prepare_signs_and_sends_nothing_then_broadcast_lands_exactly_the_order(
    net: Cluster,
) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        assert isinstance(venue, TwoPhaseVenue)
        submission = await venue.prepare(market())
        # Nothing reached the validator: no send, nothing sold.
        assert net.chain.sent == {}
        assert net.chain.sold_lamports == 0
        data = dict(submission.venue_data)
        assert set(data) >= {"blockhash", "last_valid_block_height", "signed_tx",
                             "in_amount", "out_amount", "min_out"}
        assert all(isinstance(v, str) for v in data.values())
        signed = VersionedTransaction.from_bytes(base64.b64decode(data["signed_tx"]))
        assert str(signed.signatures[0]) == submission.tx_id
        assert signed.verify_with_results() == [True]
        assert data["blockhash"] == str(net.chain.blockhash()[0])
        assert int(data["last_valid_block_height"]) == net.chain.blockhash()[1]
        # The ladder's fee and slippage reached Jupiter in Solana's units.
        assert net.market.quotes[-1]["slippageBps"] == "300"
        assert net.market.swaps[-1]["computeUnitPriceMicroLamports"] == 50_000
        assert "prioritizationFeeLamports" not in net.market.swaps[-1]

        await venue.broadcast(submission)
        assert list(net.chain.sent) == [submission.tx_id]
        lookup = await venue.lookup(submission)
        assert lookup.status is TxStatus.LANDED
        assert lookup.fill is not None
        assert lookup.fill.tx_id == submission.tx_id
        assert lookup.fill.size == 2.0
        assert lookup.fill.price == pytest.approx(100.0)
        assert net.chain.sold_lamports == 2 * LAMPORTS
        assert net.chain.succeeded() == [submission.tx_id]

    scenario(net, body)


def test_rebroadcast_sends_the_same_bytes_and_the_validator_sells_once(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        net.chain.fault("sendTransaction", "queue")  # accepted, in flight
        await venue.broadcast(submission)
        assert await venue.lookup(submission) == await venue.lookup(submission)
        assert (await venue.lookup(submission)).status is TxStatus.PENDING
        for _ in range(3):  # rebroadcasts land it; duplicates are rejected by LiteSVM
            await venue.broadcast(submission)
        net.chain.land_queued()
        assert list(net.chain.sent) == [submission.tx_id]  # one signature, ever
        assert net.chain.sold_lamports == 2 * LAMPORTS
        assert (await venue.lookup(submission)).status is TxStatus.LANDED

    scenario(net, body)


def test_pending_until_last_valid_block_height_expired_only_after(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        last_valid = int(submission.venue_data["last_valid_block_height"])
        net.chain.fault("sendTransaction", "queue")
        await venue.broadcast(submission)
        net.chain.advance(last_valid - net.chain.height)  # height == lastValidBlockHeight
        assert (await venue.lookup(submission)).status is TxStatus.PENDING
        net.chain.advance(1)  # now past it: LiteSVM expired the blockhash
        assert (await venue.lookup(submission)).status is TxStatus.EXPIRED
        assert net.chain.land_queued() == []  # the late copy can never land
        assert net.chain.sold_lamports == 0
        with pytest.raises(TxExpired):
            await venue.confirm(submission)

    scenario(net, body)


def test_a_late_landing_before_expiry_is_a_fill_not_an_expiry(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        net.chain.fault("sendTransaction", "queue")
        await venue.broadcast(submission)
        net.chain.advance(net.chain.validity)  # still valid: height == lastValidBlockHeight
        assert net.chain.land_queued() == [submission.tx_id]
        # Landed at the last valid height, read long after: the recent status cache has
        # forgotten it and the height is past lastValidBlockHeight. Only a history search
        # can tell LANDED from EXPIRED, and the venue must make it before saying EXPIRED.
        net.chain.advance(net.chain.status_cache + 5)
        lookup = await venue.lookup(submission)
        assert lookup.status is TxStatus.LANDED, lookup
        assert net.chain.sold_lamports == 2 * LAMPORTS

    scenario(net, body)


def test_after_a_restart_lookup_and_rebroadcast_work_from_tx_id_and_venue_data(
    net: Cluster,
) -> None:
    async def main() -> None:
        async with venue_on(net) as before:
            landed = await before.prepare(market())
            await before.broadcast(landed)
            in_flight = await before.prepare(
                ExitOrder(Position("sol-2", "SOL", 1.0, 120.0), 1.0, OrderMode.MARKET,
                          100.0, 300, 1, 50_000))
            net.chain.fault("sendTransaction", "drop")  # lost on the way
            await before.broadcast(in_flight)
        # Past the status cache, and past the blockhash's lastValidBlockHeight.
        net.chain.advance(net.chain.status_cache + 1)
        async with venue_on(net) as after:  # a new process: nothing in memory
            for old in (landed, in_flight):
                restored = Submission(old.tx_id, old.order, None, dict(old.venue_data))
                lookup = await after.lookup(restored)
                if old is landed:
                    assert lookup.status is TxStatus.LANDED  # found by history search
                else:
                    assert lookup.status is TxStatus.EXPIRED
        assert net.chain.sold_lamports == 2 * LAMPORTS

    run(main())


def test_a_restored_submission_is_rebroadcast_never_re_signed(net: Cluster) -> None:
    async def main() -> None:
        async with venue_on(net) as before:
            submission = await before.prepare(market())
            net.chain.fault("sendTransaction", "drop")
            await before.broadcast(submission)
        async with venue_on(net) as after:
            restored = Submission(submission.tx_id, submission.order, None,
                                  dict(submission.venue_data))
            assert (await after.lookup(restored)).status is TxStatus.PENDING
            await after.broadcast(restored)
            assert (await after.lookup(restored)).status is TxStatus.LANDED
        assert list(net.chain.sent) == [submission.tx_id]
        assert net.chain.sold_lamports == 2 * LAMPORTS

    run(main())


def test_confirm_rebroadcasts_while_pending_and_returns_the_fill(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        net.chain.fault("sendTransaction", "drop", "drop")  # two copies lost
        await venue.broadcast(submission)
        fill = await venue.confirm(submission)
        assert fill.tx_id == submission.tx_id
        assert fill.size == 2.0
        assert net.chain.requests.count("sendTransaction") >= 3
        assert list(net.chain.sent) == [submission.tx_id]

    scenario(net, body)


def test_the_fill_is_what_the_wallet_received_not_the_quote(net: Cluster) -> None:
    """The quote says 100 per SOL; the route paid 97.5 (within the 3% slippage). The fill,
    and so the slippage the guard reports, is the wallet's real output from the landed
    transaction's token balances."""
    net.chain.execution_price = 97.5

    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        await venue.broadcast(submission)
        fill = await venue.confirm(submission)
        assert fill.size == 2.0
        assert fill.price == pytest.approx(97.5)
        assert net.chain.output_balance == 195 * 10**6  # ground truth: 2 SOL at 97.5
        assert "getTransaction" in net.chain.requests

    scenario(net, body)


def test_a_node_that_has_not_indexed_the_landing_leaves_the_quote_as_the_fill(
    net: Cluster,
) -> None:
    net.chain.execution_price = 97.5

    async def body(venue: JupiterSwapVenue) -> None:
        net.chain.fault("getTransaction", "null")
        submission = await venue.prepare(market())
        await venue.broadcast(submission)
        fill = await venue.confirm(submission)
        assert fill.size == 2.0
        assert fill.price == pytest.approx(100.0)  # the quote's outAmount stands in

    scenario(net, body)


# -- failures, and how they map --------------------------------------------------------------


def test_slippage_failure_at_preflight_is_a_definite_rejection(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        net.market.fail_next_swaps = 1
        submission = await venue.prepare(market())
        with pytest.raises(SlippageExceeded, match="6001"):
            await venue.broadcast(submission)
        assert net.chain.landed == {}
        assert net.chain.sold_lamports == 0
        # The position is free again: the next rung is signed at once.
        retry = await venue.prepare(market(slippage=500, attempt=2))
        await venue.broadcast(retry)
        assert net.chain.sold_lamports == 2 * LAMPORTS

    scenario(net, body)


def test_a_swap_that_lands_failed_with_6001_is_failed_and_sold_nothing(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        net.market.fail_next_swaps = 1
        wallet_before = net.chain.svm.get_balance(net.chain.wallet.pubkey()) or 0
        submission = await venue.prepare(market())
        await venue.broadcast(submission)  # skip_preflight: it lands, failed
        landed = net.chain.landed[submission.tx_id]
        assert isinstance(landed.err, TransactionErrorInstructionError)
        assert (await venue.lookup(submission)).status is TxStatus.FAILED
        assert isinstance(venue.failure_of(submission.tx_id), SlippageExceeded)
        with pytest.raises(SlippageExceeded):
            await venue.confirm(submission)
        assert net.chain.sold_lamports == 0  # the transfer was rolled back
        paid = wallet_before - (net.chain.svm.get_balance(net.chain.wallet.pubkey()) or 0)
        assert 0 < paid < 10**6  # only the fee

    scenario(net, body, skip_preflight=True)


def test_blockhash_not_found_after_expiry_is_tx_expired(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        net.chain.advance(net.chain.validity + 1)
        with pytest.raises(TxExpired):
            await venue.broadcast(submission)
        assert net.chain.landed == {}

    scenario(net, body)


def test_already_processed_at_preflight_is_success(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        signed = VersionedTransaction.from_bytes(
            base64.b64decode(submission.venue_data["signed_tx"]))
        net.chain.execute(signed)  # the same bytes reached the chain another way
        await venue.broadcast(submission)  # preflight says AlreadyProcessed: no error
        assert (await venue.lookup(submission)).status is TxStatus.LANDED
        assert net.chain.sold_lamports == 2 * LAMPORTS

    scenario(net, body)


def test_insufficient_sol_for_fees_is_permanent(net: Cluster) -> None:
    async def main() -> None:
        async with venue_on(net, keypair=Keypair()) as venue:  # a wallet without SOL
            submission = await venue.prepare(market())
            with pytest.raises(InsufficientBalance):
                await venue.broadcast(submission)
        assert net.chain.landed == {}

    run(main())


def test_429_on_a_first_send_is_not_sent_on_a_rebroadcast_only_rate_limited(
    net: Cluster,
) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        net.chain.fault("sendTransaction", "429")
        with pytest.raises(OrderNotSent):
            await venue.broadcast(submission)
        assert net.chain.sent == {}
        again = await venue.prepare(market(attempt=2))
        net.chain.fault("sendTransaction", "drop", "429")
        await venue.broadcast(again)
        with pytest.raises(RateLimited) as caught:
            await venue.broadcast(again)  # a rebroadcast proves nothing
        assert not isinstance(caught.value, OrderNotSent)
        assert default_classifier(caught.value) is ErrorClass.NETWORK

    scenario(net, body)


def test_a_hung_send_is_an_unknown_outcome_and_a_hung_status_a_timeout(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        net.chain.fault("sendTransaction", "hang")
        with pytest.raises(RpcTimeout):
            await venue.broadcast(submission)
        net.chain.fault("getSignatureStatuses", "hang")
        with pytest.raises(RpcTimeout):
            await venue.lookup(submission)
        net.chain.fault("getEpochInfo", "429")
        with pytest.raises(RateLimited):
            await venue.lookup(submission)

    scenario(net, body, rpc_timeout=0.3)


def test_prepare_refuses_a_second_sell_while_the_first_may_land(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        first = await venue.prepare(market())
        net.chain.fault("sendTransaction", "drop")
        await venue.broadcast(first)
        with pytest.raises(DoubleSellRefused):
            await venue.prepare(market(attempt=2))
        assert len(net.market.swaps) == 1  # refused before asking Jupiter to build it
        net.chain.advance(net.chain.validity + 1)
        second = await venue.prepare(market(attempt=2))  # the first can never land now
        await venue.broadcast(second)
        net.chain.assert_no_early_resign()
        assert net.chain.sold_lamports == 2 * LAMPORTS

    scenario(net, body)


def test_jupiter_failures_in_prepare_send_nothing(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        net.market.fail_http.extend([429, 500, 0])  # 0: hang
        for _ in range(3):
            with pytest.raises(OrderNotSent):
                await venue.prepare(market())
        assert net.chain.sent == {}

    scenario(net, body)


def test_a_limit_order_refuses_a_quote_below_its_worst_price(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        net.market.price = 98.0
        order = ExitOrder(POSITION, 2.0, OrderMode.LIMIT, 100.0, 100, 1, 50_000)  # >= 99
        with pytest.raises(SlippageExceeded):
            await venue.prepare(order)
        assert net.market.swaps == []
        assert net.chain.sent == {}

    scenario(net, body)


def test_priority_fee_as_lamports_and_capped(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        await venue.prepare(market(fee=9_000_000))
        assert net.market.swaps[-1]["prioritizationFeeLamports"] == 1_000_000
        assert "computeUnitPriceMicroLamports" not in net.market.swaps[-1]

    scenario(net, body, priority_fee="lamports", max_priority_fee=1_000_000)


def test_error_table_for_landed_errors() -> None:
    def custom(code: int) -> TransactionErrorInstructionError:
        return TransactionErrorInstructionError(2, InstructionErrorCustom(code))

    assert isinstance(_landed_failure(custom(6001), "s"), SlippageExceeded)
    assert isinstance(_landed_failure(custom(6017), "s"), SlippageExceeded)
    assert isinstance(_landed_failure(custom(6024), "s"), InsufficientBalance)
    assert isinstance(_landed_failure(custom(6025), "s"), InvalidAccount)
    assert isinstance(_landed_failure(custom(1), "s"), SwapFailed)
    assert isinstance(_landed_failure(TransactionErrorFieldless.InsufficientFundsForFee, "s"),
                      InsufficientBalance)
    assert "0x1771" in str(_landed_failure(custom(6001), "s"))
    assert issubclass(RateLimited, NetworkError)


def test_invalid_configuration_names_the_field(net: Cluster) -> None:
    async def main() -> None:
        rpc = AsyncClient(net.rpc_url)
        base: dict[str, Any] = {"input_mint": INPUT_MINT, "output_mint": OUTPUT_MINT,
                                "input_decimals": 9, "output_decimals": 6}
        for change, field in (({"input_mint": "not-a-key"}, "input_mint"),
                              ({"output_mint": INPUT_MINT}, "output_mint"),
                              ({"input_decimals": -1}, "input_decimals"),
                              ({"jupiter_url": "ftp://x"}, "jupiter_url"),
                              ({"priority_fee": "tip"}, "priority_fee"),
                              ({"rpc_timeout": 0}, "rpc_timeout")):
            with pytest.raises(ConfigError) as caught:
                JupiterSwapVenue(rpc, Keypair(), **{**base, **change})
            assert caught.value.field == field
        venue = JupiterSwapVenue(rpc, Keypair(), jupiter_api_key="sekrit", **base)
        assert "sekrit" not in repr(venue)
        await rpc.close()

    run(main())


def test_solana_ladder_is_in_venue_units() -> None:
    ladder = solana_ladder()
    first = ladder.order(POSITION, size=2.0, reference_price=100.0, attempt=1, step_index=0,
                         tries_at_step=0)
    late = ladder.order(POSITION, size=2.0, reference_price=100.0, attempt=9, step_index=1,
                        tries_at_step=10)
    assert first.mode is OrderMode.LIMIT
    assert first.priority_fee == 50_000
    assert late.priority_fee == 5_000_000
    assert late.max_slippage_bps == 300


def test_submit_after_an_ambiguous_send_hands_back_the_earlier_transaction(
    net: Cluster,
) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        net.chain.fault("sendTransaction", "land_then_hang")
        with pytest.raises(RpcTimeout):
            await venue.submit(market())  # it landed; the answer was lost
        again = await venue.submit(market(attempt=2))  # a naive retry
        assert list(net.chain.sent) == [again.tx_id]  # no second signature
        fill = await venue.confirm(again)
        assert fill.tx_id == again.tx_id
        assert net.chain.sold_lamports == 2 * LAMPORTS

    scenario(net, body, rpc_timeout=0.3)


def test_a_status_from_a_node_behind_never_makes_a_landed_sell_expired(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        submission = await venue.prepare(market())
        await venue.broadcast(submission)  # it lands at once
        net.chain.advance(net.chain.validity + 5)
        # Height from an up-to-date node, statuses from one that has not seen the landing.
        net.chain.fault("getSignatureStatuses", "null", "null")
        assert (await venue.lookup(submission)).status is TxStatus.PENDING
        assert (await venue.lookup(submission)).status is TxStatus.LANDED

    scenario(net, body)


def test_amounts_round_to_the_order_not_one_unit_below_it(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        position = Position("sol-odd", "SOL", 0.57, 120.0)  # 0.57 * 1e9 = 569999999.99...
        order = ExitOrder(position, 0.57, OrderMode.MARKET, 100.0, 300, 1, None)
        submission = await venue.prepare(order)
        assert submission.venue_data["in_amount"] == "570000000"
        await venue.broadcast(submission)
        lookup = await venue.lookup(submission)
        assert lookup.fill is not None
        assert lookup.fill.size == 0.57
        assert net.chain.sold_lamports == 570_000_000

    scenario(net, body)


def test_prepare_refuses_while_an_earlier_sell_landed_unseen(net: Cluster) -> None:
    async def body(venue: JupiterSwapVenue) -> None:
        first = await venue.prepare(market())
        await venue.broadcast(first)  # it lands; nobody has looked it up
        with pytest.raises(DoubleSellRefused):
            await venue.prepare(market(attempt=2))
        assert (await venue.lookup(first)).status is TxStatus.LANDED  # the guard learns it
        net.chain.assert_no_early_resign()
        assert net.chain.sold_lamports == 2 * LAMPORTS

    scenario(net, body)


def test_the_ground_truth_check_catches_a_second_sell_signed_too_early(net: Cluster) -> None:
    # The harness can fail: sign and send a second sell while the first may land (what
    # the venue refuses to do), bypassing the venue's own check.
    async def body(venue: JupiterSwapVenue) -> None:
        first = await venue.prepare(market())
        net.chain.fault("sendTransaction", "drop")
        await venue.broadcast(first)
        venue._live.clear()  # defeat the second line of defence
        second = await venue.prepare(market(fee=60_000, attempt=2))  # a new signature
        assert second.tx_id != first.tx_id
        await venue.broadcast(second)
        with pytest.raises(AssertionError, match="could land until"):
            net.chain.assert_no_early_resign()

    scenario(net, body)
