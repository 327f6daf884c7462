"""Scenarios: the seed's incident, a few named variations, and a random scenario generator.

A scenario is a market (price process) plus the venues' conditions over time: everything an
executor is run against. The market starts at the signal price: the stop-loss has just
triggered (entry 100, stop at -5 % means the exit is signalled at 95).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass

from .._validate import positive
from .market import MarketSpec, Regime
from .venue import Conditions, VenueSpec, Window

__all__ = [
    "SCENARIOS",
    "Scenario",
    "get_scenario",
    "random_scenario",
    "scenario_names",
]

#: The seed's chain-congestion numbers: a transaction without a priority fee rarely lands
#: and, when it does, late; the RPC node does not answer confirmation requests.
_CONGESTED_CHAIN: dict[str, object] = {
    "land_rate": 0.05, "latency_median": 25.0, "latency_sigma": 0.4,
}
_STALLED_RPC: dict[str, object] = {
    "rpc_timeout_rate": 0.9, "rpc_timeout_after": (30.0, 60.0), "lookup_failure_rate": 0.1,
}


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    market: MarketSpec
    primary: VenueSpec
    fallback: VenueSpec | None = None
    entry_price: float = 100.0
    stop_loss_pct: float = 5.0
    size: float = 10.0
    symbol: str = "SOL"
    horizon: float = 300.0

    def __post_init__(self) -> None:
        if not (0 < self.stop_loss_pct < 100):
            raise ValueError(f"stop_loss_pct must be in (0, 100), got {self.stop_loss_pct!r}")
        positive("Scenario", "size", self.size)
        positive("Scenario", "horizon", self.horizon)

    @property
    def signal_price(self) -> float:
        """Where the stop-loss triggers (a long position)."""
        return self.entry_price * (1 - self.stop_loss_pct / 100)


def incident() -> Scenario:
    """The seed's incident (Part 1): 5 % stop-loss, RPC timeouts, a falling market."""
    entry, stop = 100.0, 5.0
    market = MarketSpec(
        start_price=entry * (1 - stop / 100),
        drift=-0.0008,
        volatility=0.0004,
        regimes=(
            Regime(30.0, 120.0, drift=-0.0014, volatility=0.001),
            Regime(120.0, 1e9, drift=-0.0002, volatility=0.0006),
        ),
    )
    primary = VenueSpec(
        name="sim-dex",
        base=Conditions(),
        windows=(Window.of(0.0, 120.0, **_CONGESTED_CHAIN, **_STALLED_RPC),),
    )
    return Scenario(
        name="incident",
        description=(
            "The seed's incident: long 10 SOL from 100, stop-loss at -5 % (exit signalled at "
            "95). For two minutes the RPC node stops answering confirmations and the chain is "
            "congested, while the price slides toward 80."
        ),
        market=market,
        primary=primary,
        entry_price=entry,
        stop_loss_pct=stop,
    )


def calm() -> Scenario:
    """A healthy venue and a gently falling market: both exits should be close to -5 %."""
    return Scenario(
        name="calm",
        description="A healthy venue and a gently falling market: the control case.",
        market=MarketSpec(95.0, drift=-0.0002, volatility=0.0004),
        primary=VenueSpec(name="sim-dex"),
    )


def congestion() -> Scenario:
    """Chain congestion without RPC trouble: only a priority fee gets a transaction in."""
    return Scenario(
        name="congestion",
        description=(
            "Three minutes of chain congestion: transactions without a priority fee rarely "
            "land, the RPC answers. A falling market."
        ),
        market=MarketSpec(95.0, drift=-0.0008, volatility=0.0008),
        primary=VenueSpec(
            name="sim-dex", windows=(Window.of(0.0, 180.0, **_CONGESTED_CHAIN),),
        ),
    )


def outage() -> Scenario:
    """The primary route is broken (a permanent error); a backup venue works."""
    return Scenario(
        name="outage",
        description=(
            "The primary route answers every order with AccountNotFound (a permanent error); "
            "a backup venue works. A falling market."
        ),
        market=MarketSpec(95.0, drift=-0.0006, volatility=0.0006),
        primary=VenueSpec(name="sim-dex", base=Conditions(permanent_error_rate=1.0)),
        fallback=VenueSpec(name="sim-dex-backup"),
    )


def double_sell() -> Scenario:
    """The RPC answers confirmations with fast timeouts while transactions land."""
    return Scenario(
        name="double-sell",
        description=(
            "The RPC gateway answers confirmation requests with a timeout after 2-5 s while "
            "the transactions land: a retry that does not reconcile sells twice."
        ),
        market=MarketSpec(95.0, drift=-0.0004, volatility=0.0006),
        primary=VenueSpec(
            name="sim-dex",
            windows=(Window.of(0.0, 240.0, rpc_timeout_rate=0.95, rpc_timeout_after=(2.0, 5.0),
                               lookup_failure_rate=0.05),),
        ),
    )


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "incident": incident,
    "calm": calm,
    "congestion": congestion,
    "outage": outage,
    "double-sell": double_sell,
}


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]()
    except KeyError:
        raise KeyError(
            f"unknown scenario {name!r} (choose from {', '.join(SCENARIOS)})"
        ) from None


# -- random scenarios -----------------------------------------------------------------------


def _base_conditions(rng: random.Random) -> Conditions:
    low = rng.uniform(2.0, 30.0)
    return Conditions(
        send_failure_rate=rng.uniform(0.0, 0.05),
        rpc_timeout_rate=rng.uniform(0.0, 0.05),
        rpc_timeout_after=(low, low + rng.uniform(0.0, 30.0)),
        lookup_failure_rate=rng.uniform(0.0, 0.05),
        quote_failure_rate=rng.uniform(0.0, 0.02),
        land_rate=rng.uniform(0.85, 0.99),
        latency_median=rng.uniform(0.4, 2.0),
        latency_sigma=rng.uniform(0.3, 0.8),
        partial_fill_rate=rng.uniform(0.0, 0.05),
    )


def random_scenario(rng: random.Random, *, horizon: float = 300.0) -> Scenario:
    """A random market and fault mix, drawn from ``rng`` (the Monte Carlo's population).

    Half the runs are stress events, where stop-losses trigger most: a crash regime under
    way, with chain congestion (60 %) and an RPC outage on the primary venue (50 %) that
    may have begun before the signal. The other half are ordinary markets (a drift from
    mildly up to falling, quiet to wild volatility) where congestion or an outage may start
    later (10 % each); an RPC outage also hands out stale blockhashes. Every venue has
    baseline error rates and fills some orders only in part; 5 % of runs have a permanently
    broken primary route; 60 % have a backup venue (which shares the chain's congestion).
    """
    stop = rng.uniform(3.0, 8.0)
    entry = 100.0
    stress = rng.random() < 0.5
    regimes: list[Regime] = []
    if stress:
        start = rng.uniform(0.0, 10.0)
        regimes.append(Regime(start, start + rng.uniform(30.0, 180.0),
                              drift=rng.uniform(-0.003, -0.0005),
                              volatility=rng.uniform(0.001, 0.003)))
    market = MarketSpec(
        entry * (1 - stop / 100),
        drift=rng.uniform(-0.0008, 0.0002),
        volatility=rng.uniform(0.0002, 0.0015),
        regimes=tuple(regimes),
    )
    chain: list[Window] = []
    if rng.random() < (0.6 if stress else 0.1):
        start = rng.uniform(-30.0, 10.0) if stress else rng.uniform(0.0, 120.0)
        chain.append(Window.of(start, start + rng.uniform(20.0, 180.0),
                               land_rate=rng.uniform(0.02, 0.4),
                               latency_median=rng.uniform(8.0, 40.0)))
    rpc: list[Window] = []
    if rng.random() < (0.5 if stress else 0.1):
        start = rng.uniform(-30.0, 10.0) if stress else rng.uniform(0.0, 120.0)
        low = rng.uniform(2.0, 40.0)
        rpc.append(Window.of(start, start + rng.uniform(20.0, 240.0),
                             rpc_timeout_rate=rng.uniform(0.5, 1.0),
                             rpc_timeout_after=(low, low + rng.uniform(0.0, 20.0)),
                             lookup_failure_rate=rng.uniform(0.2, 0.8),
                             send_failure_rate=rng.uniform(0.1, 0.6),
                             blockhash_age=(0.0, rng.uniform(0.0, 85.0))))
    primary_base = _base_conditions(rng)
    if rng.random() < 0.05:
        primary_base = dataclasses.replace(primary_base, permanent_error_rate=1.0)
    primary = VenueSpec(name="sim-dex", base=primary_base, windows=(*chain, *rpc))
    fallback = None
    if rng.random() < 0.6:
        fallback = VenueSpec(name="sim-dex-backup", base=_base_conditions(rng),
                             windows=tuple(chain))
    return Scenario(
        name="random",
        description="a random market and fault mix",
        market=market,
        primary=primary,
        fallback=fallback,
        entry_price=entry,
        stop_loss_pct=stop,
        size=round(rng.uniform(1.0, 50.0), 2),
        horizon=horizon,
    )

