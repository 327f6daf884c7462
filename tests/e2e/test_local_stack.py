"""``exitguard stack up|status|down`` end to end, as a user runs them (separate processes).

``up --fast --outage`` starts the real Prometheus and Alertmanager (Debian packages), the page
receiver and the demo bot in its outage phase; the test waits for a page at the receiver, then
``down`` must leave no process behind: none of the recorded pids, and no process at all whose
command line names the test's state directory. Missing server binaries skip (fail in CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exitguard.stack import procs
from exitguard.stack.local import ALERTMANAGER, BOT, PROMETHEUS, RECEIVER, load_state, pages
from tests.support.servers import ALERTMANAGER_BINARIES, require_binary, wait_until

#: Generous for a loaded 2-core machine: the breaker trips within seconds of the bot starting,
#: then a 1 s scrape, a 1 s evaluation and Alertmanager's immediate first send.
PAGE_WITHIN_S = 120.0


def _exitguard(*args: str, env: dict[str, str] | None = None,
               timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exitguard", *args], capture_output=True,
                          text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def _processes_naming(directory: Path) -> list[tuple[int, str]]:
    """Every live process whose command line contains ``directory``."""
    found = []
    needle = str(directory).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if needle in cmdline and procs.pid_in_use(int(entry.name)):
                found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode()))
    return found


def _kill_leftovers(directory: Path) -> None:
    """Last resort after a failed test: only processes naming this test's own directory."""
    for pid, _ in _processes_naming(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def stack_dir(tmp_path: Path) -> Iterator[Path]:
    require_binary("prometheus")
    require_binary(*ALERTMANAGER_BINARIES)
    directory = tmp_path / "stack"
    try:
        yield directory
    finally:
        _exitguard("stack", "down", "--dir", str(directory))
        _kill_leftovers(directory)


def _outage_page(page: dict[str, Any]) -> bool:
    return "ExitguardCircuitBreakerTripped" in json.dumps(page["body"])


def test_up_pages_within_a_minute_and_down_leaves_nothing(stack_dir: Path) -> None:
    up = _exitguard("stack", "up", "--dir", str(stack_dir), "--fast", "--outage",
                    "--ready-timeout", "120")
    assert up.returncode == 0, up.stdout + up.stderr
    state = load_state(stack_dir)
    assert state is not None
    assert [p.name for p in state.parts] == [RECEIVER, ALERTMANAGER, BOT, PROMETHEUS]
    ports = {p.port for p in state.parts}
    assert len(ports) == 4
    for part in state.parts:
        assert procs.is_ours(part), part
        assert part.url.startswith("http://127.0.0.1:")
        assert part.url in up.stdout, (part.url, up.stdout)  # printed: where to look
    assert str(state.page_log) in up.stdout
    assert "stand-in for Slack and Discord" in up.stdout

    again = _exitguard("stack", "up", "--dir", str(stack_dir))
    assert again.returncode == 2
    assert "already running" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr

    status = _exitguard("stack", "status", "--dir", str(stack_dir))
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("running, answering") == 4, status.stdout

    def paged() -> bool:
        found = [p for p in pages(state.page_log) if _outage_page(p)]
        return {p["service"] for p in found} == {"Slack", "Discord"}

    try:
        wait_until(paged, PAGE_WITHIN_S, interval=0.5, what="the breaker page at the receiver")
    except TimeoutError as exc:
        logs = "\n".join(f"--- {p.name}\n{Path(p.log).read_text()[-2000:]}" for p in state.parts)
        raise AssertionError(f"{exc}\n{logs}") from exc
    text = state.page_log.read_text()
    assert re.search(r"received by the stand-in for (Slack|Discord)", text), text
    assert "ExitguardCircuitBreakerTripped" in text

    down = _exitguard("stack", "down", "--dir", str(stack_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("stopped (pid") == 4, down.stdout
    for part in state.parts:
        assert not procs.is_ours(part), part
    assert _processes_naming(stack_dir) == []
    assert load_state(stack_dir) is None

    after = _exitguard("stack", "status", "--dir", str(stack_dir))
    assert after.returncode == 1
    assert "not running" in after.stdout


def test_down_after_a_crash_stops_the_survivors(stack_dir: Path) -> None:
    """The bot died (killed) while the rest ran on: down stops the others and reports it."""
    up = _exitguard("stack", "up", "--dir", str(stack_dir), "--fast", "--ready-timeout", "120")
    assert up.returncode == 0, up.stdout + up.stderr
    state = load_state(stack_dir)
    assert state is not None
    bot = state.part(BOT)
    assert bot is not None
    os.kill(bot.pid, signal.SIGKILL)
    wait_until(lambda: not procs.is_ours(bot), 30, what="the bot to die")

    status = _exitguard("stack", "status", "--dir", str(stack_dir))
    assert status.returncode == 1
    assert re.search(r"demo bot\s+NOT RUNNING", status.stdout), status.stdout

    down = _exitguard("stack", "down", "--dir", str(stack_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert re.search(r"demo bot\s+was not running", down.stdout), down.stdout
    assert down.stdout.count("stopped (pid") == 3, down.stdout
    assert _processes_naming(stack_dir) == []


def test_up_refuses_when_a_program_is_missing(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _exitguard("stack", "up", "--dir", str(tmp_path / "stack"),
                        env={"PATH": str(empty)}, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert "Debian package prometheus)" in line
    assert "Debian package prometheus-alertmanager" in line
    assert "apt-get install prometheus prometheus-alertmanager" in line
    assert not (tmp_path / "stack" / "state.json").exists()
