"""Prometheus metrics: every catalogue metric moves as the catalogue says, read back through
a real HTTP scrape of /metrics (serve_metrics on a free port, urllib, the Prometheus and
OpenMetrics parsers). Exits run in virtual time; the scrape is real I/O."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from exitguard import (
    CircuitBreaker,
    ErrorClass,
    ExitGuard,
    ExitOutcome,
    ExitStatus,
    InsufficientBalance,
    NetworkError,
    Position,
    RetryPolicy,
    RpcTimeout,
    TradingHalt,
)
from exitguard import catalogue as cat
from exitguard.events import ExitInfo
from exitguard.faults import FaultSource
from exitguard.hooks import SafeHooks
from exitguard.telemetry import (
    REGISTERED_METRICS,
    MetricsServer,
    PrometheusHooks,
    instrument,
    serve_metrics,
)
from exitguard.testing import FaultyVenue, ScriptedVenue, TxPlan, run_virtual
from tests.support.tracing import in_memory_tracing

POSITION = Position("pos-1", "SOL", 10.0, 100.0)
Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Scrape:
    values: dict[Key, float]
    exemplars: dict[Key, dict[str, str]]

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(server: MetricsServer, *, openmetrics: bool = False) -> Scrape:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    request = urllib.request.Request(server.url, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    families = list(_openmetrics(text) if openmetrics else text_string_to_metric_families(text))
    values: dict[Key, float] = {}
    exemplars: dict[Key, dict[str, str]] = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            values[key] = sample.value
            if getattr(sample, "exemplar", None) is not None:
                exemplars[key] = dict(sample.exemplar.labels)
    return Scrape(values, exemplars)


def _openmetrics(text: str) -> Iterator[Any]:
    """The whole exposition through prometheus_client's strict OpenMetrics parser."""
    yield from openmetrics_families(text)  # type: ignore[no-untyped-call]


def delta(before: Scrape, after: Scrape) -> dict[Key, float]:
    """Every series that moved (``_created`` timestamps left out, and the process-wide trace
    export failures, which an earlier test's exporter thread may still be moving)."""
    moved: dict[Key, float] = {}
    for key, value in after.values.items():
        if key[0].endswith("_created") or key[0] == cat.TRACE_EXPORT_FAILURES.name:
            continue
        change = value - before.values.get(key, 0.0)
        if change:
            moved[key] = change
    return moved


def key(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    running = serve_metrics(port=0, registry=registry)
    try:
        yield running
    finally:
        running.close()


def run_guard(
    venue: ScriptedVenue,
    registry: CollectorRegistry,
    *,
    traces: TracerProvider | None = None,
    body: Callable[[ExitGuard], Any] | None = None,
    **options: Any,
) -> tuple[ExitOutcome, ExitGuard]:
    async def main() -> tuple[ExitOutcome, ExitGuard]:
        guard = ExitGuard(venue, name="bot", **options)
        instrument(guard, registry=registry, logs=False, traces=traces is not None,
                   tracer_provider=traces)
        outcome = await guard.exit(POSITION, signal_price=95.0, reason="stop_loss")
        if body is not None:
            await body(guard)
        await guard.drain()
        return outcome, guard

    return run_virtual(main())


D = cat.EXIT_DURATION.series("count")
A = cat.EXIT_ATTEMPTS.name


def test_first_attempt_success(registry: CollectorRegistry, server: MetricsServer) -> None:
    before = scrape(server)
    provider, exporter = in_memory_tracing()
    outcome, _ = run_guard(ScriptedVenue([TxPlan(price=94.4)], price=95.0), registry,
                           traces=provider)
    assert outcome.status is ExitStatus.CLOSED
    after = scrape(server)
    moved = delta(before, after)
    slippage, amp = cat.EXIT_SLIPPAGE, cat.EXIT_LOSS_AMPLIFICATION
    expected_counts = {
        key(cat.EXITS.name, guard="bot", outcome="closed"): 1,
        key(cat.EXITS_FIRST_ATTEMPT.name, guard="bot"): 1,
        key(A, guard="bot", mode="limit", result="filled"): 1,
        key(D, guard="bot"): 1,
        key(slippage.series("count"), guard="bot"): 1,
        key(amp.series("count"), guard="bot"): 1,
    }
    for series, value in expected_counts.items():
        assert moved.pop(series) == value, series
    assert moved.pop(key(D.replace("_count", "_sum"), guard="bot")) == pytest.approx(
        outcome.elapsed_s)
    # Its _sum is exposed (no negative bucket), so dashboards can show the average.
    assert moved.pop(key(slippage.series("sum"), guard="bot")) == pytest.approx(
        outcome.slippage_bps)
    assert moved.pop(key(amp.series("sum"), guard="bot")) == pytest.approx(5.6 / 5.0)
    buckets = {k: v for k, v in moved.items() if k[0].endswith("_bucket")}
    # 63 bps lands in le=100 and above, 1.12 in le=1.25 and above, the duration in every
    # bucket at or above it.
    assert buckets[key(slippage.series("bucket"), guard="bot", le="100.0")] == 1
    assert key(slippage.series("bucket"), guard="bot", le="50.0") not in buckets
    assert buckets[key(amp.series("bucket"), guard="bot", le="1.25")] == 1
    assert key(amp.series("bucket"), guard="bot", le="1.1") not in buckets
    assert buckets[key(cat.EXIT_DURATION.series("bucket"), guard="bot", le="30.0")] == 1
    assert not [k for k in moved if not k[0].endswith("_bucket")], moved
    assert after.get(cat.EXITS_IN_FLIGHT.name, guard="bot") == 0
    assert after.get(cat.UNRESOLVED_TRANSACTIONS.name, guard="bot") == 0
    assert after.get(cat.EXIT_RETRIES.name, guard="bot", error_class="rpc_timeout") == 0

    # The exit's trace id is the exemplar of the duration bucket it fell in (OpenMetrics).
    om = scrape(server, openmetrics=True)
    exit_span = next(s for s in exporter.get_finished_spans() if s.name == "exitguard.exit")
    trace_id = format(exit_span.context.trace_id, "032x")
    with_exemplar = {k: v for k, v in om.exemplars.items()
                     if k[0] == cat.EXIT_DURATION.series("bucket")}
    assert with_exemplar, "no exemplar on the duration histogram"
    assert {v["trace_id"] for v in with_exemplar.values()} == {trace_id}
    (bucket_key,) = with_exemplar
    assert float(dict(bucket_key[1])["le"]) >= outcome.elapsed_s


def test_an_unsampled_exit_has_no_exemplar(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    # Its trace id would link a bucket to a trace no store has.
    provider, exporter = in_memory_tracing(sampler=ALWAYS_OFF)
    outcome, _ = run_guard(ScriptedVenue([TxPlan(price=94.4)], price=95.0), registry,
                           traces=provider)
    assert outcome.status is ExitStatus.CLOSED
    om = scrape(server, openmetrics=True)
    assert om.get(D, guard="bot") == 1
    assert exporter.get_finished_spans() == ()
    assert not [k for k in om.exemplars if k[0] == cat.EXIT_DURATION.series("bucket")]


def test_timeout_then_reconcile_counts_one_attempt(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    before = scrape(server)
    plan = TxPlan(confirm_after=0.2, confirm_error=RpcTimeout("no answer"), lands_after=0.5)
    outcome, _ = run_guard(ScriptedVenue([plan], price=95.0), registry)
    assert outcome.status is ExitStatus.CLOSED
    assert outcome.attempts == 1
    moved = delta(before, scrape(server))
    assert moved[key(A, guard="bot", mode="limit", result="timeout")] == 1
    assert moved[key(cat.EXITS.name, guard="bot", outcome="closed")] == 1
    assert moved[key(cat.EXITS_FIRST_ATTEMPT.name, guard="bot")] == 1
    assert key(cat.EXITS_RETRIED.name, guard="bot") not in moved
    assert scrape(server).get(cat.UNRESOLVED_TRANSACTIONS.name, guard="bot") == 0


def test_retry_after_timeout(registry: CollectorRegistry, server: MetricsServer) -> None:
    before = scrape(server)
    first = TxPlan(confirm_after=0.1, confirm_error=RpcTimeout("slow"), lands_after=None,
                   expires_after=1.0)
    outcome, _ = run_guard(ScriptedVenue([first, TxPlan()], price=95.0), registry)
    assert outcome.status is ExitStatus.CLOSED
    assert outcome.attempts == 2
    after = scrape(server)
    moved = delta(before, after)
    assert moved[key(A, guard="bot", mode="limit", result="timeout")] == 1
    assert moved[key(A, guard="bot", mode="market", result="filled")] == 1
    assert moved[key(cat.EXIT_RETRIES.name, guard="bot", error_class="rpc_timeout")] == 1
    assert moved[key(cat.EXITS_RETRIED.name, guard="bot")] == 1
    assert moved[key(cat.EXITS.name, guard="bot", outcome="closed")] == 1
    assert key(cat.EXITS_FIRST_ATTEMPT.name, guard="bot") not in moved
    assert key(cat.EXIT_DEADLINE_EXCEEDED.name, guard="bot") not in moved
    assert after.get(cat.UNRESOLVED_TRANSACTIONS.name, guard="bot") == 0


def test_deadline_exceeded_unresolved_then_abandoned(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    before = scrape(server)
    seen: dict[str, float] = {}

    async def look(guard: ExitGuard) -> None:
        # The exit is over, its submission may still land: counted while reconciling.
        now = scrape(server)
        seen["unresolved"] = now.get(cat.UNRESOLVED_TRANSACTIONS.name, guard="bot")
        seen["in_flight"] = now.get(cat.EXITS_IN_FLIGHT.name, guard="bot")
        await asyncio.sleep(1.0)  # reconciliation under way (one cancelled before it starts
        # never reports its submissions: see the report on the core)
        await guard.aclose()  # polling stops; the submission stays tracked (never forgotten)

    hang = TxPlan(hang=True, lands_after=None, expires_after=1e9)
    outcome, _ = run_guard(ScriptedVenue([hang], price=95.0), registry, body=look,
                           deadline=10.0)
    assert outcome.status is ExitStatus.UNRESOLVED
    assert outcome.deadline_exceeded
    assert seen == {"unresolved": 1, "in_flight": 0}
    after = scrape(server)
    moved = delta(before, after)
    assert moved[key(cat.EXITS.name, guard="bot", outcome="unresolved")] == 1
    assert moved[key(cat.EXIT_DEADLINE_EXCEEDED.name, guard="bot")] == 1
    assert moved[key(A, guard="bot", mode="limit", result="timeout")] == 1
    # Closing stops polling but never forgets: it may still land, so it is still counted.
    assert after.get(cat.UNRESOLVED_TRANSACTIONS.name, guard="bot") == 1
    # The 10 s deadline: the whole exit is in the le=10 bucket, not in le=7.5.
    bucket = cat.EXIT_DURATION.series("bucket")
    assert moved[key(bucket, guard="bot", le="10.0")] == 1
    assert key(bucket, guard="bot", le="7.5") not in moved


def test_permanent_error(registry: CollectorRegistry, server: MetricsServer) -> None:
    before = scrape(server)
    plan = TxPlan(confirm_error=InsufficientBalance("insufficient funds"))
    outcome, _ = run_guard(ScriptedVenue([plan], price=95.0), registry)
    assert outcome.status is ExitStatus.FAILED
    moved = delta(before, scrape(server))
    assert moved[key(A, guard="bot", mode="limit", result="rejected")] == 1
    assert moved[key(cat.EXITS.name, guard="bot", outcome="failed")] == 1
    assert not [k for k in moved if k[0] == cat.EXIT_RETRIES.name]
    assert key(cat.EXITS_RETRIED.name, guard="bot") not in moved
    assert key(cat.EXITS_FIRST_ATTEMPT.name, guard="bot") not in moved
    assert key(cat.EXIT_SLIPPAGE.series("count"), guard="bot") not in moved


def test_refused_by_open_breaker_halt_and_resume(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    breaker = CircuitBreaker(1, name="primary", cooldown=60.0)
    halt = TradingHalt(approvers=["alice"])
    before = scrape(server)
    # instrument() starts the breaker and halt series before any exit.
    assert before.values == {}
    refused: list[ExitOutcome] = []
    during: list[Scrape] = []

    async def second(guard: ExitGuard) -> None:
        refused.append(await guard.exit(POSITION, signal_price=95.0))
        during.append(scrape(server))
        halt.resume("alice", "venue fixed")

    plan = TxPlan(confirm_error=InsufficientBalance("insufficient funds"))
    outcome, _guard = run_guard(ScriptedVenue([plan], price=95.0), registry, body=second,
                               breaker=breaker, halt=halt, refuse_when_open=True)
    assert outcome.status is ExitStatus.FAILED
    assert refused[0].status is ExitStatus.REFUSED
    after = scrape(server)
    moved = delta(before, after)
    assert moved[key(cat.EXITS.name, guard="bot", outcome="failed")] == 1
    assert moved[key(cat.EXITS.name, guard="bot", outcome="refused")] == 1
    assert moved[key(cat.BREAKER_TRANSITIONS.name, guard="bot", breaker="primary",
                     to="open")] == 1
    assert moved[key(cat.BREAKER_TRIPS.name, guard="bot", breaker="primary")] == 1
    assert moved[key(cat.TRADING_HALTS.name, guard="bot")] == 1
    assert moved[key(cat.TRADING_RESUMES.name, guard="bot")] == 1
    assert during[0].get(cat.BREAKER_STATE.name, guard="bot", breaker="primary") == 2
    assert during[0].get(cat.TRADING_HALTED.name, guard="bot") == 1
    assert after.get(cat.TRADING_HALTED.name, guard="bot") == 0
    # The refused exit made no attempt: one attempt in all.
    attempts = sum(v for k, v in moved.items() if k[0] == A)
    assert attempts == 1
    assert cat.ALERTS_SENT.name not in {k[0] for k in after.values}


def test_breaker_half_open_and_close(registry: CollectorRegistry, server: MetricsServer) -> None:
    breaker = CircuitBreaker(1, name="primary", cooldown=5.0)

    async def recover(guard: ExitGuard) -> None:
        await asyncio.sleep(6.0)  # past the cool-down: the next exit is a probe
        await guard.exit(Position("pos-2", "SOL", 1.0, 100.0), signal_price=95.0)

    plans = [TxPlan(confirm_error=InsufficientBalance("insufficient funds")), TxPlan()]
    run_guard(ScriptedVenue(plans, price=95.0), registry, body=recover, breaker=breaker)
    after = scrape(server)
    for to in ("open", "half_open", "closed"):
        assert after.get(cat.BREAKER_TRANSITIONS.name, guard="bot", breaker="primary",
                         to=to) == 1
    assert after.get(cat.BREAKER_TRIPS.name, guard="bot", breaker="primary") == 1
    assert after.get(cat.BREAKER_STATE.name, guard="bot", breaker="primary") == 0


def test_late_fill(registry: CollectorRegistry, server: MetricsServer) -> None:
    before = scrape(server)
    # No answer, and it lands after the 10 s deadline: UNRESOLVED, then a late fill.
    plan = TxPlan(hang=True, lands_after=15.0, expires_after=100.0)
    outcome, guard = run_guard(ScriptedVenue([plan], price=95.0), registry, deadline=10.0)
    assert outcome.status is ExitStatus.UNRESOLVED
    assert len(guard.late_fills) == 1
    after = scrape(server)
    moved = delta(before, after)
    assert moved[key(cat.LATE_FILLS.name, guard="bot")] == 1
    assert moved[key(cat.EXITS.name, guard="bot", outcome="unresolved")] == 1
    assert after.get(cat.UNRESOLVED_TRANSACTIONS.name, guard="bot") == 0


def test_in_flight_while_an_exit_runs(registry: CollectorRegistry, server: MetricsServer) -> None:
    seen: list[float] = []

    async def main() -> None:
        guard = ExitGuard(ScriptedVenue([TxPlan(confirm_after=5.0, lands_after=5.0)]),
                          name="bot")
        instrument(guard, registry=registry, logs=False, traces=False)
        task = asyncio.ensure_future(guard.exit(POSITION, signal_price=95.0))
        await asyncio.sleep(1.0)
        seen.append(scrape(server).get(cat.EXITS_IN_FLIGHT.name, guard="bot"))
        await task
        seen.append(scrape(server).get(cat.EXITS_IN_FLIGHT.name, guard="bot"))

    run_virtual(main())
    assert seen == [1, 0]


def test_every_catalogue_metric_is_registered_as_catalogued(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    breaker = CircuitBreaker(3, name="primary")

    async def main() -> None:
        guard = ExitGuard(ScriptedVenue([TxPlan()]), name="bot", breaker=breaker,
                          halt=TradingHalt())
        instrument(guard, registry=registry, logs=False, traces=False)

    run_virtual(main())
    request = urllib.request.Request(server.url)
    with urllib.request.urlopen(request, timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    names = {spec.name for spec in REGISTERED_METRICS}
    assert cat.ALERTS_SENT not in REGISTERED_METRICS
    assert names == {spec.name for spec in cat.ALL_METRICS} - {cat.ALERTS_SENT.name}
    for spec in cat.ALL_METRICS:
        family = families.get(spec.base_name)
        if spec is cat.ALERTS_SENT:
            assert family is None, "the pager owns exitguard_alerts_sent_total"
            continue
        assert family is not None, spec.name
        assert family.type == spec.kind, spec.name
        assert family.documentation == spec.help, spec.name
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        assert samples, f"{spec.name} has no series yet"
        for sample in samples:
            labels = set(sample.labels) - {"le"}
            assert labels == set(spec.all_labels), (spec.name, sample.labels)
            if spec.per_guard:
                assert sample.labels["guard"] == "bot"
        if spec.kind == "histogram":
            bounds = sorted(float(s.labels["le"]) for s in samples if s.name.endswith("_bucket"))
            assert bounds == [*spec.buckets, float("inf")], spec.name
            if spec is cat.EXIT_DURATION:
                assert 30.0 in bounds  # the default deadline
        if spec.kind == "counter":
            assert {s.name for s in samples} == {spec.name}
    # Label values are bounded: every combination exists from the start, at zero.
    assert len([s for s in families[cat.EXIT_ATTEMPTS.base_name].samples
                if s.name == cat.EXIT_ATTEMPTS.name]) == 2 * 6


def test_label_values_never_carry_ids_or_symbols(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    async def main() -> None:
        guard = ExitGuard(ScriptedVenue(price=95.0), name="bot")
        instrument(guard, registry=registry, logs=False, traces=False)
        for i in range(20):
            await guard.exit(Position(f"pos-{i}", f"TOKEN{i}", 1.0, 100.0), signal_price=95.0)

    first = scrape(server)
    run_virtual(main())
    after = scrape(server)
    values = {v for _, labels in after.values for _, v in labels}
    assert not {v for v in values if v.startswith(("pos-", "TOKEN")) or (v.startswith("tx")
                and v[2:].isdigit())}
    allowed = {label for spec in cat.ALL_METRICS for label in spec.all_labels} | {"le"}
    assert {name for _, labels in after.values for name, _ in labels} <= allowed
    assert after.get(cat.EXITS.name, guard="bot", outcome="closed") == 20
    assert first.values == {}


def test_shared_registry_many_guards_and_hooks(registry: CollectorRegistry) -> None:
    one, two = PrometheusHooks(registry), PrometheusHooks(registry)
    assert one._collectors is two._collectors

    async def main() -> None:
        for name in ("a", "b"):
            guard = ExitGuard(ScriptedVenue(price=95.0), name=name, hooks=PrometheusHooks(registry))
            await guard.exit(POSITION, signal_price=95.0)

    run_virtual(main())
    assert registry.get_sample_value(cat.EXITS.name, {"guard": "a", "outcome": "closed"}) == 1
    assert registry.get_sample_value(cat.EXITS.name, {"guard": "b", "outcome": "closed"}) == 1


def test_default_registry_is_the_global_one() -> None:
    from prometheus_client import REGISTRY

    assert PrometheusHooks().registry is REGISTRY


def test_serve_metrics_binds_localhost_and_negotiates_openmetrics(
    registry: CollectorRegistry,
) -> None:
    PrometheusHooks(registry)
    with serve_metrics(port=0, registry=registry) as server:
        assert server.addr == "127.0.0.1"
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        plain = urllib.request.urlopen(server.url, timeout=5)
        assert plain.headers["Content-Type"].startswith("text/plain")
        request = urllib.request.Request(
            server.url, headers={"Accept": "application/openmetrics-text"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().decode().rstrip().endswith("# EOF")
        # Not reachable on another interface of this machine.
        bound = server._httpd.socket.getsockname()[0]
        assert bound == "127.0.0.1"
    with pytest.raises(OSError, match="refused"):  # closed: the port is free again
        urllib.request.urlopen(server.url, timeout=1)


def test_serve_metrics_port_in_use_is_a_clear_oserror(registry: CollectorRegistry) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}") as caught:
            serve_metrics(port=port, registry=registry)
        assert "port" in str(caught.value)
    finally:
        taken.close()
    with pytest.raises(ValueError, match="port"):
        serve_metrics(port=70000, registry=registry)


def test_retry_policy_with_backoff_counts_each_retry(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    from exitguard.errors import OrderNotSent

    before = scrape(server)
    # Definite "not sent" rejections: retried as the same order (a network error at submit
    # would be an unknown outcome, reconciled first).
    plans = [TxPlan(send_error=OrderNotSent("refused")), TxPlan(send_error=OrderNotSent("x")),
             TxPlan()]
    outcome, _ = run_guard(ScriptedVenue(plans, price=95.0), registry,
                           policy=RetryPolicy(max_attempts=3))
    assert outcome.status is ExitStatus.CLOSED
    assert outcome.attempts == 3
    moved = delta(before, scrape(server))
    assert moved[key(cat.EXIT_RETRIES.name, guard="bot", error_class="not_sent")] == 2
    assert moved[key(A, guard="bot", mode="limit", result="send_failed")] == 2
    assert moved[key(cat.EXITS_RETRIED.name, guard="bot")] == 1


class _LookupDown(ScriptedVenue):
    async def lookup(self, submission: Any) -> Any:
        raise ConnectionResetError("rpc down")


class _BrokenPart:
    """A hook that raises at an exit's start, added inside a ``SafeHooks`` (which is
    flattened into the guard's: counted once, like any hook)."""

    def __call__(self, event: Any) -> None:
        if isinstance(event, ExitInfo):
            raise RuntimeError("broken part")


class _BrokenHook:
    def __call__(self, event: Any) -> None:
        if isinstance(event, ExitInfo):
            raise RuntimeError("broken hook")


def test_absorbed_faults_are_counted_once_each_and_scraped(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    def classify(exc: BaseException) -> ErrorClass:
        raise ValueError("classifier bug")

    venue = FaultyVenue([TxPlan(hang=True, lands_after=None, expires_after=1e9),
                         TxPlan(send_error=NetworkError("reset"))], price=95.0,
                        raises={"lookup": ConnectionResetError("rpc down")})

    async def main() -> ExitGuard:
        guard = ExitGuard(venue, name="bot", hooks=_BrokenHook(), classify=classify,
                          background_reconcile_for=30.0)
        instrument(guard, registry=registry, logs=False, traces=False)
        zero = scrape(server)
        for source in FaultSource:  # every component's series exists from the start
            assert key(cat.FAULTS.name, guard="bot", component=source.value) in zero.values
        guard.add_hooks(SafeHooks(_BrokenPart()))
        await guard.exit(POSITION, signal_price=95.0, reason="stop_loss")
        await guard.exit(Position("pos-2", "SOL", 1.0, 100.0), signal_price=95.0)
        await guard.drain()
        return guard

    guard = run_virtual(main())
    after = scrape(server)
    counts = guard.fault_counts
    assert counts[FaultSource.HOOK] == 2 + 2  # each hook raised at each of the two exits
    assert counts[FaultSource.LOOKUP] >= 5  # polled while the first order may still land
    assert counts[FaultSource.CLASSIFIER] >= 1  # the send error of the second exit
    for source, count in counts.items():
        assert after.get(cat.FAULTS.name, guard="bot", component=source.value) == count
    # Process-wide, no guard label.
    assert key(cat.TRACE_EXPORT_FAILURES.name) in after.values
