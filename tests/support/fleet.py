"""Bot processes of a fleet (``tests/support/fleet_bot.py``) driven from a test or a
benchmark: start, send a command, wait for its answer, kill with SIGKILL, start again.

Each bot is a real process with its own Redis connections; they share one redis-server
(:class:`tests.support.servers.RedisServer`). Everything is stopped when the ``fleet``
context ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support import REPO

BOT = REPO / "tests" / "support" / "fleet_bot.py"
#: The HMAC key of the fleet's halt chain (tests only).
HALT_KEY = "fleet-test-key-0123456789abcdef"

Event = dict[str, Any]


class FleetBot:
    def __init__(self, name: str, redis_url: str, workdir: Path,
                 approvers: Sequence[str]) -> None:
        self.name = name
        self.redis_url = redis_url
        self.workdir = workdir
        self.approvers = tuple(approvers)
        self.events_path = workdir / f"{name}.jsonl"
        self.log_path = workdir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self._used: set[int] = set()  # events already returned by wait()
        self._start = 0  # events before it belong to an earlier run of the bot

    def start(self, timeout: float = 60.0) -> Event:
        argv = [sys.executable, str(BOT), "--redis", self.redis_url, "--name", self.name,
                "--events", str(self.events_path)]
        for approver in self.approvers:
            argv += ["--approver", approver]
        env = {**os.environ, "EXITGUARD_HALT_KEY": HALT_KEY, "PYTHONPATH": str(REPO)}
        env.pop("EXITGUARD_HALT_KEY_FILE", None)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                          start_new_session=True)
        return self.wait("ready", timeout)

    def events(self) -> list[Event]:
        try:
            lines = self.events_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def wait(self, event: str, timeout: float = 30.0,
             where: Callable[[Event], bool] = lambda e: True) -> Event:
        """The first ``event`` matching ``where`` not returned yet (of this run of the bot)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events()
            for index in range(self._start, len(found)):
                if index not in self._used and found[index]["event"] == event and where(
                    found[index]
                ):
                    self._used.add(index)
                    return found[index]
            if self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n"
                                     f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {event} event after {timeout}s\n"
                                     f"{self.log_tail()}")
            time.sleep(0.01)

    def ask(self, command: str, answer: str, timeout: float = 30.0) -> Event:
        self.send(command)
        return self.wait(answer, timeout)

    def send(self, command: str) -> None:
        assert self.popen is not None
        assert self.popen.stdin is not None
        self.popen.stdin.write(command.encode() + b"\n")
        self.popen.stdin.flush()

    def all(self, event: str) -> list[Event]:
        return [e for e in self.events() if e["event"] == event]

    def kill(self) -> None:
        """SIGKILL: no clean-up, as a crash or the OOM killer."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        self._start = len(self.events())

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def fleet(redis_url: str, workdir: Path, count: int = 3,
          approvers: Sequence[Sequence[str]] | None = None) -> Iterator[list[FleetBot]]:
    """``count`` bots on ``redis_url``, started at once and stopped at the end."""
    lists = approvers or [("alice",)] * count
    bots = [FleetBot(f"bot-{i + 1}", redis_url, workdir, lists[i]) for i in range(count)]
    try:
        for bot in bots:
            bot.start()
        yield bots
    finally:
        for bot in bots:
            bot.stop()
