"""A market price process: a geometric random walk with drift and volatility, plus regimes.

A path is sampled once, from a seeded ``random.Random``, on a fixed grid (``step`` seconds)
from 0 to its horizon, and read by linear interpolation. So the price at a time does not
depend on who asks first or how often: two executors replayed against the same path see the
same market, and a venue can work out at send time what a transaction will fetch when it
lands. Times are seconds relative to the path's start (the venue maps loop time onto them).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._validate import non_negative, number, positive

__all__ = ["MarketPath", "MarketSpec", "Regime"]


@dataclass(frozen=True, slots=True)
class Regime:
    """A stretch of time with its own drift and volatility (a crash, a squeeze, a lull).

    ``drift`` is the log return per second (-0.001 is about -0.1 % a second), ``volatility``
    the standard deviation of the log return over one second.
    """

    start: float
    end: float
    drift: float
    volatility: float

    def __post_init__(self) -> None:
        number("Regime", "start", self.start)
        number("Regime", "end", self.end)
        if self.end <= self.start:
            raise ValueError(f"Regime.end ({self.end}) must be after start ({self.start})")
        number("Regime", "drift", self.drift)
        non_negative("Regime", "volatility", self.volatility)


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """The parameters of a price process; a later regime wins where regimes overlap."""

    start_price: float
    drift: float = 0.0
    volatility: float = 0.0005
    regimes: tuple[Regime, ...] = field(default=())
    step: float = 1.0

    def __post_init__(self) -> None:
        owner = "MarketSpec"
        positive(owner, "start_price", self.start_price)
        number(owner, "drift", self.drift)
        non_negative(owner, "volatility", self.volatility)
        positive(owner, "step", self.step)
        object.__setattr__(self, "regimes", tuple(self.regimes))

    def regime_at(self, t: float) -> tuple[float, float]:
        """(drift, volatility) in force at ``t``."""
        for regime in reversed(self.regimes):
            if regime.start <= t < regime.end:
                return regime.drift, regime.volatility
        return self.drift, self.volatility

    def path(self, horizon: float, rng: random.Random) -> MarketPath:
        return MarketPath(self, horizon, rng)


class MarketPath:
    """One sampled price path from 0 to ``horizon`` seconds, read by linear interpolation.

    Before 0 the price is the start price, after the horizon it stays at the last sample.
    """

    __slots__ = ("_prices", "_vols", "horizon", "spec")

    def __init__(self, spec: MarketSpec, horizon: float, rng: random.Random) -> None:
        positive("MarketPath", "horizon", horizon)
        self.spec = spec
        self.horizon = float(horizon)
        steps = max(1, math.ceil(horizon / spec.step))
        dt = spec.step
        root_dt = math.sqrt(dt)
        gauss = rng.gauss
        exp = math.exp
        price = spec.start_price
        prices = [price]
        vols = []
        for index in range(steps):
            drift, vol = spec.regime_at(index * dt)
            vols.append(vol)
            price *= exp(drift * dt + vol * root_dt * gauss(0.0, 1.0))
            prices.append(price)
        vols.append(vols[-1])
        self._prices = prices
        self._vols = vols

    @classmethod
    def from_prices(cls, prices: Sequence[float], step: float = 1.0) -> MarketPath:
        """A fixed path (tests): ``prices[i]`` is the price at ``i * step`` seconds."""
        if len(prices) < 2:
            raise ValueError("from_prices needs at least two finite prices > 0")
        for price in prices:
            positive("MarketPath.from_prices", "prices", price)
        spec = MarketSpec(prices[0], volatility=0.0, step=step)
        path = cls.__new__(cls)
        path.spec = spec
        path.horizon = step * (len(prices) - 1)
        path._prices = [float(p) for p in prices]
        path._vols = [0.0] * len(prices)
        return path

    @property
    def prices(self) -> tuple[float, ...]:
        return tuple(self._prices)

    def price(self, t: float) -> float:
        """The mid price at ``t`` seconds after the start."""
        prices = self._prices
        if t <= 0:
            return prices[0]
        position = t / self.spec.step
        index = int(position)
        if index >= len(prices) - 1:
            return prices[-1]
        frac = position - index
        return prices[index] + (prices[index + 1] - prices[index]) * frac

    def volatility(self, t: float) -> float:
        """The per-second volatility in force at ``t`` (what widens slippage)."""
        vols = self._vols
        index = min(max(int(t / self.spec.step), 0), len(vols) - 1)
        return vols[index]

    def first_time_below(self, level: float) -> float | None:
        """The first grid time at which the price is at or below ``level``."""
        for index, price in enumerate(self._prices):
            if price <= level:
                return index * self.spec.step
        return None
