"""One event, one line, one level: with structured logs on, a breaker transition, a halt, a
resume and a late fill are one JSON line each (never also the core's plain line); without
them, the core's plain line is there once. The JSON stream holds only JSON (other libraries'
records, the demo's banners); cancelled exits are warnings, one line each; the standard
OpenTelemetry environment variables name the service."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from exitguard import CircuitBreaker, ExitGuard, InsufficientBalance, Position, TradingHalt
from exitguard.telemetry import LogHooks, configure_logging, configure_tracing
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual

ROOT = Path(__file__).resolve().parents[1]
POSITION = Position("pos-1", "SOL", 10.0, 100.0)
#: The core's plain lines for events that structured logging reports.
PLAIN = re.compile(r"^(circuit breaker |TRADING HALTED|trading resumed by |late fill: |"
                   r"reconciliation of )")


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    root, core = logging.getLogger(), logging.getLogger("exitguard")
    saved = (list(root.handlers), root.level, list(core.handlers), core.level, core.propagate)
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = saved[0], saved[1]
    core.handlers[:], core.level, core.propagate = saved[2], saved[3], saved[4]


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _trip_halt_resume_and_late_fill(hooks: Any) -> None:
    halt = TradingHalt(approvers=["alice"])

    async def main() -> None:
        tripping = ExitGuard(
            ScriptedVenue([TxPlan(confirm_error=InsufficientBalance("insufficient funds"))],
                          price=95.0),
            name="bot", hooks=hooks, breaker=CircuitBreaker(1, name="primary"), halt=halt)
        await tripping.exit(POSITION, signal_price=95.0)
        late = ExitGuard(ScriptedVenue([TxPlan(hang=True, lands_after=15.0,
                                               expires_after=100.0)], price=95.0),
                         name="bot", hooks=hooks, deadline=10.0)
        await late.exit(Position("pos-2", "SOL", 1.0, 100.0), signal_price=95.0)
        await late.drain()

    run_virtual(main())
    halt.resume("alice", "venue fixed")


def test_with_structured_logs_each_event_is_one_json_line_at_one_level() -> None:
    stream = io.StringIO()
    configure_logging(json=True, level="INFO", stream=stream)
    _trip_halt_resume_and_late_fill(LogHooks())
    lines = _lines(stream)
    events = [line["event"] for line in lines]
    assert [e for e in events if PLAIN.match(e)] == []  # the core's plain lines: none
    levels = {line["event"]: line["level"] for line in lines}
    for event, level in [("breaker.transition", "error"), ("trading.halted", "critical"),
                         ("trading.resumed", "warning"), ("exit.late_fill", "error")]:
        assert events.count(event) == 1, (event, events)
        assert levels[event] == level
    # The one line says which guard, except the resume, which is the halt's own.
    assert all(line["guard"] == "bot" for line in lines if line["event"] != "trading.resumed")


def test_without_structured_logs_the_core_writes_its_plain_line_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="exitguard"):
        _trip_halt_resume_and_late_fill(None)
    plain = [(r.levelname, r.getMessage()) for r in caplog.records if PLAIN.match(r.getMessage())]
    kinds = [re.sub(r"[:(].*", "", text).strip() for _, text in plain]
    assert kinds.count("circuit breaker primary") == 1
    assert kinds.count("TRADING HALTED") == 1
    assert kinds.count("trading resumed by alice") == 1
    assert kinds.count("late fill") == 1
    levels = dict(zip(kinds, (level for level, _ in plain), strict=True))
    # The same levels as the structured events.
    assert levels["circuit breaker primary"] == "ERROR"
    assert levels["TRADING HALTED"] == "CRITICAL"
    assert levels["late fill"] == "ERROR"


def test_a_guard_without_structured_logs_keeps_its_lines_beside_one_with_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logged, plain = CircuitBreaker(1, name="logged"), CircuitBreaker(1, name="plain")
    failing = TxPlan(confirm_error=InsufficientBalance("insufficient funds"))

    async def main() -> None:
        with_logs = ExitGuard(ScriptedVenue([failing], price=95.0), name="a",
                              hooks=LogHooks(), breaker=logged)
        without = ExitGuard(ScriptedVenue([failing], price=95.0), name="b", breaker=plain)
        await with_logs.exit(POSITION, signal_price=95.0)
        await without.exit(POSITION, signal_price=95.0)

    with structlog.testing.capture_logs() as structured, \
            caplog.at_level(logging.INFO, logger="exitguard"):
        run_virtual(main())
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith("circuit breaker logged") for m in messages)
    assert sum(m.startswith("circuit breaker plain") for m in messages) == 1
    assert [e["breaker"] for e in structured if e["event"] == "breaker.transition"] == [
        "logged"]


def test_other_libraries_records_are_json_in_the_json_stream() -> None:
    logging.getLogger().handlers[:] = []  # a process where nothing else set logging up
    stream = io.StringIO()
    configure_logging(json=True, level="INFO", stream=stream)
    logging.getLogger("opentelemetry.sdk.trace.export").warning(
        "Exception while exporting Span batch.")
    (line,) = _lines(stream)
    assert line["event"] == "Exception while exporting Span batch."
    assert line["level"] == "warning"
    assert line["logger"] == "opentelemetry.sdk.trace.export"


def test_cancelled_exits_are_one_warning_each_and_no_error() -> None:
    stream = io.StringIO()
    configure_logging(json=True, level="INFO", stream=stream)
    hang = TxPlan(hang=True, lands_after=None, expires_after=1000.0)

    async def main() -> None:
        guard = ExitGuard(ScriptedVenue(lambda i: hang, price=95.0), name="bot",
                          hooks=LogHooks(), deadline=30.0)
        exits = [asyncio.create_task(guard.exit(Position(f"pos-{n}", "SOL", 1.0, 100.0),
                                                signal_price=95.0)) for n in range(15)]
        await asyncio.sleep(5.0)
        for task in exits:
            task.cancel()
        await asyncio.gather(*exits, return_exceptions=True)
        await guard.aclose()  # stops the background reconciliation: a shutdown

    run_virtual(main())
    lines = _lines(stream)
    assert [line for line in lines if line["level"] in ("error", "critical")] == []
    finished = [line for line in lines if line["event"] == "exit.finished"]
    assert len(finished) == 15
    assert {(line["level"], line["reason"]) for line in finished} == {("warning", "cancelled")}
    assert not any(PLAIN.match(line["event"]) for line in lines)


@pytest.mark.parametrize(("env", "name", "extra"), [
    ({}, "exitguard", {}),
    ({"OTEL_SERVICE_NAME": "my-bot"}, "my-bot", {}),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod"},
     "from-attrs", {"deployment.environment": "prod"}),
    ({"OTEL_SERVICE_NAME": "my-bot", "OTEL_RESOURCE_ATTRIBUTES": "team=risk"},
     "my-bot", {"team": "risk"}),
])
def test_the_standard_otel_environment_names_the_service(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str, extra: dict[str, str],
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    provider = configure_tracing(None, set_global=False)
    attributes = dict(provider.resource.attributes)
    assert attributes["service.name"] == name
    for key, value in extra.items():
        assert attributes[key] == value
    # An explicit name still wins over the environment.
    named = configure_tracing(None, set_global=False, service_name="explicit")
    assert named.resource.attributes["service.name"] == "explicit"


def test_demo_serve_writes_only_json_and_stops_without_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXITGUARD_PAGER")}
    proc = subprocess.Popen([sys.executable, "-m", "exitguard", "demo", "--serve", "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            cwd=tmp_path, env=env)
    try:
        assert proc.stderr is not None
        for _ in range(20):  # the banner, as a JSON line like every other
            if "metrics on http://127.0.0.1:" in json.loads(proc.stderr.readline())["event"]:
                break
        else:
            raise AssertionError("no banner")
        time.sleep(4.0)  # some exits in flight
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in rest]  # every line is JSON: banners included
    stopping = next(i for i, line in enumerate(lines)
                    if line["event"].startswith("exitguard: stopping"))
    after = lines[stopping + 1:]
    assert [line for line in after if line["level"] in ("error", "critical")] == []
