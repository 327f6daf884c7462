"""Real servers for end-to-end tests: Prometheus, Alertmanager, exitguard processes, and an
HTTP sink standing in for Slack and Discord. Everything binds 127.0.0.1 on a free port and is
torn down when the context exits, even when the test failed.

The one set of server helpers of the test-suite (the alerting tests and the benchmarks use
them too):

* :func:`require_binary` (a binary, or a skip; in CI a missing one fails the run),
  :func:`binary_version`, :func:`run_tool`, :func:`free_port`, :func:`wait_until`;
* :func:`running`: any process, waited for and always stopped;
* :func:`prometheus` and :func:`alertmanager`: the real servers (Debian packages);
* :func:`redis_server` / :class:`RedisServer`: a real redis-server (no persistence), which a
  test may kill and start again on the same port;
* :func:`webhook_sink` / :class:`WebhookSink`: records every POST and answers like Slack
  (``200 ok``) or Discord (``204``), or fails with a chosen status, or hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Literal

import pytest

PROMETHEUS_BINARIES = {"prometheus": "prometheus", "promtool": "prometheus",
                       "prometheus-alertmanager": "prometheus-alertmanager",
                       "alertmanager": "prometheus-alertmanager",
                       "amtool": "prometheus-alertmanager", "docker-compose": "docker-compose",
                       "redis-server": "redis-server"}

#: Debian names it prometheus-alertmanager; upstream's release archive, alertmanager.
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, *alternatives: str) -> str:
    """The path of ``name`` (or else of the first of ``alternatives`` on PATH); in CI (CI=true)
    a missing one fails the run, else the test skips."""
    for candidate in (name, *alternatives):
        path = shutil.which(candidate)
        if path is not None:
            return path
    package = PROMETHEUS_BINARIES.get(name, name)
    names = " / ".join((name, *alternatives))
    message = f"{names} not found: install the Debian package {package} (bash scripts/setup --dev)"
    if in_ci():
        pytest.fail(message + " (CI=true: server binaries are required, never skipped)")
    pytest.skip(message)


def run_tool(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command line tool (promtool, amtool...) to completion, capturing its output."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def binary_version(binary: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` from ``binary --version`` (Prometheus tools print it alike)."""
    result = run_tool(binary, "--version", timeout=30)
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", result.stdout + result.stderr)
    if not match:
        raise RuntimeError(f"cannot read the version of {binary}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def http_post_json(url: str, payload: Any, timeout: float = 5.0) -> bytes:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def assert_running(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def send(self, line: str) -> None:
        """Write ``line`` to the process's stdin (started with ``stdin=subprocess.PIPE``)."""
        self.assert_running()
        stdin: IO[bytes] | None = self.popen.stdin
        if stdin is None:
            raise RuntimeError(f"{self.name} was started without stdin=subprocess.PIPE")
        stdin.write(line.rstrip("\n").encode() + b"\n")
        stdin.flush()


@contextlib.contextmanager
def running(name: str, argv: Sequence[str], *, ready_url: str | None, workdir: Path,
            env: dict[str, str] | None = None, ready_timeout: float = 30.0,
            stdin: int | None = None) -> Iterator[Process]:
    """Start ``argv``; wait for ``ready_url`` to answer 200; always terminate it afterwards.

    ``stdin=subprocess.PIPE`` lets the test talk to it (:meth:`Process.send`).
    """
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            env={**os.environ, **(env or {})}, start_new_session=True, stdin=stdin,
        )
    process = Process(name, popen, log_path)
    try:
        if ready_url is not None:
            def ready() -> bool:
                process.assert_running()
                http_get(ready_url, timeout=1.0)
                return True

            try:
                wait_until(ready, ready_timeout, what=f"{name} at {ready_url}")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{process.log_tail()}") from exc
        yield process
    finally:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)
        if popen.stdin is not None:
            with contextlib.suppress(OSError):
                popen.stdin.close()


@dataclass
class Prometheus:
    url: str
    process: Process

    def query(self, expr: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": expr})
        payload = json.loads(http_get(f"{self.url}/api/v1/query?{query}"))
        if payload.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {payload}")
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        payload = json.loads(http_get(f"{self.url}/api/v1/alerts"))
        alerts: list[dict[str, Any]] = payload["data"]["alerts"]
        return alerts

    def targets_up(self) -> bool:
        payload = json.loads(http_get(f"{self.url}/api/v1/targets"))
        active = payload["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)


@contextlib.contextmanager
def prometheus(config_yaml: str, workdir: Path) -> Iterator[Prometheus]:
    """A real Prometheus (Debian package) with exemplar storage, on a free 127.0.0.1 port."""
    binary = require_binary("prometheus")
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(config_yaml)
    data = Path(tempfile.mkdtemp(prefix="prom-", dir=workdir))
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage",
            "--web.enable-lifecycle"]
    with running("prometheus", argv, ready_url=f"http://127.0.0.1:{port}/-/ready",
                 workdir=workdir) as process:
        yield Prometheus(f"http://127.0.0.1:{port}", process)


@dataclass
class Alertmanager:
    url: str
    process: Process

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as a Prometheus ``alerting`` target."""
        return urllib.parse.urlsplit(self.url).netloc

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Fire ``alerts`` (``labels``, ``annotations``) as Prometheus would (API v2)."""
        http_post_json(f"{self.url}/api/v2/alerts", alerts)

    def alerts(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads(http_get(f"{self.url}/api/v2/alerts"))
        return data


@contextlib.contextmanager
def alertmanager(config_path: Path, workdir: Path,
                 binary: str | None = None) -> Iterator[Alertmanager]:
    """A real Alertmanager (Debian package), clustering off, on a free 127.0.0.1 port."""
    binary = binary or require_binary(*ALERTMANAGER_BINARIES)
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="am-", dir=workdir))
    argv = [binary, f"--config.file={config_path}", f"--storage.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    with running("alertmanager", argv, ready_url=f"http://127.0.0.1:{port}/-/ready",
                 workdir=workdir) as process:
        yield Alertmanager(f"http://127.0.0.1:{port}", process)


class RedisServer:
    """A real ``redis-server`` (Debian package) on 127.0.0.1:``port``, no persistence (``--save
    '' --appendonly no``): a restart comes back empty, as a Redis without persistence does.

    :meth:`kill` (SIGKILL) and :meth:`start` again on the same port let a test take it away
    mid-run; :meth:`stop` (also at the end of :func:`redis_server`) always ends it.
    """

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self, timeout: float = 1.0) -> bool:
        """True if the server answers PING (a raw RESP exchange: no client library needed)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self, timeout: float = 20.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            raise RuntimeError("redis-server is already running")
        self.starts += 1
        log = (self.workdir / f"redis-{self.port}-{self.starts}.log").open("wb")
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]
        with log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing flushed, nothing said to the clients."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port, stopped at the end whatever happened."""
    server = RedisServer(require_binary("redis-server"), workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- the webhook sink -------------------------------------------------------------------------


def flatten_strings(value: Any) -> str:
    """Every string inside a decoded JSON value, one per line (to search a webhook body)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(flatten_strings(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(flatten_strings(v) for v in value)
    return ""


@dataclass
class Received:
    path: str
    body: bytes
    at: float  # time.monotonic() on arrival (CLOCK_MONOTONIC: comparable across processes)
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """All strings of the JSON body (or the raw body when it is not JSON)."""
        try:
            return flatten_strings(self.json())
        except ValueError:
            return self.body.decode("utf-8", "replace")


#: How the sink answers a POST: ``ok`` (as the real service does), ``fail`` (HTTP 500),
#: ``hang`` (holds the request until the sink closes, or 60 s), or an HTTP status code.
Behaviour = Literal["ok", "fail", "hang"] | int


class SinkURL(str):
    """The sink's base URL (``http://127.0.0.1:PORT``); call it to append a path:
    ``sink.url("/slack")``."""

    __slots__ = ()

    def __call__(self, path: str = "") -> str:
        return f"{self}{path}"


def _service(path: str) -> str | None:
    segments = urllib.parse.urlsplit(path).path.split("/")
    return next((s for s in ("slack", "discord") if s in segments), None)


class WebhookSink:
    """A real HTTP server on 127.0.0.1 recording every POST; stands in for Slack and Discord.

    Replies, per path prefix in ``behaviour`` (first match) or else per ``status``:
    ``ok`` / 200 answers what the real service answers (a path with a ``slack`` segment gets
    ``200 ok``, as Slack's webhooks do and apprise requires; ``discord`` gets ``204``; others
    ``200 {"ok": true}``); ``fail`` is a 500; another number is that status; ``hang`` holds
    the request until :meth:`close` (or 60 s). It serves from construction until
    :meth:`close` (or the end of its ``with`` block, or of :func:`webhook_sink`).
    """

    def __init__(self, *, status: int = 200) -> None:
        self.received: list[Received] = []
        self.lock = threading.Condition()  # guards ``received``; notified on every POST
        self.status = status
        self.behaviour: dict[str, Behaviour] = {}
        self._release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                sink._record(Received(self.path, body, time.monotonic(), dict(self.headers)))
                mode = sink.mode_for(self.path)
                if mode == "hang":
                    sink._release.wait(60)
                    return
                if mode == "fail":
                    mode = 500
                if mode == "ok" or mode == 200:
                    service = _service(self.path)
                    if service == "slack":
                        self._reply(200, b"ok", "text/plain")
                    elif service == "discord":
                        self._reply(204, b"")
                    else:
                        self._reply(200, b'{"ok": true}')
                else:
                    status = int(mode)
                    ok = b"true" if 200 <= status < 300 else b"false"
                    self._reply(status, b'{"ok": ' + ok + b"}")

            def _reply(self, status: int, body: bytes,
                       content_type: str = "application/json") -> None:
                self.send_response(status)
                if body:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = SinkURL(f"http://127.0.0.1:{self.port}")
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def mode_for(self, path: str) -> Behaviour:
        for prefix, mode in list(self.behaviour.items()):
            if path.startswith(prefix):
                return mode
        return self.status

    def _record(self, item: Received) -> None:
        with self.lock:
            self.received.append(item)
            self.lock.notify_all()

    def on(self, path: str) -> list[Received]:
        """The POSTs to exactly ``path``."""
        with self.lock:
            return [r for r in self.received if r.path == path]

    def requests(self, prefix: str = "") -> list[Received]:
        """The POSTs to paths starting with ``prefix`` (all of them by default)."""
        with self.lock:
            return [r for r in self.received if r.path.startswith(prefix)]

    def wait_for(self, path: str, timeout: float, predicate: Callable[[Received], bool]
                 = lambda r: True) -> Received:
        """The first POST to exactly ``path`` matching ``predicate``; TimeoutError after
        ``timeout``."""
        found: list[Received] = []

        def check() -> bool:
            found[:] = [r for r in self.on(path) if predicate(r)]
            return bool(found)

        wait_until(check, timeout, interval=0.05, what=f"a POST to {path}")
        return found[0]

    def wait_for_requests(
        self, prefix: str = "", count: int = 1, timeout: float = 10.0,
        where: Callable[[Received], bool] = lambda r: True,
    ) -> list[Received]:
        """The POSTs under ``prefix`` matching ``where``, once there are ``count`` of them
        (woken by each arrival, no polling); fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                found = [r for r in self.received if r.path.startswith(prefix) and where(r)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    break
                self.lock.wait(left)
            seen = sorted({r.path for r in self.received})
        if len(found) < count:
            raise AssertionError(
                f"{prefix or '/'}: {len(found)} matching POST(s) after {timeout}s, wanted"
                f" {count} (paths seen: {seen})"
            )
        return found

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebhookSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def webhook_sink(*, status: int = 200) -> Iterator[WebhookSink]:
    with WebhookSink(status=status) as sink:
        yield sink
