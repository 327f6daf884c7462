"""A simulated, flaky venue (a Solana-style DEX behind an RPC node) and the ground truth.

``SimVenue`` implements the Venue Protocol. Everything random comes from one seeded
``random.Random`` and time comes from the running loop, so it runs in virtual time and a
seed replays the same run. What it models:

- **landing**: a sent transaction is included with a probability that grows with its
  priority fee, after a log-normal inclusion latency that shrinks with the fee; it can land
  only before ``min(its blockhash lifetime, order.valid_for)`` (blockhash-style expiry:
  60-90 s unless the order asks for less; a lagging RPC node hands out stale blockhashes,
  which expire sooner). A landing can come long after the caller stopped waiting (a late
  landing).
- **price at landing**: the market mid at the landing time minus a slippage that grows with
  size and volatility; a swap whose price would pass the order's ``max_slippage_bps`` limit
  lands as a failed transaction (``SlippageExceeded``): nothing is sold.
- **partial fills**: thin liquidity fills only part of some orders.
- **RPC faults**: confirmation calls that time out (``RpcTimeout`` after a configured delay,
  or the caller's own timeout first), send failures (``NetworkError``: not sent), look-up
  failures, quote failures, and permanent errors (``InvalidAccount``: a broken route).
- **regimes**: ``Window`` changes conditions for a stretch of time (congestion, an outage);
  ``SimVenue.override`` changes them from outside (the ``--serve`` fault bursts).

The fate of each transaction (whether and when it lands, at what price) is decided when it
is sent and recorded in a ``Ledger`` shared by every venue of a run: that is the ground truth
the simulator reads to count what was really sold and how often a position was sold twice.

Why one module of about 540 lines: the venue's models (landing, price, partial fills, faults,
regimes) all draw from one seeded stream in a fixed order; keeping them together keeps that
order, and so every seed's figures, visible and stable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import random
from dataclasses import dataclass, field

from .._validate import fraction, non_negative, positive
from ..errors import (
    InvalidAccount,
    NetworkError,
    OrderNotSent,
    RpcTimeout,
    SlippageExceeded,
    TxExpired,
)
from ..venue import ExitOrder, Fill, Lookup, Position, Submission, TxStatus
from .market import MarketPath

__all__ = [
    "Conditions",
    "Ledger",
    "PositionTruth",
    "SimTx",
    "SimVenue",
    "VenueSpec",
    "Window",
]

#: Sizes below this fraction of a position are dust.
_DUST = 1e-9


@dataclass(frozen=True, slots=True)
class Conditions:
    """The venue's behaviour at one moment. Rates are probabilities per call; times seconds.

    ``blockhash_age`` is how old (seconds, drawn uniformly) the blockhash a lagging RPC node
    hands out already is: it shortens the transaction's lifetime, so it can expire before the
    caller stops waiting.
    ``partial_fill_rate`` is the chance that a landing fills only part (30-90 %) of the order
    (thin liquidity on the route); the rest stays unsold.
    ``land_rate`` is the chance that a transaction with no priority fee is ever included;
    the fee raises it (see ``VenueSpec.fee_scale``). ``latency_median`` and
    ``latency_sigma`` shape the log-normal inclusion latency at no fee.
    ``rpc_timeout_rate`` is the chance that a confirmation call times out: it then raises
    ``RpcTimeout`` after a delay drawn from ``rpc_timeout_after`` (unless the caller gives up
    first), whether or not the transaction lands meanwhile.
    """

    send_latency: float = 0.05
    send_failure_rate: float = 0.01
    permanent_error_rate: float = 0.0
    rpc_latency: float = 0.05
    rpc_timeout_rate: float = 0.02
    rpc_timeout_after: tuple[float, float] = (20.0, 60.0)
    lookup_failure_rate: float = 0.01
    quote_failure_rate: float = 0.0
    land_rate: float = 0.97
    latency_median: float = 0.8
    latency_sigma: float = 0.5
    blockhash_age: tuple[float, float] = (0.0, 0.0)
    partial_fill_rate: float = 0.0

    def __post_init__(self) -> None:
        owner = "Conditions"
        for name in ("send_failure_rate", "permanent_error_rate", "rpc_timeout_rate",
                     "lookup_failure_rate", "quote_failure_rate", "land_rate",
                     "partial_fill_rate"):
            fraction(owner, name, getattr(self, name))
        for name in ("send_latency", "rpc_latency", "latency_sigma"):
            non_negative(owner, name, getattr(self, name))
        positive(owner, "latency_median", self.latency_median)
        low, high = self.rpc_timeout_after
        non_negative(owner, "rpc_timeout_after", low)
        non_negative(owner, "rpc_timeout_after", high)
        if high < low:
            raise ValueError(f"Conditions.rpc_timeout_after must be (low, high), got {(low, high)}")
        low, high = self.blockhash_age
        non_negative(owner, "blockhash_age", low)
        non_negative(owner, "blockhash_age", high)
        if high < low:
            raise ValueError(f"Conditions.blockhash_age must be (low, high), got {(low, high)}")


_CONDITION_FIELDS = frozenset(f.name for f in dataclasses.fields(Conditions))


@dataclass(frozen=True, slots=True)
class Window:
    """Changed conditions from ``start`` to ``end`` (seconds after the venue's origin)."""

    start: float
    end: float
    changes: tuple[tuple[str, object], ...]

    @classmethod
    def of(cls, start: float, end: float, **changes: object) -> Window:
        unknown = set(changes) - _CONDITION_FIELDS
        if unknown:
            raise ValueError(f"Window: unknown condition(s) {sorted(unknown)}")
        if not end > start:
            raise ValueError(f"Window.end ({end}) must be after start ({start})")
        return cls(float(start), float(end), tuple(sorted(changes.items())))

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True, slots=True)
class VenueSpec:
    """A venue's fixed traits and its schedule of conditions.

    The chance that a transaction lands is ``1 - (1 - land_rate) * exp(-fee / fee_scale)``
    and its median inclusion latency ``latency_median / (1 + fee / fee_scale)``. Slippage at
    landing, in bps: ``spread_bps + impact_bps_per_unit * size + volatility_slippage *
    (per-second volatility in bps) + |N(0, slippage_noise_bps)|``.
    """

    name: str = "sim-dex"
    base: Conditions = field(default_factory=Conditions)
    windows: tuple[Window, ...] = ()
    blockhash_lifetime: tuple[float, float] = (60.0, 90.0)
    fee_scale: float = 10_000.0
    confirm_lag: float = 0.4
    spread_bps: float = 5.0
    impact_bps_per_unit: float = 1.0
    volatility_slippage: float = 2.0
    slippage_noise_bps: float = 10.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("VenueSpec.name must be a non-empty string")
        object.__setattr__(self, "windows", tuple(self.windows))
        low, high = self.blockhash_lifetime
        positive("VenueSpec", "blockhash_lifetime", low)
        positive("VenueSpec", "blockhash_lifetime", high)
        if high < low:
            raise ValueError(f"VenueSpec.blockhash_lifetime must be (low, high), got "
                             f"{self.blockhash_lifetime}")
        positive("VenueSpec", "fee_scale", self.fee_scale)
        for name in ("confirm_lag", "spread_bps", "impact_bps_per_unit", "volatility_slippage",
                     "slippage_noise_bps"):
            non_negative("VenueSpec", name, getattr(self, name))

    def land_probability(self, conditions: Conditions, fee: int | None) -> float:
        boost = math.exp(-(fee or 0) / self.fee_scale)
        return 1.0 - (1.0 - conditions.land_rate) * boost

    def median_latency(self, conditions: Conditions, fee: int | None) -> float:
        return conditions.latency_median / (1.0 + (fee or 0) / self.fee_scale)


@dataclass(slots=True)
class SimTx:
    """One sent transaction and its fate (loop times). ``lands_at`` None: it never lands."""

    tx_id: str
    venue: str
    order: ExitOrder
    sent_at: float
    expires_at: float
    lands_at: float | None
    failed: bool
    fill: Fill | None

    @property
    def sells(self) -> bool:
        """It lands and sells (a failed landing sells nothing)."""
        return self.fill is not None

    def status_at(self, now: float) -> TxStatus:
        if self.lands_at is not None and now >= self.lands_at:
            return TxStatus.FAILED if self.failed else TxStatus.LANDED
        if now >= self.expires_at:
            return TxStatus.EXPIRED
        return TxStatus.PENDING


@dataclass(frozen=True, slots=True)
class PositionTruth:
    """What really happened to a position, by the ledger (not by what any executor believed).

    ``pnl`` counts the position's own size only (each landing in time order, until the
    size is sold); whatever sold beyond it is ``oversold``, and each landing that sold beyond
    it is a double-sell. ``closed_at`` is the loop time the size was fully sold.
    """

    size: float
    sold: float
    oversold: float
    pnl: float
    avg_price: float | None
    closed_at: float | None
    double_sells: int
    sent: int
    landed: int
    failed_landings: int


class Ledger:
    """Every transaction sent for a run, on any venue: the ground truth."""

    def __init__(self) -> None:
        self.txs: list[SimTx] = []
        self._sizes: dict[str, float] = {}

    def open(self, position: Position) -> None:
        """Declare a position (its full size is what may be sold)."""
        self._sizes[position.id] = position.size

    def record(self, tx: SimTx) -> None:
        self._sizes.setdefault(tx.order.position.id, tx.order.position.size)
        self.txs.append(tx)

    def forget(self, position_id: str) -> None:
        """Drop a finished position (a long-running ``--serve`` would grow without bound)."""
        self._sizes.pop(position_id, None)
        self.txs = [tx for tx in self.txs if tx.order.position.id != position_id]

    def of(self, position_id: str) -> list[SimTx]:
        return [tx for tx in self.txs if tx.order.position.id == position_id]

    def sold_by(self, position_id: str, at: float) -> float:
        return sum(
            tx.fill.size for tx in self.of(position_id)
            if tx.fill is not None and tx.lands_at is not None and tx.lands_at <= at
        )

    def truth(self, position: Position, *, until: float | None = None) -> PositionTruth:
        """The position's fate from every landing (up to ``until``, loop time, if given)."""
        size = self._sizes.get(position.id, position.size)
        txs = self.of(position.id)
        landings = sorted(
            (tx for tx in txs if tx.lands_at is not None
             and (until is None or tx.lands_at <= until)),
            key=lambda tx: (tx.lands_at, tx.tx_id),
        )
        left = size
        pnl = 0.0
        value = 0.0
        sold = 0.0
        oversold = 0.0
        double_sells = 0
        closed_at: float | None = None
        failed = 0
        for tx in landings:
            fill = tx.fill
            if fill is None:
                failed += 1
                continue
            take = min(fill.size, left)
            extra = fill.size - take
            if extra > _DUST * size:
                double_sells += 1
                oversold += extra
            if take > 0:
                pnl += take * position.pnl_per_unit(fill.price)
                value += take * fill.price
                sold += take
                left -= take
                if left <= _DUST * size and closed_at is None:
                    left = 0.0
                    closed_at = tx.lands_at
        return PositionTruth(
            size=size,
            sold=sold,
            oversold=oversold,
            pnl=pnl,
            avg_price=value / sold if sold > 0 else None,
            closed_at=closed_at,
            double_sells=double_sells,
            sent=len(txs),
            landed=sum(1 for tx in landings if tx.fill is not None),
            failed_landings=failed,
        )


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return 0.0


@dataclass(slots=True)
class VenueStats:
    """Call counts, for the models' statistics tests and the demo's table."""

    quotes: int = 0
    quote_failures: int = 0
    submits: int = 0
    sent: int = 0
    send_failures: int = 0
    permanent_errors: int = 0
    confirms: int = 0
    rpc_timeouts: int = 0
    lookups: int = 0
    lookup_failures: int = 0


class SimVenue:
    """A simulated venue implementing the Venue Protocol (see the module docstring).

    ``market`` is the default price path; ``track`` gives a position its own. ``origin`` is
    the loop time that is second 0 of the paths and of ``spec.windows`` (default: the loop
    time when the venue is created, or 0 outside a running loop).
    """

    def __init__(
        self,
        spec: VenueSpec,
        *,
        rng: random.Random,
        ledger: Ledger | None = None,
        market: MarketPath | None = None,
        origin: float | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.rng = rng
        self.ledger = ledger if ledger is not None else Ledger()
        self.market = market
        self.origin = _loop_time() if origin is None else float(origin)
        #: Replaces the scheduled conditions while set (``--serve`` fault bursts).
        self.override: Conditions | None = None
        self.stats = VenueStats()
        self._markets: dict[str, tuple[MarketPath, float]] = {}
        self._txs: dict[str, SimTx] = {}
        self._by_client_id: dict[str, SimTx] = {}  # what a lookup by client order id finds
        self._ids = itertools.count(1)
        self._cache: dict[tuple[int, ...], Conditions] = {}

    # -- set-up -------------------------------------------------------------------------

    def track(self, position: Position, market: MarketPath, origin: float | None = None) -> None:
        """Price ``position`` on its own path, whose second 0 is ``origin`` (default: now)."""
        self._markets[position.id] = (market, _loop_time() if origin is None else float(origin))
        self.ledger.open(position)

    def forget(self, position_id: str) -> None:
        """Drop a finished position's path and transactions (long-running ``--serve``)."""
        self._markets.pop(position_id, None)
        for tx_id in [t for t, tx in self._txs.items() if tx.order.position.id == position_id]:
            del self._txs[tx_id]
        for key in [k for k, tx in self._by_client_id.items()
                    if tx.order.position.id == position_id]:
            del self._by_client_id[key]

    # -- the model ------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def conditions(self, now: float | None = None) -> Conditions:
        """The conditions in force at loop time ``now`` (default: now)."""
        if self.override is not None:
            return self.override
        t = (self._now() if now is None else now) - self.origin
        active = tuple(i for i, window in enumerate(self.spec.windows) if window.covers(t))
        if not active:
            return self.spec.base
        cached = self._cache.get(active)
        if cached is None:
            changes: dict[str, object] = {}
            for index in active:
                changes.update(self.spec.windows[index].changes)
            cached = dataclasses.replace(self.spec.base, **changes)  # type: ignore[arg-type]
            self._cache[active] = cached
        return cached

    def _market_of(self, position: Position) -> tuple[MarketPath, float]:
        tracked = self._markets.get(position.id)
        if tracked is not None:
            return tracked
        if self.market is None:
            raise ValueError(f"{self.name}: no market for position {position.id!r}")
        return self.market, self.origin

    def market_price(self, position: Position, at: float | None = None) -> float:
        """The mid price of ``position``'s market at loop time ``at`` (default: now)."""
        market, origin = self._market_of(position)
        return market.price((self._now() if at is None else at) - origin)

    def _slippage_bps(self, order: ExitOrder, market: MarketPath, t: float) -> float:
        spec = self.spec
        noise = 0.0
        if spec.slippage_noise_bps:
            noise = abs(self.rng.gauss(0.0, spec.slippage_noise_bps))
        return (spec.spread_bps + spec.impact_bps_per_unit * order.size
                + spec.volatility_slippage * market.volatility(t) * 10_000 + noise)

    def _fate(self, order: ExitOrder, tx_id: str, now: float, conditions: Conditions) -> SimTx:
        spec, rng = self.spec, self.rng
        lifetime = rng.uniform(*spec.blockhash_lifetime)
        if conditions.blockhash_age[1] > 0:
            lifetime = max(0.5, lifetime - rng.uniform(*conditions.blockhash_age))
        if order.valid_for is not None and order.valid_for > 0:
            lifetime = min(lifetime, order.valid_for)
        expires_at = now + lifetime
        fee = order.priority_fee
        included = rng.random() < spec.land_probability(conditions, fee)
        latency = spec.median_latency(conditions, fee) * math.exp(
            conditions.latency_sigma * rng.gauss(0.0, 1.0)
        )
        market, origin = self._market_of(order.position)
        lands_at: float | None = None
        failed = False
        fill: Fill | None = None
        if included and now + latency < expires_at:
            lands_at = now + latency
            t = lands_at - origin
            mid = market.price(t)
            slip = self._slippage_bps(order, market, t) / 10_000
            if order.position.side == "long":
                price = mid * (1.0 - slip)
                failed = price < order.worst_price
            else:
                price = mid * (1.0 + slip)
                failed = price > order.worst_price
            if not failed:
                size = order.size
                if conditions.partial_fill_rate and rng.random() < conditions.partial_fill_rate:
                    size *= rng.uniform(0.3, 0.9)
                fill = Fill(tx_id, size, price)
        return SimTx(tx_id, self.name, order, now, expires_at, lands_at, failed, fill)

    # -- the Venue Protocol ---------------------------------------------------------------

    async def price(self, position: Position) -> float:
        conditions = self.conditions()
        self.stats.quotes += 1
        await asyncio.sleep(conditions.rpc_latency)
        if conditions.quote_failure_rate and self.rng.random() < conditions.quote_failure_rate:
            self.stats.quote_failures += 1
            raise NetworkError("getPrice failed: 503 Service Unavailable")
        return self.market_price(position)

    async def submit(self, order: ExitOrder) -> Submission:
        conditions = self.conditions()
        self.stats.submits += 1
        rng = self.rng
        await asyncio.sleep(conditions.send_latency * (0.5 + rng.random()))
        if conditions.permanent_error_rate and rng.random() < conditions.permanent_error_rate:
            self.stats.permanent_errors += 1
            raise InvalidAccount("AccountNotFound: the route's pool account does not exist")
        if conditions.send_failure_rate and rng.random() < conditions.send_failure_rate:
            self.stats.send_failures += 1
            # Every other one is a refused connection (the node never got it: a definite
            # "not sent"); the others a reset the guard cannot tell from a sent order.
            if self.stats.send_failures % 2:
                raise OrderNotSent("sendTransaction failed: connection refused")
            raise NetworkError("sendTransaction failed: connection reset by peer")
        tx_id = f"{self.name}-{next(self._ids)}"
        tx = self._fate(order, tx_id, self._now(), conditions)
        self._txs[tx_id] = tx
        self._by_client_id[order.client_order_id] = tx
        self.ledger.record(tx)
        self.stats.sent += 1
        return Submission(tx_id, order, tx.expires_at)

    def _tx(self, submission: Submission) -> SimTx:
        tx = self._txs.get(submission.tx_id)
        if tx is None:
            raise InvalidAccount(f"unknown transaction {submission.tx_id!r}")
        return tx

    async def confirm(self, submission: Submission) -> Fill:
        tx = self._tx(submission)
        conditions = self.conditions()
        self.stats.confirms += 1
        now = self._now()
        if conditions.rpc_timeout_rate and self.rng.random() < conditions.rpc_timeout_rate:
            self.stats.rpc_timeouts += 1
            after = self.rng.uniform(*conditions.rpc_timeout_after)
            await asyncio.sleep(after)
            raise RpcTimeout(f"RPC request timed out after {after:.1f}s")
        lag = self.spec.confirm_lag
        if tx.lands_at is not None:
            await asyncio.sleep(max(0.0, tx.lands_at + lag - now))
            if tx.fill is None:
                raise SlippageExceeded(
                    "custom program error: 0x1771 (slippage tolerance exceeded)"
                )
            return tx.fill
        await asyncio.sleep(max(0.0, tx.expires_at + lag - now))
        raise TxExpired("Blockhash not found: block height exceeded")

    async def lookup(self, submission: Submission) -> Lookup:
        conditions = self.conditions()
        self.stats.lookups += 1
        await asyncio.sleep(conditions.rpc_latency)
        if conditions.lookup_failure_rate and self.rng.random() < conditions.lookup_failure_rate:
            self.stats.lookup_failures += 1
            raise NetworkError("getSignatureStatuses failed: 503 Service Unavailable")
        tx = self._txs.get(submission.tx_id) or self._by_client_id.get(submission.tx_id)
        if tx is None:  # a send that failed before the order reached the chain
            return Lookup(TxStatus.EXPIRED)
        status = tx.status_at(self._now())
        fill = tx.fill if status is TxStatus.LANDED else None
        if fill is not None and submission.tx_id != fill.tx_id:  # found by client order id
            fill = Fill(submission.tx_id, fill.size, fill.price)
        return Lookup(status, fill)

    # -- ground truth ---------------------------------------------------------------------

    def transactions(self, position_id: str | None = None) -> list[SimTx]:
        return [tx for tx in self._txs.values()
                if position_id is None or tx.order.position.id == position_id]
