"""``--serve``: a simulated bot running in real time with the full instrumentation.

One real-time loop, one guard named "demo" (a primary venue "sim-dex" and a backup
"sim-dex-backup", a breaker, a trading halt in a file under a temporary directory). Positions
are opened (entries respect the halt; an inventory keeps exits going through a halt) and
exited at a steady rate, about one exit every 0.5-2 s, while a schedule of phases changes
the venues' conditions:

- ``normal``: small fault rates: first-attempt closes, a few retries, partial fills,
  slippage;
- ``congestion`` (longer than the 30 s deadline): chain congestion with a stalled, lagging
  RPC node: timeouts, stale blockhashes that expire, escalations, deadline hits,
  unresolved exits and, once the phase ends, late fills;
- ``outage``: the primary route fails every order (a permanent error) and the backup is
  flaky: failed exits trip the breaker, which halts entries and routes to the backup; when
  both are open, exits still go to the primary as its breaker's probe (never refused). A
  simulated operator ("demo-operator") resumes trading a while after each halt.

So every metric of the catalogue moves within a couple of minutes (the pages counter
only with a pager configured: ``EXITGUARD_PAGER_URLS`` or ``EXITGUARD_PAGER_URLS_FILE``).
SIGINT and SIGTERM stop it cleanly: in-flight exits are cancelled (the guard stays
consistent), the metrics server is closed and traces are flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from ..errors import HaltResumeError, TradingHalted
from ..guard import ExitGuard
from ..halt import FileHaltStore, TradingHalt
from ..hooks import Hooks
from ..redaction import get_logger
from ..telemetry import (
    configure_logging,
    configure_tracing,
    instrument,
    serve_metrics,
    shutdown_tracing,
)
from ..venue import Position
from .market import MarketSpec, Regime
from .run import build_guard
from .venue import Conditions, Ledger, SimVenue, VenueSpec

__all__ = [
    "DemoBot",
    "Phase",
    "ServeError",
    "ServeOptions",
    "build_demo",
    "demo_phases",
    "random_phases",
    "serve",
]

_log = get_logger("exitguard.sim.serve")

#: Open positions the demo bot keeps (entries stop while halted; exits go on).
_INVENTORY = 40
#: The operator the demo resumes trading as.
OPERATOR = "demo-operator"


class ServeError(Exception):
    """``--serve`` cannot start (port in use, bad endpoint, a pager that cannot load)."""


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of time with given venue conditions and market mood."""

    name: str
    duration: float
    primary: Conditions
    fallback: Conditions
    drift: float
    volatility: float


_NORMAL = Conditions(send_failure_rate=0.03, rpc_timeout_rate=0.05, rpc_timeout_after=(2.0, 10.0),
                     lookup_failure_rate=0.05, land_rate=0.95, latency_median=0.6,
                     partial_fill_rate=0.05)
_CONGESTED = replace(_NORMAL, land_rate=0.05, latency_median=12.0, latency_sigma=0.6,
                     rpc_timeout_rate=0.8, rpc_timeout_after=(20.0, 40.0),
                     lookup_failure_rate=0.9, blockhash_age=(0.0, 85.0))
_BROKEN = replace(_NORMAL, permanent_error_rate=1.0)
_FLAKY = replace(_NORMAL, send_failure_rate=0.85, land_rate=0.7, latency_median=3.0)


def demo_phases() -> list[Phase]:
    """The demo's cycle (about 2 minutes), repeated. A congestion phase outlasts the 30 s
    exit deadline, so some exits end unresolved and their landings are found late."""
    return [
        Phase("normal", 30.0, _NORMAL, _NORMAL, -0.0003, 0.0006),
        Phase("congestion", 45.0, _CONGESTED, _CONGESTED, -0.0015, 0.0015),
        Phase("normal", 20.0, _NORMAL, _NORMAL, -0.0003, 0.0006),
        Phase("outage", 30.0, _BROKEN, _FLAKY, -0.001, 0.001),
    ]


def random_phases(rng: random.Random) -> Iterator[Phase]:
    """Phases drawn at random (``simulate --serve``): mostly normal, with fault bursts."""
    while True:
        kind = rng.choices(("normal", "congestion", "outage"), weights=(5, 2, 1))[0]
        if kind == "normal":
            yield Phase("normal", rng.uniform(20.0, 60.0), _NORMAL, _NORMAL,
                        rng.uniform(-0.0006, 0.0002), rng.uniform(0.0003, 0.0012))
        elif kind == "congestion":
            yield Phase("congestion", rng.uniform(35.0, 60.0),
                        replace(_CONGESTED, land_rate=rng.uniform(0.02, 0.2)),
                        replace(_CONGESTED, land_rate=rng.uniform(0.02, 0.2)),
                        rng.uniform(-0.003, -0.0005), rng.uniform(0.001, 0.003))
        else:
            yield Phase("outage", rng.uniform(20.0, 40.0), _BROKEN,
                        replace(_FLAKY, send_failure_rate=rng.uniform(0.5, 0.9)),
                        rng.uniform(-0.002, -0.0003), rng.uniform(0.0005, 0.002))


@dataclass(frozen=True, slots=True)
class ServeOptions:
    mode: str = "demo"  # "demo" (the fixed cycle) or "simulate" (random phases)
    seed: int = 1
    bind: str = "127.0.0.1"
    port: int = 9464
    otlp_endpoint: str | None = None
    duration: float | None = None  # stop after this many seconds (None: until a signal)
    exit_interval: tuple[float, float] = (0.5, 2.0)
    resume_after: float = 20.0
    max_in_flight: int = 50


class DemoBot:
    """The running demo bot: inventory, exits, phases, the operator.

    Time comes from the running loop only, so it runs in virtual time as well (the tests
    replay minutes of it in a blink); ``serve`` runs it in real time.
    """

    def __init__(self, options: ServeOptions, guard: ExitGuard, primary: SimVenue,
                 fallback: SimVenue, halt: TradingHalt, rng: random.Random) -> None:
        self.options = options
        self.guard = guard
        self.primary = primary
        self.fallback = fallback
        self.halt = halt
        self.rng = rng
        self.phase = demo_phases()[0]
        self.inventory: deque[Position] = deque()
        self.exits: set[asyncio.Task[None]] = set()
        self.ids = 0
        self._halted_at: float | None = None
        halt.on_halt(self._on_halt)

    def _on_halt(self, record: object) -> None:
        try:
            self._halted_at = asyncio.get_running_loop().time()
        except RuntimeError:  # halted outside the loop (never in the demo)
            self._halted_at = None

    def _open(self) -> None:
        """An entry, unless trading is halted (reduce-only)."""
        try:
            self.guard.check_entry()
        except TradingHalted:
            return
        self.ids += 1
        rng = self.rng
        position = Position(f"pos-{self.ids}", rng.choice(("SOL", "JUP", "BONK")),
                            round(rng.uniform(1.0, 50.0), 2), 100.0)
        self.inventory.append(position)

    def _market(self, signal: float) -> MarketSpec:
        phase, rng = self.phase, self.rng
        regimes: tuple[Regime, ...] = ()
        if phase.name != "normal" and rng.random() < 0.5:
            regimes = (Regime(0.0, 60.0, phase.drift * 2, phase.volatility * 1.5),)
        return MarketSpec(signal, drift=phase.drift, volatility=phase.volatility, regimes=regimes)

    async def _exit(self, position: Position) -> None:
        rng = self.rng
        loop = asyncio.get_running_loop()
        if rng.random() < 0.85:
            signal, reason = 100.0 * (1 - rng.uniform(0.03, 0.08)), "stop_loss"
        else:
            signal, reason = 100.0 * (1 + rng.uniform(0.02, 0.1)), "take_profit"
        market = self._market(signal).path(600.0, random.Random(rng.getrandbits(64)))
        now = loop.time()
        for venue in (self.primary, self.fallback):
            venue.track(position, market, origin=now)
        try:
            await self.guard.exit(position, signal_price=signal, reason=reason)
        finally:
            # Keep the transactions a while: background reconciliation still looks them up.
            loop.call_later(self.guard.background_reconcile_for + 60, self._forget, position.id)

    def _forget(self, position_id: str) -> None:
        for venue in (self.primary, self.fallback):
            venue.forget(position_id)
        self.primary.ledger.forget(position_id)

    def _spawn_exit(self) -> None:
        if not self.inventory or len(self.exits) >= self.options.max_in_flight:
            return
        task = asyncio.get_running_loop().create_task(self._exit(self.inventory.popleft()))
        self.exits.add(task)
        task.add_done_callback(self.exits.discard)

    async def _trade(self) -> None:
        """Exit one position a tick; open up to two (not while halted), keeping an inventory
        so that exits go on through a halt, as they must."""
        for _ in range(_INVENTORY // 2):
            self._open()
        low, high = self.options.exit_interval
        while True:
            await asyncio.sleep(self.rng.uniform(low, high))
            for _ in range(2):
                if len(self.inventory) < _INVENTORY:
                    self._open()
            self._spawn_exit()

    async def _phases(self) -> None:
        cycle: Iterator[Phase]
        if self.options.mode == "demo":
            cycle = _repeat(demo_phases())
        else:
            cycle = random_phases(random.Random(self.rng.getrandbits(64)))
        for phase in cycle:
            self.phase = phase
            self.primary.override = phase.primary
            self.fallback.override = phase.fallback
            _log.info("demo phase %s for %.0fs", phase.name, phase.duration)
            await asyncio.sleep(phase.duration)

    async def _operator(self) -> None:
        """Resume trading ``resume_after`` seconds after each halt, as an approver would."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            if not self.halt.is_halted:
                continue
            if self._halted_at is None:
                self._halted_at = loop.time()
            if loop.time() - self._halted_at >= self.options.resume_after:
                with contextlib.suppress(HaltResumeError):
                    self.halt.resume(OPERATOR, "auto-resume by the demo after the fault burst")

    async def run(self) -> None:
        """Trade until cancelled; then cancel the exits in flight (the guard stays
        consistent and reports what may still land) and stop background reconciliation."""
        tasks = [asyncio.get_running_loop().create_task(coro)
                 for coro in (self._trade(), self._phases(), self._operator())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in (*tasks, *self.exits):
                task.cancel()
            await asyncio.gather(*tasks, *self.exits, return_exceptions=True)
            await self.guard.aclose()


def build_demo(options: ServeOptions, *, halt_dir: Path,
               hooks: Hooks | Sequence[Hooks] | None = None) -> DemoBot:
    """The demo bot: a guard named "demo" over two simulated venues, with a file halt."""
    rng = random.Random(options.seed)
    ledger = Ledger()
    primary = SimVenue(VenueSpec(name="sim-dex", base=_NORMAL),
                       rng=random.Random(rng.getrandbits(64)), ledger=ledger)
    fallback = SimVenue(VenueSpec(name="sim-dex-backup", base=_NORMAL),
                        rng=random.Random(rng.getrandbits(64)), ledger=ledger)
    # The demo's halt file lives in a temporary directory: a key of its own is enough.
    halt = TradingHalt((OPERATOR,), store=FileHaltStore(halt_dir / "halt.json"), name="demo",
                       key=secrets.token_bytes(32))
    guard = build_guard("guarded", primary, fallback, name="demo", halt=halt, hooks=hooks,
                        breaker_threshold=3, breaker_cooldown=15.0)
    return DemoBot(options, guard, primary, fallback, halt, rng)


def _repeat(phases: list[Phase]) -> Iterator[Phase]:
    while True:
        yield from phases


def _pager(guard: ExitGuard) -> Any:
    if not (os.environ.get("EXITGUARD_PAGER_URLS") or os.environ.get("EXITGUARD_PAGER_URLS_FILE")):
        return None
    try:
        from ..alerting.pager import Pager
    except ImportError as exc:
        raise ServeError(f"the pager is configured but cannot be loaded: {exc}") from None
    try:
        pager = Pager.from_env()
    except ValueError as exc:
        raise ServeError(f"pager: {exc}") from None
    guard.add_hooks(pager)
    return pager


async def serve(options: ServeOptions, *, out: TextIO | None = None,
                ready: Callable[[str], None] | None = None) -> int:
    """Run the demo bot until SIGINT/SIGTERM (or ``options.duration``); 0 when it stopped."""
    out = out or sys.stderr
    # Everything on ``out`` is one JSON object per line: exitguard's events, the banners
    # below, and other libraries' records (the OpenTelemetry SDK's).
    configure_logging(json=True, level="INFO", stream=out)
    try:
        server = serve_metrics(port=options.port, addr=options.bind)
    except OSError as exc:
        reason = str(exc.strerror or exc)
        if not reason.startswith("cannot serve"):
            reason = f"cannot serve metrics on {options.bind}:{options.port}: {reason}"
        raise ServeError(reason) from None
    provider = None
    pager = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    runner: asyncio.Task[None] | None = None
    with tempfile.TemporaryDirectory(prefix="exitguard-demo-") as tmp:
        try:
            if options.otlp_endpoint:
                # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win over the demo's name.
                provider = configure_tracing(options.otlp_endpoint,
                                             default_service_name="exitguard-demo")
            demo = build_demo(options, halt_dir=Path(tmp))
            instrument(demo.guard, metrics=True, traces=provider is not None,
                       logs=True, tracer_provider=provider)
            pager = _pager(demo.guard)
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
                installed.append(signum)
            runner = loop.create_task(demo.run())
            url = str(server.url)
            traces = f"; traces to {options.otlp_endpoint}" if options.otlp_endpoint else ""
            _log.info("exitguard %s --serve: metrics on %s%s; Ctrl-C to stop", options.mode,
                      url, traces)
            if ready is not None:
                ready(url)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), options.duration)
            _log.info("exitguard: stopping; exits in flight are cancelled (each logged once,"
                      " at warning)")
        finally:
            if runner is not None:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
            for signum in installed:
                loop.remove_signal_handler(signum)
            if pager is not None:
                await pager.aclose()
            server.close()
            if provider is not None:
                await asyncio.to_thread(shutdown_tracing, provider, 5.0)
    return 0
