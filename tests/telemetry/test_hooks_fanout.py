"""One fan-out: a hook is a callable taking one event; a new event needs no change to the
fan-out, the failure accounting or the recording hooks; combined hooks cross one fan-out."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exitguard import ExitGuard, Position
from exitguard.events import (
    AttemptInfo,
    Event,
    ExitInfo,
    LateFill,
    event_name,
)
from exitguard.hooks import SafeHooks, as_safe_hooks
from exitguard.outcome import ExitOutcome
from exitguard.testing import RecordingHooks, ScriptedVenue, TxPlan, run_virtual
from exitguard.venue import Fill

POSITION = Position("pos-1", "SOL", 10.0, 100.0)
INFO = ExitInfo("bot", POSITION, 95.0, "stop_loss", 30.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Paused(Event):
    """An event this test adds, as a later change would: defined, emitted, handled."""

    guard: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Checkpoint(Event):
    """A per-exit event this test adds, delivered to the exit's observers."""

    label: str


def test_a_new_event_reaches_hooks_without_any_change_to_the_fan_out() -> None:
    seen: list[object] = []

    def plain(event: object) -> Any:  # a plain function is a hook
        seen.append(event)
        return seen.append if isinstance(event, ExitInfo) else None

    recording = RecordingHooks()
    hooks = SafeHooks(plain, recording)
    hooks.emit(Paused("bot", 2.5))  # type: ignore[arg-type]  # not in GuardEvent: a new one
    observer = hooks.exit_started(INFO)
    assert observer is not None
    observer.emit(Checkpoint("half"))  # type: ignore[arg-type]
    assert seen == [Paused("bot", 2.5), INFO, Checkpoint("half")]
    # Recorded by the name derived from the type, with the payload derived from the fields.
    assert recording.events == [("paused", 2.5), ("exit_started", INFO), ("checkpoint", "half")]


def test_a_hook_raising_at_a_new_event_is_counted_and_logged_once_by_its_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: object) -> None:
        if isinstance(event, Paused):
            raise RuntimeError("hook bug")

    after: list[object] = []
    hooks = SafeHooks(broken, after.append)
    with caplog.at_level(logging.ERROR, logger="exitguard.hooks"):
        for _ in range(3):
            hooks.emit(Paused("bot", 1.0))  # type: ignore[arg-type]
    assert len(after) == 3  # the next hook saw every event
    assert hooks.failure_counts == {("broken", "paused"): 3}
    assert hooks.failure_total == 3
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "exitguard hook broken.paused raised RuntimeError"]


def test_the_cores_records_are_the_events_and_ending_events_run_in_reverse() -> None:
    order: list[str] = []

    def named(name: str) -> Any:
        def observer(event: object) -> None:
            order.append(f"{name}:{event_name(type(event))}")

        def hook(event: object) -> Any:
            return observer if isinstance(event, ExitInfo) else None

        return hook

    guard = ExitGuard(ScriptedVenue([TxPlan()], price=95.0), name="bot",
                      hooks=[named("traces"), named("metrics")])
    run_virtual(guard.exit(POSITION, signal_price=95.0))
    started = [o for o in order if o.endswith(":attempt_started")]
    finished = [o for o in order if o.endswith(":exit_finished")]
    assert started == ["traces:attempt_started", "metrics:attempt_started"]
    assert finished == ["metrics:exit_finished", "traces:exit_finished"]


def test_combined_hooks_cross_one_fan_out() -> None:
    a, b, c = RecordingHooks(), RecordingHooks(), RecordingHooks()
    inner = SafeHooks(a, b)
    combined = SafeHooks(inner, c)
    assert combined.hooks == (a, b, c)
    assert as_safe_hooks([inner, c]) is not None
    guard = ExitGuard(ScriptedVenue(), hooks=inner)
    guard.add_hooks(SafeHooks(c))
    assert guard.hooks is not None
    assert guard.hooks.hooks == (a, b, c)


def test_the_guards_call_sites_become_events() -> None:
    recording = RecordingHooks()
    hooks = SafeHooks(recording)
    fill = Fill("tx1", 10.0, 94.0)
    hooks.late_fill(INFO, fill)
    observer = hooks.exit_started(INFO)
    assert observer is not None
    attempt = AttemptInfo(1, None, 0, "v")  # type: ignore[arg-type]
    observer.attempt_started(attempt)
    assert recording.events == [("late_fill", fill), ("exit_started", INFO),
                                ("attempt_started", attempt)]
    # And the event a hook receives is one frozen object.
    seen: list[object] = []
    SafeHooks(seen.append).late_fill(INFO, fill)
    assert seen == [LateFill(INFO, fill)]
    with pytest.raises(AttributeError):
        seen[0].fill = None  # type: ignore[attr-defined]


def test_an_outcome_is_delivered_as_the_exit_finished_event() -> None:
    outcomes: list[ExitOutcome] = []

    def hook(event: object) -> Any:
        if isinstance(event, ExitInfo):
            return lambda e: outcomes.append(e) if isinstance(e, ExitOutcome) else None
        return None

    outcome = run_virtual(ExitGuard(ScriptedVenue([TxPlan()], price=95.0), hooks=hook)
                          .exit(POSITION, signal_price=95.0))
    assert outcomes == [outcome]


def test_a_hook_that_is_not_callable_fails_at_construction() -> None:
    class MethodsOnly:  # the old shape: one method per event
        def late_fill(self, exit: object, fill: object) -> None:
            pass

    with pytest.raises(TypeError, match="hooks: MethodsOnly is not callable"):
        ExitGuard(ScriptedVenue(), hooks=MethodsOnly())  # type: ignore[arg-type]


def test_an_observer_that_is_not_callable_is_a_counted_hook_fault() -> None:
    def hook(event: object) -> Any:
        return object() if isinstance(event, ExitInfo) else None

    guard = ExitGuard(ScriptedVenue([TxPlan()], price=95.0), hooks=hook)
    outcome = run_virtual(guard.exit(POSITION, signal_price=95.0))
    assert outcome.ok
    assert guard.hooks is not None
    assert guard.hooks.failure_counts == {("hook", "exit_started"): 1}


def test_the_documented_hook_example_runs() -> None:
    doc = Path(__file__).parents[2] / "docs" / "instrumentation.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    example = next(b for b in blocks if "def audit" in b)
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pos-1 closed"
