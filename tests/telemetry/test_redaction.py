"""No secret a venue quotes in its errors reaches any output: stdlib logs, structlog JSON and
console lines, spans received by a real OTLP receiver, pages received by a webhook sink.

Each shape is fed through a venue error (the venue's quote and submit raise it) and run
through ExitGuard; the raw secret is first checked to reach the exit's outcome (so the test
can fail), then checked absent from every output.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

import exitguard
from exitguard import ExitGuard, ExitOutcome, ExitStatus, InsufficientBalance, Position
from exitguard.halt import FileHaltStore, HaltRecord, TradingHalt
from exitguard.hooks import Hooks
from exitguard.redaction import MASK, RedactingFilter, get_logger, redact
from exitguard.telemetry import (
    LogHooks,
    TracingHooks,
    configure_logging,
    configure_tracing,
    shutdown_tracing,
)
from exitguard.testing import RecordingHooks, ScriptedVenue, TxPlan, run_virtual
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.servers import WebhookSink, webhook_sink


@dataclass(frozen=True)
class Shape:
    name: str
    text: str
    secret: str
    kept: str  # what must survive, so the text still says what failed


SHAPES = (
    Shape("bearer header", "POST /order 401: Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.SiG7xQ",
          "eyJhbGciOiJIUzI1NiJ9.e30.SiG7xQ", "Authorization: Bearer ***"),
    Shape("basic header", "proxy said 407 (Authorization: Basic dXNlcjpzM2NyM3RwYXNz)",
          "dXNlcjpzM2NyM3RwYXNz", "Basic ***"),
    Shape("bare bearer", "upstream rejected bearer Tk_8fj2kLmQ9zX41 for this route",
          "Tk_8fj2kLmQ9zX41", "bearer ***"),
    Shape("alchemy /v2/<key>",
          "HTTPError 429 for https://eth-mainnet.g.alchemy.com/v2/AlChEmYkEy0123456789abcdefXYZ",
          "AlChEmYkEy0123456789abcdefXYZ", "alchemy.com/v2/***"),
    Shape("infura /v3/<project-id>",
          "timed out: https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161 (read)",
          "9aa3d95b3bc440fa88ea12eaa4456161", "infura.io/v3/***"),
    Shape("quicknode path token",
          "503 from https://solemn-pine.solana-mainnet.quiknode.pro/7d1c9e2f4b6a80c3d5e7f9a1b3c5d7e9/",
          "7d1c9e2f4b6a80c3d5e7f9a1b3c5d7e9", "quiknode.pro/***/"),
    Shape("helius ?api-key=",
          "connection reset by https://mainnet.helius-rpc.com/?api-key=4f1a2b3c-dead-beef-9876-0a1b2c3d4e5f",
          "4f1a2b3c-dead-beef-9876-0a1b2c3d4e5f", "?api-key=***"),
    Shape("json apiKey", 'venue answered 403 to {"apiKey": "AKIAZ9Y8X7W6V5U4", "side": "sell"}',
          "AKIAZ9Y8X7W6V5U4", '"apiKey": "***"'),
    Shape("private_key=", "signer failed: private_key=5Kb8kLf9zgWQnogidDA76MzPL6TsZZY36hW",
          "5Kb8kLf9zgWQnogidDA76MzPL6TsZZY36hW", "private_key=***"),
    Shape("api_secret=", "HMAC mismatch api_secret=qW3rTy7uI9oP nonce=12", "qW3rTy7uI9oP",
          "api_secret=***"),
    Shape("client_secret=", "oauth refresh failed client_secret=Cl13ntS3cr3tV4lu3",
          "Cl13ntS3cr3tV4lu3", "client_secret=***"),
    Shape("passphrase=", "exchange login passphrase=Horse-Battery-Staple-9 refused",
          "Horse-Battery-Staple-9", "passphrase=***"),
    Shape("secret=", "bad request secret=Sx7Hq2Lp9Zw4", "Sx7Hq2Lp9Zw4", "secret=***"),
    Shape("token=", "ws handshake token=tOk3nV4lu3Qq1 rejected", "tOk3nV4lu3Qq1", "token=***"),
    Shape("password=", "db refused password=Hunter2Hunter2!", "Hunter2Hunter2!", "password=***"),
    Shape("/v2/<key> in a bare path", "POST /v2/AbCdEf0123456789XyZ returned 401",
          "AbCdEf0123456789XyZ", "POST /v2/*** returned 401"),
    Shape("user:password@ in a URL",
          "cannot reach wss://trader:PaSsW0rdInUrl@rpc.example.com/ws", "PaSsW0rdInUrl",
          "wss://***@rpc.example.com/ws"),
)
IDS = [shape.name for shape in SHAPES]
POSITION = Position("pos-r", "SOL", 10.0, 100.0)


# --- the function -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_each_shape_is_masked_and_the_rest_kept(shape: Shape) -> None:
    assert shape.secret in shape.text
    clean = redact(shape.text)
    assert shape.secret not in clean
    assert shape.kept in clean, clean


@pytest.mark.parametrize("text", [
    "tx 5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjK expired",
    "signal_price=101.5 max_tokens=5 attempt=2",
    "Basic authentication failed",
    "KeyError: 'position_id'",
    "https://api.mainnet-beta.solana.com/ returned 503",
    "blockhash not found",
    "GET /v2/accounts/balance returned 401",
    "POST /v1/traces failed",
])
def test_what_is_not_a_secret_is_left_alone(text: str) -> None:
    """Transaction ids, numbers and plain words an operator needs stay readable."""
    assert redact(text) == text


def test_shapes_mixed_in_one_text_are_all_masked() -> None:
    """Every pair of shapes, in both orders, in one text: a rule that masks one (and so moves
    the text) must not make another miss its secret."""
    for first in SHAPES:
        for second in SHAPES:
            clean = redact(f"{first.text}; then {second.text}", None)
            assert first.secret not in clean, (first.name, second.name, clean)
            assert second.secret not in clean, (first.name, second.name, clean)


def test_redaction_runs_before_truncation() -> None:
    """A secret straddling the length bound is masked whole, not cut into a readable half."""
    secret = "Zq8Wm3Kx7Pv2Ln5Rt9"
    text = "x" * 490 + f" api_key={secret} and more"
    assert text.index(secret) < 500 < text.index(secret) + len(secret)
    clean = redact(text)
    assert clean.endswith("...")
    assert len(clean) <= 503
    assert secret[:4] not in clean
    unbounded = redact("y " * 10_000 + f"token={secret}", None)
    assert secret not in unbounded
    assert unbounded.endswith(f"token={MASK}")


def test_multi_line_json_and_keypair_arrays_and_pem() -> None:
    text = ('{\n  "secretKey": [12, 200, 7],\n  "client_secret" : "abc def"\n}\n'
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----")
    clean = redact(text, None)
    for secret in ("12, 200, 7", "abc def", "MIIEvQIBADANBgkq"):
        assert secret not in clean
    assert '"secretKey": [***]' in clean
    assert '"client_secret" : "***"' in clean


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_each_shape_is_masked_inside_json_written_as_json(shape: Shape) -> None:
    """A halt file, a JSON log line or a CLI's --json output quotes the error as a JSON
    string: its quotes are escaped (``{\\"apiKey\\": \\"...\\"}``) and still masked."""
    import json as json_module

    once = json_module.dumps({"reason": shape.text})
    twice = json_module.dumps({"line": once})
    for text in (once, twice):
        assert shape.secret in text
        assert shape.secret not in redact(text, None), text


# --- the logging filter -------------------------------------------------------------------------


def test_every_exitguard_logger_carries_the_filter() -> None:
    """A filter sees only its own logger's records: each exitguard.* logger must carry it."""
    for module in pkgutil.walk_packages(exitguard.__path__, "exitguard."):
        if module.name.endswith("__main__"):
            continue
        importlib.import_module(module.name)
    # The package protected the core's loggers at import; the subpackages' use get_logger.
    loggers = logging.root.manager.loggerDict
    names = [n for n, logger in loggers.items()  # (a PlaceHolder is a parent never made)
             if (n == "exitguard" or n.startswith("exitguard."))
             and isinstance(logger, logging.Logger)]
    assert "exitguard.guard" in names
    assert "exitguard.halt" in names
    for name in names:
        logger = logging.getLogger(name)
        assert any(isinstance(f, RedactingFilter) for f in logger.filters), name


def test_the_filter_redacts_message_arguments_and_tracebacks() -> None:
    logger = get_logger("exitguard.test_redaction")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        logger.warning("quote failed (%s)", "https://x.io/v2/K3yInAPath0123456789")
        try:
            raise RuntimeError("boom password=TracebackSecret1")
        except RuntimeError:
            logger.exception("unexpected")
        logger.info({"event": "a structlog dict is left alone"})
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "K3yInAPath0123456789" not in out
    assert "TracebackSecret1" not in out
    assert "x.io/v2/***" in out
    assert "password=***" in out
    assert "RuntimeError" in out


# --- through ExitGuard into every output -------------------------------------------------------


@pytest.fixture
def clean_logging() -> Iterator[None]:
    root, core = logging.getLogger(), logging.getLogger("exitguard")
    saved = (list(root.handlers), root.level, list(core.handlers), core.level, core.propagate)
    yield
    structlog.reset_defaults()
    root.handlers[:], root.level = saved[0], saved[1]
    core.handlers[:], core.level, core.propagate = saved[2], saved[3], saved[4]


def failing_exit(text: str, hooks: list[Hooks],
                 halt: TradingHalt | None = None) -> tuple[ExitOutcome, list[str]]:
    """One exit against a venue whose quote and submit both fail with ``text``; its outcome
    and the error texts its attempts reported to the hooks (raw). With ``halt``, the bot
    then halts trading quoting the venue's error (untrusted text in the halt's reason)."""
    venue = ScriptedVenue([TxPlan(send_error=InsufficientBalance(text))],
                          price_error=RuntimeError(text))
    recorder = RecordingHooks()

    async def main() -> tuple[ExitOutcome, list[str]]:
        guard = ExitGuard(venue, name="bot", hooks=[*hooks, recorder], halt=halt)
        outcome = await guard.exit(POSITION, signal_price=95.0, reason="stop_loss")
        await guard.drain()
        errors = [report.error for name, report in recorder.events
                  if name == "attempt_finished" and report.error]
        if halt is not None:
            halt.halt(f"venue error: {errors[0]}", actor="bot")
        return outcome, errors

    return run_virtual(main())


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.usefixtures("clean_logging")
def test_a_venue_error_reaches_no_output(
    shape: Shape, sink: WebhookSink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each shape, raised by a venue, through ExitGuard with every output attached: JSON and
    console logs (exitguard's events and the core's records), spans received by a real OTLP
    receiver, pages (JSON and apprise's Discord plugin) received by a real HTTP sink, and the
    CLI showing the halt whose reason quotes the error."""
    from apprise.plugins.discord import NotifyDiscord
    from prometheus_client import CollectorRegistry

    from exitguard.alerting.pager import Pager
    from exitguard.cli import main as cli

    monkeypatch.setattr(NotifyDiscord, "notify_url", sink.url("/discord"))
    host = sink.url().partition("://")[2]
    pager = Pager([f"json://{host}/pages", "discord://112233445566778899/ShapesDiscordTok3n"],
                  registry=CollectorRegistry(), min_interval=0)
    receiver = OtlpReceiver()
    halt_files = {run: tmp_path / f"halt-{run}.json" for run in ("json", "console")}
    outputs: dict[str, str] = {}
    try:
        provider = configure_tracing(receiver.endpoint, set_global=False, schedule_delay=0.05)
        for json_logs in (True, False):
            stream, plain = io.StringIO(), io.StringIO()
            configure_logging(json=json_logs, level="DEBUG", stream=stream)
            core = logging.getLogger("exitguard")
            handler = logging.StreamHandler(plain)
            handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
            core.addHandler(handler)
            run = "json" if json_logs else "console"
            halt = TradingHalt(["alice"], store=FileHaltStore(halt_files[run]), name="bot")
            try:
                outcome, errors = failing_exit(
                    shape.text,
                    [LogHooks(routine_level="debug"), TracingHooks(provider), pager], halt)
            finally:
                core.removeHandler(handler)
            assert outcome.status is not ExitStatus.CLOSED
            assert any(shape.secret in error for error in errors)  # it did reach the hooks
            outputs[f"{run} logs"] = stream.getvalue()
            outputs[f"stdlib logs ({run} run)"] = plain.getvalue()
        assert shutdown_tracing(provider, timeout=10)
        spans = receiver.wait_for(lambda spans: len(spans) >= 4)
        asyncio.run(pager.drain())
        pages = (sink.wait_for_requests("/pages", count=2)
                 + sink.wait_for_requests("/discord", count=2))
    finally:
        receiver.close()
        pager.close(timeout=2)
    capsys.readouterr()
    for halt_file in halt_files.values():
        # The halt stores its reason redacted (the file is read by people and the CLI).
        assert shape.secret not in halt_file.read_text()
        assert cli(["halt", "status", "--file", str(halt_file)]) in (0, 1)
        assert cli(["halt", "status", "--json", "--file", str(halt_file)]) in (0, 1)
    shown = capsys.readouterr()
    outputs["spans"] = repr(spans)
    outputs["pages"] = "\n".join(page.body.decode() for page in pages)
    outputs["cli"] = shown.out + shown.err

    assert "price quote failed" in outputs["stdlib logs (json run)"]  # the core did log it
    for run in ("json", "console"):
        assert "exit.finished" in outputs[f"{run} logs"]
        assert "trading.halted" in outputs[f"{run} logs"]
    assert any(s.status_message for s in spans)
    assert "venue error: " in outputs["pages"]
    assert "venue error: " in outputs["cli"]
    for where, text in outputs.items():
        assert shape.secret not in text, f"{shape.name}: the secret is in the {where}"
    assert shape.kept in outputs["spans"] or MASK in outputs["spans"]


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with webhook_sink() as server:
        yield server


def test_a_page_carries_no_secret(sink: WebhookSink) -> None:
    from prometheus_client import CollectorRegistry

    from exitguard.alerting.pager import Pager

    reason = " ".join(shape.text for shape in SHAPES)
    host = sink.url().partition("://")[2]
    pager = Pager([f"json://{host}/pages"], registry=CollectorRegistry())
    try:
        pager.halted("bot", HaltRecord(halted=True, reason=reason,
                                       actor="token=ActorTok3n99", at=1_700_000_000.0))
        asyncio.run(pager.drain())
        body = sink.wait_for_requests("/pages")[0].body.decode()
    finally:
        pager.close(timeout=2)
    assert "trading halted" in body
    for secret in [shape.secret for shape in SHAPES] + ["ActorTok3n99"]:
        assert secret not in body, secret


def test_the_otlp_exporters_own_log_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """The OpenTelemetry SDK logs a failed export with the collector's URL, whose query may
    carry a key: its logger gets the same filter."""
    from tests.support.servers import free_port

    secret = "OtlpQu3ryK3y0123456789"
    endpoint = f"http://127.0.0.1:{free_port()}/v1/traces?api_key={secret}"
    caplog.set_level(logging.DEBUG)
    # The timeout leaves room for a retry: the exporter logs the URL before retrying.
    provider = configure_tracing(endpoint, set_global=False, schedule_delay=0.01, timeout=4)
    try:
        failing_exit("collector down", [TracingHooks(provider)])
    finally:
        shutdown_tracing(provider, timeout=10)
    exporter_lines = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]
    assert any("127.0.0.1" in r.getMessage() for r in exporter_lines), (
        "the exporter did not log the URL: the test would prove nothing")
    assert secret not in caplog.text, caplog.text


# --- OTLP endpoint credentials ------------------------------------------------------------------

OTLP_PASSWORD, OTLP_KEY = "OtlpPa55word9", "OtlpQu3ryKey42"


def test_collector_credentials_come_from_the_standard_otel_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT names the collector and OTEL_EXPORTER_OTLP_HEADERS its
    credentials: sent with each export, never on a command line."""
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS",
                           f"authorization=Bearer%20{OTLP_KEY},x-team=risk")
        provider = configure_tracing(None, set_global=False, schedule_delay=0.05)
        try:
            failing_exit("collector test", [TracingHooks(provider)])
        finally:
            assert shutdown_tracing(provider, timeout=10)
        receiver.wait_for(lambda spans: len(spans) >= 1)
        headers = {k.lower(): v for k, v in receiver.headers[0].items()}
    assert headers["authorization"] == f"Bearer {OTLP_KEY}"
    assert headers["x-team"] == "risk"


def test_the_cli_refuses_credentials_in_otlp_endpoint_without_echoing_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from exitguard.cli import main

    for endpoint in (f"http://user:{OTLP_PASSWORD}@127.0.0.1:4318",
                     f"http://127.0.0.1:4318/v1/traces?api_key={OTLP_KEY}"):
        assert main(["demo", "--serve", "--port", "0", "--duration", "0.1",
                     "--otlp-endpoint", endpoint]) == 2
        captured = capsys.readouterr()
        assert "OTEL_EXPORTER_OTLP_HEADERS" in captured.err
        assert len(captured.err.strip().splitlines()) == 1
        for secret in (OTLP_PASSWORD, OTLP_KEY):
            assert secret not in captured.err + captured.out


def test_an_endpoint_with_credentials_from_the_environment_is_never_printed(
    tmp_path: Path,
) -> None:
    """``demo --serve`` with the collector (down) named by OTEL_EXPORTER_OTLP_ENDPOINT with a
    password and a key in it: the banner, exitguard's lines and the OpenTelemetry SDK's and
    urllib3's own retry lines name the collector without them."""
    from tests.support.servers import free_port

    port = free_port()  # nothing listens: every export fails and is retried, and logged
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EXITGUARD_PAGER", "OTEL_"))}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = (
        f"http://trader:{OTLP_PASSWORD}@127.0.0.1:{port}/?api_key={OTLP_KEY}")
    result = subprocess.run(
        [sys.executable, "-m", "exitguard", "demo", "--serve", "--port", "0", "--duration", "8"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    text = result.stdout + result.stderr
    banner = next(line["event"] for line in lines if "--serve: metrics on" in line["event"])
    assert f"traces to http://***@127.0.0.1:{port}/?api_key=***" in banner
    # Not vacuous: the exporter did fail and say so, naming the collector.
    sdk = [line for line in lines if line.get("logger", "").startswith("opentelemetry")]
    assert any(str(port) in line["event"] for line in sdk), sdk
    for secret in (OTLP_PASSWORD, OTLP_KEY):
        assert secret not in text


def test_every_exported_span_is_redacted_the_bots_own_too() -> None:
    """The exporter configure_tracing sets up is the one place spans pass through: a span of
    the bot's (an HTTP client's instrumentation records the full URL) leaves redacted."""
    from opentelemetry.trace import Status, StatusCode

    key, token = "Bo7sUrlK3y0123456789abc", "EventTok3nValue9"
    with OtlpReceiver() as receiver:
        provider = configure_tracing(receiver.endpoint, set_global=False, schedule_delay=0.05)
        tracer = provider.get_tracer("mybot")
        with tracer.start_as_current_span(f"GET https://rpc.example/v2/{key}") as span:
            span.set_attribute("http.url", f"https://rpc.example/v2/{key}?x=1")
            span.set_attribute("http.request.header.authorization", [f"Bearer {token}"])
            span.set_attribute("http.status_code", 401)
            span.add_event("retry", {"detail": f"token={token}"})
            span.set_status(Status(StatusCode.ERROR, f"401 for /v2/{key}"))
        assert shutdown_tracing(provider, timeout=10)
        (received,) = receiver.wait_for(lambda spans: len(spans) >= 1)
    text = repr(received)
    assert key not in text
    assert token not in text
    assert received.attributes["http.url"] == "https://rpc.example/v2/***?x=1"
    assert received.attributes["http.status_code"] == 401
    assert received.status_message == "401 for /v2/***"
    assert received.name == "GET https://rpc.example/v2/***"
