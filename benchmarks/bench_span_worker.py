"""Diagnostic: what the BatchSpanProcessor's export thread costs the exit's thread.

Why the full-instrumentation target of bench_overhead is missed. The exits of one traced
guard's hooks are replayed without the guard (so only tracing is measured), with the spans
going to: no processor, a processor that queues them on the same thread (no export thread),
or the SDK's BatchSpanProcessor (an export thread; its exporter drops the batches). Each
replay is run bare, and with one small ``os.write`` to /dev/null per exit, which is what a
JSON log line costs the exit (a system call that releases the GIL).

The difference between "batch + write" and "batch" minus that between "none + write" and
"none" is what a GIL-releasing system call costs when the export thread is alive: the thread
takes the GIL at that moment and the exit's thread waits to get it back.

    .venv/bin/python benchmarks/bench_span_worker.py [--exits 3000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from exitguard import ExitGuard, Position
from exitguard.hooks import ExitInfo, NoopHooks
from exitguard.telemetry import TracingHooks
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual

Call = tuple[str, tuple[Any, ...]]


class _Recorder(NoopHooks):
    """Records one exit's observer calls, to replay them against other hooks."""

    def __init__(self) -> None:
        self.info: ExitInfo | None = None
        self.calls: list[Call] = []

    def exit_started(self, exit: ExitInfo) -> Any:
        self.info = exit
        calls = self.calls

        class Observer:
            def __getattr__(self, name: str) -> Callable[..., None]:
                return lambda *args: calls.append((name, args))

        return Observer()


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


def _measure(processor: str, write: bool, exits: int, rounds: int) -> float:
    info, calls = _one_exit()
    provider = TracerProvider()
    if processor == "batch":
        provider.add_span_processor(BatchSpanProcessor(_Dropping(), max_queue_size=1 << 16))
    elif processor == "queue":
        provider.add_span_processor(_SameThreadQueue())
    hooks = TracingHooks(provider)
    fd = os.open(os.devnull, os.O_WRONLY)
    line = b"x" * 300

    def one() -> None:
        observer = hooks.exit_started(info)
        for name, args in calls:
            getattr(observer, name)(*args)
        if write:
            os.write(fd, line)

    for _ in range(300):
        one()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(exits):
            one()
        samples.append((time.perf_counter() - start) / exits * 1e6)
    provider.shutdown()
    os.close(fd)
    return statistics.median(samples)


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
    print(f"{'span processor':<34} {'bare':>8} {'+ write':>8} {'write costs':>12}")
    added = {}
    for processor, label in (("none", "none"), ("queue", "same-thread queue (no thread)"),
                             ("batch", "BatchSpanProcessor (export thread)")):
        bare = _measure(processor, False, args.exits, args.rounds)
        written = _measure(processor, True, args.exits, args.rounds)
        added[processor] = written - bare
        print(f"{label:<34} {bare:>8.1f} {written:>8.1f} {written - bare:>+11.1f}")
    print(f"\nper GIL-releasing system call with the export thread alive:"
          f" {added['batch'] - added['none']:+.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
