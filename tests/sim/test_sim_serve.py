"""The ``--serve`` demo bot, replayed in virtual time: every catalogue metric moves."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exitguard import catalogue
from exitguard.outcome import ExitStatus
from exitguard.sim.serve import OPERATOR, ServeError, ServeOptions, _pager, build_demo
from exitguard.telemetry import instrument
from exitguard.testing import RecordingHooks
from exitguard.vtime import run_virtual

#: Metrics the replay cannot move: alerts sent need a pager (EXITGUARD_PAGER_URLS; tested
#: in tests/alerting/test_pager.py); trace export failures need a failing trace exporter, and
#: the replay runs without traces (tested in tests/telemetry/test_telemetry_faults.py). The
#: latter is process-wide, so this test used to pass only when a trace export had failed in
#: an earlier test of the same run.
NOT_MOVED_BY_THE_REPLAY = {catalogue.ALERTS_SENT.name, catalogue.TRACE_EXPORT_FAILURES.name}


def _maxima(registry: CollectorRegistry, into: dict[str, float]) -> None:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            base = catalogue.base_metric_name(sample.name)
            into[base] = max(into.get(base, 0.0), sample.value)


@pytest.fixture(scope="module", params=["demo", "simulate"])
def replay(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, float], RecordingHooks]:
    """Six virtual minutes of the demo bot, metrics sampled every virtual second."""
    registry = CollectorRegistry()
    hooks = RecordingHooks()
    options = ServeOptions(mode=request.param, seed=3)
    demo = build_demo(options, halt_dir=tmp_path_factory.mktemp("halt"), hooks=hooks)
    instrument(demo.guard, metrics=True, traces=False, logs=False, registry=registry)
    maxima: dict[str, float] = {}

    async def main() -> None:
        runner = asyncio.get_running_loop().create_task(demo.run())
        for _ in range(360):
            await asyncio.sleep(1.0)
            _maxima(registry, maxima)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        assert demo.guard.reconciling == 0

    run_virtual(main())
    return maxima, hooks


def test_every_catalogue_metric_moves(replay: tuple[dict[str, float], RecordingHooks]) -> None:
    maxima, _ = replay
    still = [m.name for m in catalogue.ALL_METRICS
             if m.name not in NOT_MOVED_BY_THE_REPLAY and not maxima.get(m.name)]
    assert still == []


def test_the_mix_has_every_outcome_and_event(
    replay: tuple[dict[str, float], RecordingHooks],
) -> None:
    _, hooks = replay
    names = collections.Counter(hooks.names())
    outcomes = collections.Counter(
        payload.status for name, payload in hooks.events if name == "exit_finished"
    )
    # Every outcome but REFUSED: a guard refuses only with refuse_when_open=True.
    assert set(outcomes) == set(ExitStatus) - {ExitStatus.REFUSED}
    assert outcomes[ExitStatus.CLOSED] > outcomes[ExitStatus.FAILED]
    for event in ("late_fill", "breaker_transition", "halted", "resumed", "backoff",
                  "retry", "reconciled"):
        assert names[event] > 0, event
    resumes = [payload for name, payload in hooks.events if name == "resumed"]
    assert {record.actor for record in resumes} == {OPERATOR}
    results = {payload.result for name, payload in hooks.events if name == "attempt_finished"}
    assert {"filled", "partial", "timeout", "expired", "rejected", "send_failed"} <= results


def test_entries_stop_while_halted(tmp_path: Path) -> None:
    demo = build_demo(ServeOptions(), halt_dir=tmp_path)
    demo.halt.halt("test")
    demo._open()
    assert not demo.inventory
    demo.halt.resume(OPERATOR, "test")
    demo._open()
    assert len(demo.inventory) == 1


@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_pager_is_attached_only_when_configured(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXITGUARD_PAGER_URLS", raising=False)
    monkeypatch.delenv("EXITGUARD_PAGER_URLS_FILE", raising=False)

    async def main() -> None:
        demo = build_demo(ServeOptions(), halt_dir=tmp_path)
        assert _pager(demo.guard) is None
        assert demo.guard.hooks is None
        monkeypatch.setenv("EXITGUARD_PAGER_URLS", "json://127.0.0.1:9/")
        pager = _pager(demo.guard)
        assert pager is not None
        assert demo.guard.hooks is not None
        assert pager in demo.guard.hooks.hooks
        await pager.aclose()
        monkeypatch.setenv("EXITGUARD_PAGER_URLS", "")
        monkeypatch.setenv("EXITGUARD_PAGER_URLS_FILE", str(tmp_path / "missing"))
        with pytest.raises(ServeError, match="pager"):
            _pager(demo.guard)

    asyncio.run(main())


def test_start_phase_outage_trips_the_breaker_within_seconds(tmp_path: Path) -> None:
    """``demo --serve --start-phase outage`` (``exitguard stack up --outage``): the cycle
    begins with the outage, so a breaker opens in the first virtual seconds."""
    demo = build_demo(ServeOptions(seed=3, start_phase="outage"), halt_dir=tmp_path)
    assert demo.phase.name == "outage"
    opened: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        runner = loop.create_task(demo.run())
        for _ in range(30):
            await asyncio.sleep(1.0)
            if demo.halt.is_halted and not opened:
                opened.append(loop.time())
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    run_virtual(main())
    assert opened, "no breaker opened (so no halt) in 30 s of the outage phase"
    control = build_demo(ServeOptions(seed=3), halt_dir=tmp_path / "control")
    assert control.phase.name == "normal"


def test_an_unknown_start_phase_fails_at_construction() -> None:
    with pytest.raises(ValueError, match=r"^start_phase: unknown demo phase 'outgae'"):
        ServeOptions(start_phase="outgae")


def test_the_clis_phase_choices_are_the_demos_phases() -> None:
    """The CLI lists the phases without importing the simulator: keep the lists equal."""
    from exitguard.cli import demo, stack
    from exitguard.sim.serve import demo_phase_names

    assert demo._PHASES == stack._PHASES == tuple(demo_phase_names())
