"""Instrumentation overhead: microseconds added per exit by metrics, traces and logs.

Single-attempt exits against an instant in-memory venue (every call returns at once), on a
normal asyncio loop, in four set-ups, interleaved round by round so that drift (CPU
frequency, other load) hits them all alike:

- bare: no hooks;
- metrics: Prometheus only (a private registry);
- traces: OpenTelemetry only (BatchSpanProcessor, an exporter that drops the batches);
- full: traces + metrics + logs (structlog JSON rendered to a null stream), as
  ``instrument(guard)`` sets them up: at the default INFO level a clean exit renders one
  line (``exit.finished``); its routine transitions and its filled attempt are DEBUG events;
- full-verbose: the same with every transition and attempt rendered too (``LogHooks(
  routine_level="info")``: five JSON lines per clean exit). Shown for reference, no target;
- full-10%: full, with ``configure_tracing(sample_ratio=0.1)``: one exit in ten is traced
  (the others keep a trace id for their log line). Shown for reference, no target: what
  head sampling buys (see benchmarks/README.md for what it costs).

Prints microseconds per exit (median over rounds), the microseconds each adds to bare,
and the ratios, then checks the targets (metrics <= 15 us, full <= 100 us per exit).

    .venv/bin/python benchmarks/bench_overhead.py [--exits 2000] [--rounds 15]

Exits 1 when a target is missed (``--no-check`` to only print).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from exitguard import ExitGuard, Position
from exitguard.hooks import SafeHooks
from exitguard.telemetry import (
    LogHooks,
    PrometheusHooks,
    TracingHooks,
    configure_logging,
    configure_tracing,
    instrument,
)
from exitguard.venue import ExitOrder, Fill, Lookup, Submission, TxStatus

TARGETS_US = {"metrics": 15.0, "full": 100.0}


class InstantVenue:
    """Every call answers at once: what is left is exitguard's own cost."""

    name = "instant"

    def __init__(self) -> None:
        self._n = 0

    async def price(self, position: Position) -> float:
        return 95.0

    async def submit(self, order: ExitOrder) -> Submission:
        self._n += 1
        return Submission(f"tx{self._n}", order, None)

    async def confirm(self, submission: Submission) -> Fill:
        return Fill(submission.tx_id, submission.order.size, 94.9)

    async def lookup(self, submission: Submission) -> Lookup:
        return Lookup(TxStatus.LANDED, Fill(submission.tx_id, submission.order.size, 94.9))


class DroppingExporter(SpanExporter):
    """Takes the batches and throws them away (a collector that costs nothing)."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


SAMPLE_RATIO = 0.1


def build_guards(
    null: Any,
) -> tuple[dict[str, ExitGuard], list[TracerProvider], DroppingExporter, DroppingExporter]:
    configure_logging(json=True, level="INFO", stream=null)
    exporter = DroppingExporter()
    # What configure_tracing sets up (a BatchSpanProcessor), with a collector that drops.
    # The queue holds a whole round, so no span is dropped: every one is paid for.
    provider = configure_tracing(None, exporter=exporter, set_global=False,
                                 max_queue_size=1 << 17)
    sampled_exporter = DroppingExporter()
    sampled = configure_tracing(None, exporter=sampled_exporter, set_global=False,
                                max_queue_size=1 << 17, sample_ratio=SAMPLE_RATIO)
    guards = {name: ExitGuard(InstantVenue(), name=name)
              for name in ("bare", "metrics", "traces", "full", "full-verbose", "full-10%")}
    instrument(guards["metrics"], traces=False, logs=False, registry=CollectorRegistry())
    instrument(guards["traces"], metrics=False, logs=False, tracer_provider=provider)
    instrument(guards["full"], registry=CollectorRegistry(), tracer_provider=provider)
    guards["full-verbose"].add_hooks(SafeHooks(
        TracingHooks(provider), PrometheusHooks(CollectorRegistry()),
        LogHooks(routine_level="info"),
    ))
    instrument(guards["full-10%"], registry=CollectorRegistry(), tracer_provider=sampled)
    return guards, [provider, sampled], exporter, sampled_exporter


async def run_exits(guard: ExitGuard, positions: list[Position]) -> float:
    """Seconds per exit for ``positions``, one after the other."""
    exit_ = guard.exit
    start = time.perf_counter()
    for position in positions:
        await exit_(position, signal_price=95.0, reason="bench")
    return (time.perf_counter() - start) / len(positions)


async def bench(
    exits: int, rounds: int, warmup: int, null: Any
) -> tuple[dict[str, list[float]], int, int]:
    guards, providers, exporter, sampled_exporter = build_guards(null)
    positions = [Position(f"pos-{i}", "SOL", 10.0, 100.0) for i in range(exits)]
    for guard in guards.values():  # warm caches, label children, the span processor
        await run_exits(guard, positions[:warmup])
    samples: dict[str, list[float]] = {name: [] for name in guards}
    order = list(guards)
    for round_ in range(rounds):
        # Rotate who goes first, so no set-up always follows the same one.
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            gc.collect()
            samples[name].append(await run_exits(guards[name], positions) * 1e6)
    for provider in providers:
        provider.shutdown()
    return samples, exporter.exported, sampled_exporter.exported


def report(samples: dict[str, list[float]], exits: int, rounds: int) -> list[str]:
    bare = statistics.median(samples["bare"])
    lines = [
        f"exitguard instrumentation overhead: {exits} single-attempt exits x {rounds} rounds,"
        " median per set-up",
        f"python {platform.python_version()} on {platform.machine()},"
        f" {os.cpu_count()} cpus, {platform.platform(terse=True)}",
        "",
        f"{'set-up':<12} {'us/exit':>9} {'added us':>9} {'ratio':>7} {'min':>8} {'max':>8}"
        f"  target",
    ]
    failures = []
    for name, values in samples.items():
        median = statistics.median(values)
        added = median - bare
        target = TARGETS_US.get(name)
        verdict = ""
        if target is not None:
            ok = added <= target
            verdict = f"<= {target:g} us {'ok' if ok else 'MISSED'}"
            if not ok:
                failures.append(name)
        lines.append(
            f"{name:<12} {median:>9.1f} {added:>+9.1f} {median / bare:>6.2f}x"
            f" {min(values):>8.1f} {max(values):>8.1f}  {verdict}"
        )
    lines.append("")
    lines.append("targets: " + ("all met" if not failures else "MISSED: " + ", ".join(failures)))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--exits", type=int, default=2000, help="exits per set-up per round")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up exits per set-up")
    parser.add_argument("--no-check", action="store_true", help="never exit 1 on a miss")
    args = parser.parse_args(argv)
    if args.exits < 1 or args.rounds < 1:
        parser.error("--exits and --rounds must be >= 1")
    with open(os.devnull, "w") as null:
        samples, exported, sampled = asyncio.run(
            bench(args.exits, args.rounds, min(args.warmup, args.exits), null))
    lines = report(samples, args.exits, args.rounds)
    traced = sum(1 for name in samples if name not in ("bare", "metrics", "full-10%"))
    spans_per_setup = 2 * (args.exits * args.rounds + min(args.warmup, args.exits))
    print("\n".join(lines[:-1]))
    print(f"spans exported (to the dropping exporter): {exported} of {spans_per_setup * traced};"
          f" full-10%: {sampled} of {spans_per_setup}"
          f" ({sampled / spans_per_setup:.1%}, sample_ratio {SAMPLE_RATIO:g})")
    print(lines[-1])
    missed = lines[-1].startswith("targets: MISSED")
    return 1 if missed and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
