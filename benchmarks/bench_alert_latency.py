"""Alert latency: from a breaker trip to the page, with the real servers.

The stack of tests/e2e/test_alerting_e2e.py (tests/support/alerting.py: alerting_stack): a real
exitguard process (tests/support/e2e_bot.py: an ExitGuard over a ScriptedVenue, telemetry metrics on
/metrics, the apprise Pager), a real Prometheus scraping it and evaluating
alerts/exitguard.rules.yml every second, a real Alertmanager with the project's generated
config and ``RouteTimings.fast()`` (group_wait 0s), and a local HTTP sink standing in for
Slack and Discord (Alertmanager's receivers, and the pager's real apprise plugins with their
endpoint pointed at it).

Each trip opens the breaker of another guard (bench-1, bench-2...), so each is a new page for
the pager's rate limit and a new Alertmanager group. Before each trip the benchmark waits a
random 0-1 s, so trips fall at every phase of the 1 s scrape and evaluation cycles. A latency
runs from the moment the breaker opened (``time.monotonic()`` in the bot's first hook) to
the moment the sink had read the page (``time.monotonic()`` in the sink; one machine, one
CLOCK_MONOTONIC):

- in-process: the Pager's page on Slack / on Discord;
- Alertmanager: ExitguardCircuitBreakerTripped on Slack / on Discord (scrape + rule
  evaluation + Prometheus's notifier + Alertmanager's dispatch).

    .venv/bin/python benchmarks/bench_alert_latency.py [--trips 5] [--seed 1] [--no-check]

Targets, on the worst trip: in-process < 1 s, Alertmanager < 5 s. Exits 1 when one is missed
(``--no-check`` to only print); without the server binaries it says so and exits 0 (in CI,
CI=true, it fails).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test helpers import as tests.support

import pytest  # noqa: E402  (for the skip raised by require_binary)
from tests.support.alerting import (  # noqa: E402
    AM_DISCORD,
    AM_SLACK,
    PAGER_DISCORD_BASE,
    PAGER_SLACK_BASE,
    AlertingStack,
    alerting_stack,
)
from tests.support.e2e_bot import venue_of  # noqa: E402
from tests.support.servers import Received  # noqa: E402

ALERT = "ExitguardCircuitBreakerTripped"
PATHS = {
    ("in-process", "slack"): PAGER_SLACK_BASE,
    ("in-process", "discord"): PAGER_DISCORD_BASE,
    ("alertmanager", "slack"): AM_SLACK,
    ("alertmanager", "discord"): AM_DISCORD,
}
TARGETS = {"in-process": 1.0, "alertmanager": 5.0}
WAIT_FOR_PAGE_S = 30.0


def _matcher(path: str, guard: str) -> re.Pattern[str]:
    if path.startswith("/pager/"):
        return re.compile(rf"^guard: {re.escape(guard)}$", re.MULTILINE)
    # The breaker alert is per venue; each guard of the bot has its own venue.
    return re.compile(rf"FIRING {ALERT} venue={re.escape(venue_of(guard))}\b")


def one_trip(stack: AlertingStack, guard: str) -> dict[tuple[str, str], float]:
    tripped_at = stack.trip(guard)
    latencies: dict[tuple[str, str], float] = {}
    for key, path in PATHS.items():
        pattern = _matcher(path, guard)

        def mine(received: Received, pattern: re.Pattern[str] = pattern) -> bool:
            return bool(pattern.search(received.text))

        page = stack.sink.wait_for_requests(path, where=mine, timeout=WAIT_FOR_PAGE_S)[0]
        latencies[key] = page.at - tripped_at
    return latencies


def run(trips: int, seed: int) -> dict[tuple[str, str], list[float]]:
    rng = random.Random(seed)
    guards = [f"bench-{i}" for i in range(1, trips + 1)]
    results: dict[tuple[str, str], list[float]] = {key: [] for key in PATHS}
    with tempfile.TemporaryDirectory(prefix="bench-alert-") as tmp, \
            alerting_stack(Path(tmp), guards) as stack:
        for guard in guards:
            stack.wait_scraped(guard)
        time.sleep(1.0)  # a second sample of the healthy state, for increase()
        for guard in guards:
            time.sleep(rng.uniform(0.0, 1.0))
            for key, value in one_trip(stack, guard).items():
                results[key].append(value)
            print(f"  {guard}: " + ", ".join(
                f"{path} {channel} {results[(path, channel)][-1] * 1000:.0f} ms"
                for path, channel in PATHS), flush=True)
    return results


def report(results: dict[tuple[str, str], list[float]], check: bool) -> bool:
    print()
    print(f"{'path':<14}{'channel':<10}{'median':>10}{'max':>10}{'min':>10}   target")
    ok = True
    for (path, channel), values in results.items():
        median, worst = statistics.median(values), max(values)
        target = TARGETS[path]
        missed = worst >= target
        ok &= not missed
        print(f"{path:<14}{channel:<10}{median * 1000:>8.0f}ms{worst * 1000:>8.0f}ms"
              f"{min(values) * 1000:>8.0f}ms   < {target:.0f} s"
              f"{'  MISSED' if missed and check else ''}")
    return ok or not check


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trips", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-check", action="store_true", help="print, never fail")
    args = parser.parse_args(argv)
    print(f"alert latency: {args.trips} trips, scrape and evaluation every 1 s, group_wait 0s;"
          f" {platform.python_implementation()} {platform.python_version()},"
          f" {os.cpu_count()} CPUs")
    started = time.monotonic()
    try:
        results = run(args.trips, args.seed)
    except pytest.skip.Exception as exc:
        print(f"SKIPPED: {exc.msg}")
        return 0
    ok = report(results, check=not args.no_check)
    print(f"\n{time.monotonic() - started:.0f} s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
