"""A real exitguard process, for the end-to-end alerting test and the alert latency benchmark.

    python tests/support/e2e_bot.py --port 9464 --events events.jsonl \\
        --guard e2e [--guard e2e-2...] \\
        --pager-url slack://T0/B0/TOKEN --pager-url discord://ID/TOKEN \\
        [--slack-endpoint http://127.0.0.1:P/pager/slack] \\
        [--discord-endpoint http://127.0.0.1:P/pager/discord]

Each guard exits through its own ``ScriptedVenue`` (named :func:`venue_of` the guard: one venue
per guard, so each trip is its own per-venue alert) and circuit breaker (three
failed exits open it), on a real asyncio loop in real time. Telemetry metrics
(``exitguard.telemetry.instrument``) are served on ``http://127.0.0.1:PORT/metrics``; the
in-process ``Pager`` pages the apprise URLs on every breaker trip. ``--slack-endpoint`` and
``--discord-endpoint`` point apprise's real Slack and Discord plugins at a local server instead
of hooks.slack.com and discord.com (tests only).

At start every guard makes one successful exit: the healthy state Prometheus scrapes first
(with ``--fail-first GUARD``, that guard's first exit fails instead, before any scrape).
Then it reads commands on stdin, one a line:

    trip GUARD    GUARD's venue goes down; exits run (and fail) until its breaker opens
    quit          (also on EOF or SIGTERM) close the pager and the metrics server, exit

Events are appended to ``--events`` as JSON lines: ``ready`` once the healthy exits are done,
``tripped`` at the moment a breaker opens (``mono``: ``time.monotonic()``, the system-wide
CLOCK_MONOTONIC, comparable with the timestamps of another process on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from exitguard import ExitGuard, Position, RetryPolicy, telemetry
from exitguard.alerting.pager import Pager
from exitguard.breaker import BreakerState, CircuitBreaker
from exitguard.events import BreakerTransition
from exitguard.hooks import Hooks
from exitguard.outcome import ExitStatus
from exitguard.testing import ScriptedVenue, TxPlan

FAILURE_THRESHOLD = 3
#: Quick exits: two attempts 50 ms apart, well inside a 3 s deadline.
POLICY = RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.05, total_timeout=2.0,
                     attempt_timeout=1.0, min_attempt_time=0.01)


class EventLog:
    """JSON lines, flushed one by one (the test reads them while the bot runs)."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "mono": time.monotonic(), "wall": time.time(),
                           **fields})
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class TripMarker:
    """The first hook of each guard: stamps the moment a breaker opens."""

    def __init__(self, events: EventLog) -> None:
        self.events = events

    def __call__(self, event: object) -> None:
        if isinstance(event, BreakerTransition) and event.new is BreakerState.OPEN:
            self.events.write("tripped", guard=event.guard, breaker=event.breaker)


def venue_of(guard: str) -> str:
    """The name of ``guard``'s venue (and so of its breaker, the alerts' ``venue`` label)."""
    return f"venue-{guard}"


class Bot:
    """One guard: a venue that is healthy until :meth:`trip`."""

    def __init__(self, name: str, hooks: Sequence[Hooks]) -> None:
        self.name = name
        self.venue_down = False
        self.venue = ScriptedVenue(self._plan, name=venue_of(name))
        self.guard = ExitGuard(
            self.venue, name=name, policy=POLICY, deadline=3.0, hooks=list(hooks),
            breaker=CircuitBreaker(FAILURE_THRESHOLD, name=venue_of(name), cooldown=3600.0),
        )
        self._exits = 0

    def _plan(self, index: int) -> TxPlan:
        if self.venue_down:
            return TxPlan(send_error=ConnectionError("venue unreachable"))
        return TxPlan(confirm_after=0.02, lands_after=0.02)

    async def exit_once(self) -> ExitStatus:
        self._exits += 1
        position = Position(f"{self.name}-pos-{self._exits}", "SOL", 1.0, 100.0)
        outcome = await self.guard.exit(position, signal_price=99.0, reason="stop loss")
        return outcome.status

    async def trip(self) -> int:
        """Fail exits until the breaker opens; returns how many exits that took."""
        self.venue_down = True
        for count in range(1, 4 * FAILURE_THRESHOLD):
            await self.exit_once()
            if self.guard.breaker.state is BreakerState.OPEN:
                return count
        raise RuntimeError(f"the breaker of {self.name} did not open")


def _commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str]) -> None:
    """stdin, line by line, onto the loop (a thread: stdin may be a pipe or a terminal)."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line.strip())
    loop.call_soon_threadsafe(queue.put_nowait, "quit")


async def main(args: argparse.Namespace) -> None:
    if args.slack_endpoint or args.discord_endpoint:
        from apprise.plugins.discord import NotifyDiscord
        from apprise.plugins.slack import NotifySlack

        if args.slack_endpoint:
            NotifySlack.webhook_url = args.slack_endpoint
        if args.discord_endpoint:
            NotifyDiscord.notify_url = args.discord_endpoint
    events = EventLog(Path(args.events))
    pager = Pager(args.pager_url, min_interval=60.0, timeout=5.0)
    marker = TripMarker(events)
    bots = {name: Bot(name, [marker, pager]) for name in args.guard}
    for bot in bots.values():
        telemetry.instrument(bot.guard, metrics=True, traces=False, logs=False)
    server = telemetry.serve_metrics(port=args.port)
    try:
        for bot in bots.values():
            bot.venue_down = bot.name in args.fail_first
            status = await bot.exit_once()
            expected = ExitStatus.FAILED if bot.venue_down else ExitStatus.CLOSED
            bot.venue_down = False
            if status is not expected:
                raise RuntimeError(f"the first exit of {bot.name} ended {status}")
        events.write("ready", guards=list(bots), metrics=server.url)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        loop.add_signal_handler(signal.SIGTERM, queue.put_nowait, "quit")
        threading.Thread(target=_commands, args=(loop, queue), daemon=True).start()
        while True:
            command, _, argument = (await queue.get()).partition(" ")
            if command == "quit":
                break
            if command == "trip" and argument in bots:
                exits = await bots[argument].trip()
                events.write("trip_done", guard=argument, exits=exits)
            elif command:
                events.write("unknown_command", command=command, argument=argument)
    finally:
        with contextlib.suppress(Exception):
            await pager.aclose(timeout=2.0)
        for bot in bots.values():
            await bot.guard.aclose()
        server.close()
        events.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="/metrics port (127.0.0.1)")
    parser.add_argument("--events", required=True, help="JSON lines file of events")
    parser.add_argument("--guard", action="append", required=True, help="a guard name")
    parser.add_argument("--pager-url", action="append", default=[], help="an apprise URL")
    parser.add_argument("--fail-first", action="append", default=[], metavar="GUARD",
                        help="GUARD's first exit fails (before any scrape), the others close")
    parser.add_argument("--slack-endpoint", help="apprise's Slack webhook base URL (tests)")
    parser.add_argument("--discord-endpoint", help="apprise's Discord webhook base URL (tests)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
