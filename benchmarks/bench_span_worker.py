"""Diagnostic: what the BatchSpanProcessor's export thread costs the exit's thread.

Why the full-instrumentation target of bench_overhead is missed. The exits of one traced
guard's hooks are replayed without the guard (so only tracing is measured), with the spans
going to: no processor, a processor that queues them on the same thread (no export thread),
or the SDK's BatchSpanProcessor (an export thread; its exporter drops the batches). Each
replay is run bare, and with one small ``os.write`` to /dev/null per exit, which is what a
JSON log line costs the exit (a system call that releases the GIL).

The difference between "batch + write" and "batch" minus that between "none + write" and
"none" is what a GIL-releasing system call costs when the export thread is alive: the thread
takes the GIL at that moment and the exit's thread waits to get it back. The export thread's
own CPU time per exit is printed beside it.

Then whole exits (the guard, ``instrument(guard)``: metrics, traces, logs rendered to
/dev/null) with the same three span processors, interleaved: what the full set-up of
bench_overhead costs with no export thread at all, and with no span processor at all.

    .venv/bin/python benchmarks/bench_span_worker.py [--exits 3000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from bench_overhead import InstantVenue
from exitguard import ExitGuard, Position
from exitguard.events import ExitEvent, ExitInfo
from exitguard.telemetry import TracingHooks, configure_logging, instrument
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual

Call = ExitEvent


class _Recorder:
    """Records one exit's events, to replay them against other hooks."""

    def __init__(self) -> None:
        self.info: ExitInfo | None = None
        self.calls: list[Call] = []

    def __call__(self, event: object) -> Any:
        if isinstance(event, ExitInfo):
            self.info = event
            return self.calls.append
        return None


class _Dropping(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _SameThreadQueue(SpanProcessor):
    """Holds ended spans like the batch processor does, but never starts a thread."""

    def __init__(self) -> None:
        self.queue: collections.deque[ReadableSpan] = collections.deque()

    def on_end(self, span: ReadableSpan) -> None:
        self.queue.appendleft(span)
        if len(self.queue) >= 512:
            self.queue.clear()


def _one_exit() -> tuple[ExitInfo, list[Call]]:
    recorder = _Recorder()

    async def main() -> None:
        guard = ExitGuard(ScriptedVenue([TxPlan()], price=95.0), hooks=recorder)
        await guard.exit(Position("pos", "SOL", 10.0, 100.0), signal_price=95.0)

    run_virtual(main())
    assert recorder.info is not None
    return recorder.info, recorder.calls


def _provider(processor: str) -> tuple[TracerProvider, BatchSpanProcessor | None]:
    provider = TracerProvider()
    batch = None
    if processor == "batch":
        batch = BatchSpanProcessor(_Dropping(), max_queue_size=1 << 17)
        provider.add_span_processor(batch)
    elif processor == "queue":
        provider.add_span_processor(_SameThreadQueue())
    return provider, batch


def _worker_clock(batch: BatchSpanProcessor | None) -> Callable[[], float]:
    """The export thread's CPU time in seconds (0 without one)."""
    thread = getattr(getattr(batch, "_batch_processor", None), "_worker_thread", None)
    ident = getattr(thread, "ident", None)
    if ident is None:
        return lambda: 0.0
    clock = time.pthread_getcpuclockid(ident)
    return lambda: time.clock_gettime(clock)


def _measure(processor: str, write: bool, exits: int, rounds: int) -> tuple[float, float]:
    """(us per exit, the export thread's CPU us per exit), medians over rounds."""
    info, calls = _one_exit()
    provider, batch = _provider(processor)
    worker_cpu = _worker_clock(batch)
    hooks = TracingHooks(provider)
    fd = os.open(os.devnull, os.O_WRONLY)
    line = b"x" * 300

    def one() -> None:
        observer = hooks(info)
        assert observer is not None
        for event in calls:
            observer(event)
        if write:
            os.write(fd, line)

    for _ in range(300):
        one()
    samples, worker = [], []
    for _ in range(rounds):
        worker_start, start = worker_cpu(), time.perf_counter()
        for _ in range(exits):
            one()
        samples.append((time.perf_counter() - start) / exits * 1e6)
        worker.append((worker_cpu() - worker_start) / exits * 1e6)
    provider.shutdown()
    os.close(fd)
    return statistics.median(samples), statistics.median(worker)


async def _full_exits(processors: Sequence[str], exits: int, rounds: int) -> dict[str, float]:
    """us added per exit by instrument(guard) with each span processor, against bare."""
    positions = [Position(f"pos-{i}", "SOL", 10.0, 100.0) for i in range(exits)]
    guards = {"bare": ExitGuard(InstantVenue(), name="bare")}
    providers = []
    for processor in processors:
        provider, _ = _provider(processor)
        providers.append(provider)
        guard = ExitGuard(InstantVenue(), name=processor)
        instrument(guard, registry=CollectorRegistry(), tracer_provider=provider)
        guards[processor] = guard

    async def per_exit(guard: ExitGuard, batch: list[Position]) -> float:
        start = time.perf_counter()
        for position in batch:
            await guard.exit(position, signal_price=95.0, reason="bench")
        return (time.perf_counter() - start) / len(batch) * 1e6

    for guard in guards.values():
        await per_exit(guard, positions[:300])
    samples: dict[str, list[float]] = {name: [] for name in guards}
    for _ in range(rounds):
        for name, guard in guards.items():
            gc.collect()
            samples[name].append(await per_exit(guard, positions))
    for provider in providers:
        provider.shutdown()
    bare = statistics.median(samples["bare"])
    return {name: statistics.median(values) - bare for name, values in samples.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--exits", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-check", action="store_true",
                        help="accepted for benchmarks/run; this diagnostic checks no target")
    args = parser.parse_args(argv)
    if args.exits < 1 or args.rounds < 1:
        parser.error("--exits and --rounds must be >= 1")
    print(f"tracing one exit's hook calls, replayed; median us/exit over {args.rounds} rounds"
          f" of {args.exits} ({os.cpu_count()} cpus, python {sys.version.split()[0]})")
    print(f"{'span processor':<34} {'bare':>8} {'+ write':>8} {'write costs':>12}"
          f" {'export thread cpu':>18}")
    added = {}
    labels = {"none": "none", "queue": "same-thread queue (no thread)",
              "batch": "BatchSpanProcessor (export thread)"}
    for processor, label in labels.items():
        bare, bare_worker = _measure(processor, False, args.exits, args.rounds)
        written, written_worker = _measure(processor, True, args.exits, args.rounds)
        added[processor] = written - bare
        cpu = (f"{bare_worker:.1f} -> {written_worker:.1f}" if processor == "batch" else "")
        print(f"{label:<34} {bare:>8.1f} {written:>8.1f} {written - bare:>+11.1f} {cpu:>18}")
    print(f"\nper GIL-releasing system call with the export thread alive:"
          f" {added['batch'] - added['none']:+.1f} us")

    print(f"\nwhole exits, instrument(guard) (metrics, traces, logs rendered), us added per"
          f" exit to bare, median of {args.rounds} rounds of {args.exits}:")
    with open(os.devnull, "w") as null:
        configure_logging(json=True, level="INFO", stream=null)
        full = asyncio.run(_full_exits(list(labels), args.exits, args.rounds))
    for processor, label in labels.items():
        print(f"  span processor {label:<34} {full[processor]:>+7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
