"""exitguard.stack.procs: a recorded process is stopped only while it is still that process."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitguard.stack import procs
from exitguard.stack.local import StackState, down, load_state, state_path
from exitguard.stack.procs import ProcessRecord

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[ProcessRecord]:
    record, popen = procs.start("sleeper", SLEEPER, port=1, url="http://127.0.0.1:1",
                                ready_url="http://127.0.0.1:1/", log=tmp_path / "sleeper.log",
                                cwd=tmp_path)
    try:
        yield record
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait(timeout=10)


def test_a_started_process_is_recorded_by_pid_start_time_and_command_line(
    sleeper: ProcessRecord,
) -> None:
    assert sleeper.argv == tuple(SLEEPER)
    assert sleeper.start_time > 0
    assert procs.is_ours(sleeper)
    assert ProcessRecord.from_json(sleeper.to_json()) == sleeper


@pytest.mark.parametrize("change", [
    {"start_time": 1},  # the pid was reused by a process started at another time
    {"argv": ("/usr/bin/something-else",)},  # ... or running another program
])
def test_a_reused_pid_is_never_signalled(sleeper: ProcessRecord, change: dict[str, object]) -> None:
    stale = dataclasses.replace(sleeper, **change)  # type: ignore[arg-type]
    assert not procs.is_ours(stale)
    assert procs.stop(stale) == (f"was not running (pid {sleeper.pid} is now another process:"
                                 " left alone)")
    assert procs.is_ours(sleeper), "the other process must still run"
    assert procs.stop(sleeper) == f"stopped (pid {sleeper.pid})"
    assert not procs.is_ours(sleeper)


def test_down_after_a_crash_reads_the_state_and_stops_only_what_runs(
    sleeper: ProcessRecord, tmp_path: Path,
) -> None:
    """up crashed half-way: its state file lists a live process and one long gone."""
    gone = dataclasses.replace(sleeper, name="gone", start_time=1)
    directory = tmp_path / "stack"
    directory.mkdir()
    state = StackState(directory, (gone, sleeper), directory / "pages.log")
    state_path(directory).write_text(state.to_json())
    assert load_state(directory) == state
    results = dict(down(directory))
    assert results["sleeper"] == f"stopped (pid {sleeper.pid})"
    assert results["gone"].startswith("was not running")
    assert not procs.is_ours(sleeper)
    assert load_state(directory) is None
    assert down(directory) == []


def test_an_unreadable_state_file_is_reported(tmp_path: Path) -> None:
    from exitguard.stack.local import StackError

    state_path(tmp_path).write_text("{not json")
    with pytest.raises(StackError, match=r"state\.json is unreadable"):
        load_state(tmp_path)
