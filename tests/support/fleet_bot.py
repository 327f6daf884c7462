"""One bot process of a fleet sharing a halt and a breaker view through Redis, for the fleet
tests and benchmarks/bench_fleet.py.

    EXITGUARD_HALT_KEY=... python tests/support/fleet_bot.py --redis redis://127.0.0.1:P/0 \\
        --name bot-1 --events bot-1.jsonl --approver alice [--approver bob]

One ``ExitGuard`` whose ``ScriptedVenue`` (``venue``) is healthy until ``trip``, whose breaker
is shared (``RedisBreakerBackend``, three failed exits open it, fleet-wide) and whose halt is
the fleet's (``exitguard.fleet.shared_halt``), on a real asyncio loop in real time. Commands
on stdin, one a line; each answers with one event:

    trip              the venue goes down; exits run (and fail) until the breaker opens
    heal              the venue works again
    exit              one exit of a fresh position -> exit_done (status, seconds)
    entry             check_entry -> entry (allowed, reason)
    resume WHO WHY    halt.resume(WHO, WHY) -> resume (ok, error)
    halt WHY          halt.halt(WHY, actor="operator") -> halt_done
    state             -> state (halted, reason, history length, breaker, store errors, faults)
    quit              (also on EOF or SIGTERM)

Events are JSON lines appended to ``--events``, each with ``mono`` (``time.monotonic()``,
CLOCK_MONOTONIC: comparable across the processes of one machine). Besides the answers:
``ready`` (with the state found at start), ``halted`` and ``resumed`` (halt listeners, the
moment this process learnt of it), ``tripped`` (this process's breaker opened).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from exitguard import ExitGuard, Position, RetryPolicy
from exitguard.breaker import BreakerState, CircuitBreaker
from exitguard.errors import HaltResumeError, TradingHalted
from exitguard.fleet import RedisBreakerBackend, shared_halt
from exitguard.halt import HaltRecord
from exitguard.testing import ScriptedVenue, TxPlan

FAILURE_THRESHOLD = 3
POLICY = RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.05, total_timeout=2.0,
                     attempt_timeout=1.0, min_attempt_time=0.01)


class EventLog:
    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "mono": time.monotonic(), **fields})
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class Bot:
    def __init__(self, args: argparse.Namespace, events: EventLog) -> None:
        self.name = args.name
        self.events = events
        self.venue_down = False
        self.backend = RedisBreakerBackend(args.redis, namespace=args.namespace)
        self.breaker = CircuitBreaker(FAILURE_THRESHOLD, name="venue", cooldown=3600.0,
                                      shared=self.backend)
        self.halt = shared_halt(args.redis, args.approver, namespace=args.namespace)
        self.halt.on_halt(lambda r: self._heard("halted", r))
        self.halt.on_resume(lambda r: self._heard("resumed", r))
        self.breaker.add_listener(self._transition)
        self.guard = ExitGuard(ScriptedVenue(self._plan, name="venue"), name=self.name,
                               policy=POLICY, deadline=3.0, breaker=self.breaker,
                               halt=self.halt)
        self._exits = 0

    def _heard(self, event: str, record: HaltRecord) -> None:
        self.events.write(event, reason=record.reason, actor=record.actor)

    def _transition(self, name: str, old: BreakerState, new: BreakerState, why: str) -> None:
        if new is BreakerState.OPEN:
            self.events.write("tripped", breaker=name, reason=why)

    def _plan(self, index: int) -> TxPlan:
        if self.venue_down:
            return TxPlan(send_error=ConnectionError("venue unreachable"))
        return TxPlan(confirm_after=0.01, lands_after=0.01)

    async def exit_once(self) -> dict[str, Any]:
        self._exits += 1
        position = Position(f"{self.name}-pos-{self._exits}", "SOL", 1.0, 100.0)
        started = time.monotonic()
        outcome = await self.guard.exit(position, signal_price=99.0, reason="stop loss")
        return {"status": outcome.status.value, "seconds": time.monotonic() - started}

    def state(self) -> dict[str, Any]:
        store = self.halt.store
        return {"halted": self.halt.is_halted, "reason": self.halt.reason,
                "history": len(self.halt.history), "breaker": self.breaker.state.value,
                "store_error": self.halt.store_error, "breaker_error": self.breaker.shared_error,
                "faults": {k.value: v for k, v in self.guard.fault_counts.items() if v},
                "restores": getattr(store, "restores", 0)}

    async def handle(self, command: str, argument: str) -> None:
        if command == "trip":
            self.venue_down = True
            for count in range(1, 4 * FAILURE_THRESHOLD):
                await self.exit_once()
                if self.breaker.state is BreakerState.OPEN:
                    self.events.write("trip_done", exits=count)
                    return
            self.events.write("trip_done", exits=None)
        elif command == "heal":
            self.venue_down = False
            self.events.write("heal_done")
        elif command == "exit":
            self.events.write("exit_done", **await self.exit_once())
        elif command == "entry":
            try:
                self.guard.check_entry()
                self.events.write("entry", allowed=True, reason=None)
            except TradingHalted as exc:
                self.events.write("entry", allowed=False, reason=exc.reason)
        elif command == "resume":
            who, _, why = argument.partition(" ")
            try:
                self.halt.resume(who, why)
                self.events.write("resume", ok=True, error=None)
            except HaltResumeError as exc:
                self.events.write("resume", ok=False, error=str(exc))
        elif command == "halt":
            self.events.write("halt_done", halted=self.halt.halt(argument, actor="operator"))
        elif command == "state":
            self.events.write("state", **self.state())
        else:
            self.events.write("unknown_command", command=command)

    def close(self) -> None:
        self.backend.close()
        close = getattr(self.halt.store, "close", None)
        if close is not None:
            close()


def _commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line.strip())
    loop.call_soon_threadsafe(queue.put_nowait, "quit")


async def main(args: argparse.Namespace) -> None:
    events = EventLog(Path(args.events))
    bot = Bot(args, events)
    try:
        events.write("ready", pid=os.getpid(), **bot.state())
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        loop.add_signal_handler(signal.SIGTERM, queue.put_nowait, "quit")
        threading.Thread(target=_commands, args=(loop, queue), daemon=True).start()
        while True:
            command, _, argument = (await queue.get()).partition(" ")
            if command == "quit":
                break
            if command:
                await bot.handle(command, argument)
    finally:
        with contextlib.suppress(Exception):
            await bot.guard.aclose()
        bot.close()
        events.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", required=True, help="redis://127.0.0.1:PORT/0")
    parser.add_argument("--namespace", default="fleet")
    parser.add_argument("--name", required=True, help="this bot's guard name")
    parser.add_argument("--events", required=True, help="JSON lines file of events")
    parser.add_argument("--approver", action="append", default=[], help="who may resume")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
