"""Real servers for end-to-end tests: Prometheus, Alertmanager, exitguard processes, and an
HTTP sink standing in for Slack and Discord. Everything binds 127.0.0.1 on a free port and is
torn down when the context exits, even when the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from typing import Any

import pytest

PROMETHEUS_BINARIES = {"prometheus": "prometheus", "promtool": "prometheus",
                       "prometheus-alertmanager": "prometheus-alertmanager",
                       "amtool": "prometheus-alertmanager", "docker-compose": "docker-compose"}


def require_binary(name: str) -> str:
    """The binary's path; in CI (CI=true) a missing one fails the run, else the test skips."""
    path = shutil.which(name)
    if path is not None:
        return path
    package = PROMETHEUS_BINARIES.get(name, name)
    message = f"{name} not found: install the Debian package {package} (bash scripts/setup --dev)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
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


@contextlib.contextmanager
def running(name: str, argv: Sequence[str], *, ready_url: str | None, workdir: Path,
            env: dict[str, str] | None = None, ready_timeout: float = 30.0) -> Iterator[Process]:
    """Start ``argv``; wait for ``ready_url`` to answer 200; always terminate it afterwards."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            env={**os.environ, **(env or {})}, start_new_session=True,
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


@contextlib.contextmanager
def alertmanager(config_path: Path, workdir: Path) -> Iterator[Alertmanager]:
    """A real Alertmanager (Debian package), clustering off, on a free 127.0.0.1 port."""
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="am-", dir=workdir))
    argv = [binary, f"--config.file={config_path}", f"--storage.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    with running("alertmanager", argv, ready_url=f"http://127.0.0.1:{port}/-/ready",
                 workdir=workdir) as process:
        yield Alertmanager(f"http://127.0.0.1:{port}", process)


@dataclass
class Received:
    path: str
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookSink:
    """A real HTTP server recording every POST; stands in for Slack and Discord."""

    url: str
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: int = 200

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, timeout: float, predicate: Callable[[Received], bool]
                 = lambda r: True) -> Received:
        found: list[Received] = []

        def check() -> bool:
            found[:] = [r for r in self.on(path) if predicate(r)]
            return bool(found)

        wait_until(check, timeout, interval=0.05, what=f"a POST to {path}")
        return found[0]


@contextlib.contextmanager
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with sink.lock:
                sink.received.append(Received(self.path, body, time.monotonic()))
            self.send_response(sink.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sink.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
