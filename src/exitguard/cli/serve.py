"""``--serve`` of ``demo`` and ``simulate``: a live, fully instrumented demo bot.

The options and the runner are shared by both commands (they differ only in the schedule of
fault phases). The simulator's server and telemetry are imported when ``--serve`` is given.
"""

from __future__ import annotations

import argparse

from ._common import CliError, non_empty, otlp_endpoint, port, seconds, wrap

DEFAULT_METRICS_PORT = 9464
DEFAULT_BIND = "127.0.0.1"

_SERVE_ONLY = (("--bind", "bind"), ("--port", "port"), ("--otlp-endpoint", "otlp_endpoint"),
               ("--duration", "duration"))


def add_serve_options(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group(
        "serving (--serve)",
        wrap(f"Run {what} continuously in real time, fully instrumented: /metrics for "
        "Prometheus, traces over OTLP/HTTP, JSON logs on stderr. SIGINT or SIGTERM stops "
        "it cleanly. Pages go out when EXITGUARD_PAGER_URLS or EXITGUARD_PAGER_URLS_FILE is "
        "set."),
    )
    group.add_argument("--serve", action="store_true",
                       help="run continuously in real time and serve metrics and traces")
    group.add_argument("--bind", metavar="ADDR", type=non_empty,
                       help=f"address to serve /metrics on (default {DEFAULT_BIND})")
    group.add_argument("--port", metavar="N", type=port,
                       help=f"port to serve /metrics on (default {DEFAULT_METRICS_PORT}; "
                            "0 picks a free one)")
    group.add_argument("--otlp-endpoint", metavar="URL", type=otlp_endpoint,
                       help="export traces over OTLP/HTTP to URL, e.g. http://127.0.0.1:4318 "
                            "(default: $OTEL_EXPORTER_OTLP_ENDPOINT, else no traces); "
                            "credentials go in $OTEL_EXPORTER_OTLP_HEADERS, never in URL")
    group.add_argument("--duration", metavar="SECONDS", type=seconds,
                       help="stop after SECONDS (default: run until SIGINT or SIGTERM)")


def refuse_serve_only_options(args: argparse.Namespace) -> None:
    """Without ``--serve``, the serving options mean nothing: say so instead of ignoring them."""
    given = [option for option, attr in _SERVE_ONLY if getattr(args, attr, None) is not None]
    if given:
        raise CliError(f"{', '.join(given)} only make sense with --serve")


def refuse_combined(args: argparse.Namespace, *options: tuple[str, object]) -> None:
    """Options of the one-shot command that ``--serve`` cannot honour."""
    for option, value in options:
        if value:
            raise CliError(f"{option} cannot be combined with --serve")


def run_serve(args: argparse.Namespace, mode: str) -> int:
    import asyncio

    try:
        from ..sim.serve import ServeError, ServeOptions, serve
    except ImportError as exc:  # telemetry's dependencies are missing: one line, not a trace
        raise CliError(
            f"--serve needs exitguard.telemetry and its dependencies ({exc}); "
            "install exitguard with its default dependencies"
        ) from None

    options = ServeOptions(
        mode=mode,
        seed=args.seed,
        bind=args.bind or DEFAULT_BIND,
        port=DEFAULT_METRICS_PORT if args.port is None else args.port,
        otlp_endpoint=args.otlp_endpoint,
        duration=args.duration,
        start_phase=getattr(args, "start_phase", None),
    )
    try:
        return asyncio.run(serve(options))
    except ServeError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # e.g. an address that cannot be bound, found late
        raise CliError(f"--serve: {exc.strerror or exc}") from None
