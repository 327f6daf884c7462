"""Helpers for the alerting tests and the end-to-end tests.

* :func:`require_tool`: a server binary (promtool, amtool, Alertmanager) or a skip, except in
  CI (``CI=true``), where a missing binary fails the run;
* :class:`WebhookSink`: a real HTTP server on 127.0.0.1 standing in for Slack and Discord;
* :class:`Alertmanager`: a real Alertmanager process on a free local port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "alerts"
RUNBOOKS = REPO / "docs" / "runbooks.md"

ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(*names: str, package: str) -> str:
    """The path of the first of ``names`` on PATH; skip (fail in CI) when none is installed."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = (
        f"{' / '.join(names)} not found on PATH: install the Debian package {package!r}"
        f" (apt-get install {package}) to run this test"
    )
    if in_ci():
        pytest.fail(message + " (CI=true: server binaries are required, never skipped)")
    pytest.skip(message)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def binary_version(binary: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` from ``binary --version`` (Prometheus tools print it alike)."""
    result = run(binary, "--version", timeout=30)
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", result.stdout + result.stderr)
    if not match:
        raise RuntimeError(f"cannot read the version of {binary}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def flatten_strings(value: Any) -> str:
    """Every string inside a decoded JSON value, one per line (to search a webhook body)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(flatten_strings(v) for v in value.values())
    if isinstance(value, list):
        return "\n".join(flatten_strings(v) for v in value)
    return ""


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


# --- webhook sink -----------------------------------------------------------------------------

Behaviour = Literal["ok", "fail", "hang"]


@dataclass(frozen=True)
class Received:
    path: str
    body: bytes
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """All strings of the JSON body (or the raw body when it is not JSON)."""
        try:
            return flatten_strings(self.json())
        except ValueError:
            return self.body.decode("utf-8", "replace")


@dataclass
class WebhookSink:
    """Records every POST; replies per path prefix: ``ok``, ``fail`` (HTTP 500) or ``hang``.

    ``ok`` answers what the real service answers: Slack's webhooks ``200 ok``, anything
    else ``204``. ``hang`` holds the request until :meth:`close` (or 60 s).
    """

    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                sink._record(Received(self.path, body, dict(self.headers), time.monotonic()))
                mode = sink.mode_for(self.path)
                if mode == "hang":
                    sink._release.wait(60)
                    return
                if mode == "fail":
                    self._reply(500, b"boom")
                elif self.path.startswith("/slack"):
                    self._reply(200, b"ok")
                else:
                    self._reply(204, b"")

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def mode_for(self, path: str) -> Behaviour:
        for prefix, mode in self.behaviour.items():
            if path.startswith(prefix):
                return mode
        return "ok"

    def _record(self, item: Received) -> None:
        with self._cond:
            self.received.append(item)
            self._cond.notify_all()

    def requests(self, prefix: str = "") -> list[Received]:
        with self._cond:
            return [r for r in self.received if r.path.startswith(prefix)]

    def wait_for(
        self, prefix: str, count: int = 1, timeout: float = 10.0,
        where: Callable[[Received], bool] = lambda r: True,
    ) -> list[Received]:
        """The matching requests once there are ``count``; fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self.received if r.path.startswith(prefix) and where(r)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    break
                self._cond.wait(left)
        if len(found) < count:
            pytest.fail(f"{prefix}: got {len(found)} matching request(s), wanted {count}")
        return found

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Alertmanager -----------------------------------------------------------------------------


class Alertmanager:
    """A real Alertmanager on 127.0.0.1 (no clustering), stopped by :meth:`stop`."""

    def __init__(self, binary: str, config: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / "alertmanager.log").open("w")
        (workdir / "am-data").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={workdir / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.logfile = workdir / "alertmanager.log"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Alertmanager did not start:\n{self.logfile.read_text()[-3000:]}")

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200, resp.status

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as resp:
            data: list[dict[str, Any]] = json.loads(resp.read())
            return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> Alertmanager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def iter_yaml_files(directory: Path, pattern: str = "*.yml") -> Iterator[Path]:
    yield from sorted(directory.glob(pattern))
