"""The stack's servers as docker-compose.yml runs them: behind basic auth, Alertmanagers in a
cluster. Real Debian binaries on 127.0.0.1 free ports, torn down even when a test fails.

* :func:`stack_secrets_dir`: a secrets directory made by ``exitguard stack secrets`` (the real
  bcrypt web configs and passwords the compose stack uses);
* :func:`alertmanager_cluster`: N Alertmanagers with ``--web.config.file`` and gossip between
  them (``--cluster.listen-address`` / ``--cluster.advertise-address`` / ``--cluster.peer``),
  with short gossip and peer timeouts so a test is quick, and readiness polled with credentials
  (every endpoint, ``/-/ready`` included, answers 401 without them);
* :func:`secured_prometheus`: a Prometheus with ``--web.config.file`` and no lifecycle API;
* :func:`request`: one HTTP request that returns the status instead of raising on 4xx.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exitguard.artefacts import stack_secrets
from tests.support.servers import (
    ALERTMANAGER_BINARIES,
    Process,
    free_port,
    require_binary,
    running,
    wait_until,
)

#: Gossip timings for tests (defaults: 200ms gossip, 1m push-pull, 15s peer timeout). The
#: peer timeout is how long the second replica waits for the first one's "sent" record
#: before it pages itself; the tests wait several of them before asserting "no second page".
GOSSIP_INTERVAL = "100ms"
PUSHPULL_INTERVAL = "2s"
PEER_TIMEOUT_S = 6
SETTLE_TIMEOUT = "5s"


@dataclass(frozen=True)
class Secrets:
    directory: Path

    def password(self, name: str) -> str:
        return (self.directory / name).read_text(encoding="utf-8").strip()

    @property
    def alertmanager(self) -> tuple[str, str]:
        return stack_secrets.USERNAME, self.password(stack_secrets.ALERTMANAGER_PASSWORD)

    @property
    def prometheus(self) -> tuple[str, str]:
        return stack_secrets.USERNAME, self.password(stack_secrets.PROMETHEUS_PASSWORD)


def stack_secrets_dir(workdir: Path) -> Secrets:
    """The secrets directory exactly as ``exitguard stack secrets DIR`` makes it."""
    directory = workdir / "stack-secrets"
    stack_secrets.write_stack_secrets(directory)
    return Secrets(directory)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def basic_auth(credentials: tuple[str, str]) -> dict[str, str]:
    token = base64.b64encode(":".join(credentials).encode()).decode()
    return {"Authorization": f"Basic {token}"}


def request(url: str, method: str = "GET", *, body: Any = None,
            credentials: tuple[str, str] | None = None, headers: Mapping[str, str] | None = None,
            content_type: str = "application/json", timeout: float = 10.0) -> Response:
    """One HTTP request; 4xx and 5xx come back as a :class:`Response`, not an exception."""
    data = None
    all_headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers.setdefault("Content-Type", content_type)
    if credentials is not None:
        all_headers.update(basic_auth(credentials))
    req = urllib.request.Request(url, data=data, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return Response(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, dict(exc.headers), exc.read())


@dataclass
class Node:
    """One Alertmanager of a cluster."""

    name: str
    url: str
    gossip: str
    credentials: tuple[str, str]
    process: Process = field(repr=False)

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def api(self, method: str, path: str, body: Any = None, *,
            credentials: tuple[str, str] | None = None, authenticated: bool = True,
            **kwargs: Any) -> Response:
        creds = credentials or (self.credentials if authenticated else None)
        return request(f"{self.url}{path}", method, body=body, credentials=creds, **kwargs)

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        response = self.api("POST", "/api/v2/alerts", alerts)
        assert response.status == 200, (response.status, response.body)

    def alerts(self) -> list[dict[str, Any]]:
        response = self.api("GET", "/api/v2/alerts")
        assert response.status == 200, (response.status, response.body)
        found: list[dict[str, Any]] = response.json()
        return found

    def silences(self) -> list[dict[str, Any]]:
        response = self.api("GET", "/api/v2/silences")
        assert response.status == 200, (response.status, response.body)
        found: list[dict[str, Any]] = response.json()
        return found

    def status(self) -> dict[str, Any]:
        response = self.api("GET", "/api/v2/status")
        assert response.status == 200, (response.status, response.body)
        found: dict[str, Any] = response.json()
        return found

    def kill(self) -> None:
        """SIGKILL: no goodbye to the peers, as when a host dies."""
        if self.process.popen.poll() is None:
            self.process.popen.send_signal(signal.SIGKILL)
            self.process.popen.wait(timeout=10)


@contextlib.contextmanager
def alertmanager_cluster(config: Path, workdir: Path, secrets: Secrets, *, size: int = 2,
                         extra_args: Sequence[str] = ()) -> Iterator[list[Node]]:
    """``size`` real Alertmanagers behind the stack's web config, peered with each other;
    yields once every node is ready and sees all the others."""
    binary = require_binary(*ALERTMANAGER_BINARIES)
    ports = [(free_port(), free_port()) for _ in range(size)]
    gossip = [f"127.0.0.1:{cluster}" for _, cluster in ports]
    web_config = secrets.directory / stack_secrets.ALERTMANAGER_WEB_CONFIG
    with contextlib.ExitStack() as stack:
        nodes: list[Node] = []
        for index, (http_port, _) in enumerate(ports):
            data = Path(tempfile.mkdtemp(prefix=f"am{index}-", dir=workdir))
            argv = [
                binary, f"--config.file={config}", f"--storage.path={data}",
                f"--web.listen-address=127.0.0.1:{http_port}",
                f"--web.config.file={web_config}",
                f"--cluster.listen-address={gossip[index]}",
                f"--cluster.advertise-address={gossip[index]}",
                *(f"--cluster.peer={peer}" for peer in gossip if peer != gossip[index]),
                f"--cluster.gossip-interval={GOSSIP_INTERVAL}",
                f"--cluster.pushpull-interval={PUSHPULL_INTERVAL}",
                f"--cluster.peer-timeout={PEER_TIMEOUT_S}s",
                f"--cluster.settle-timeout={SETTLE_TIMEOUT}",
                *extra_args,
            ]
            process = stack.enter_context(
                running(f"alertmanager-{index}", argv, ready_url=None, workdir=workdir)
            )
            nodes.append(Node(f"alertmanager-{index}", f"http://127.0.0.1:{http_port}",
                              gossip[index], secrets.alertmanager, process))

        def formed() -> bool:
            for node in nodes:
                node.process.assert_running()
                cluster = node.status()["cluster"]
                if cluster["status"] != "ready" or len(cluster.get("peers") or []) != size:
                    return False
            return True

        try:
            wait_until(formed, 60, interval=0.2, what=f"a ready cluster of {size}")
        except TimeoutError as exc:
            logs = "\n".join(f"--- {n.name}\n{n.process.log_tail()}" for n in nodes)
            raise AssertionError(f"{exc}\n{logs}") from exc
        yield nodes


@dataclass
class SecuredPrometheus:
    url: str
    credentials: tuple[str, str]
    process: Process

    def api(self, method: str, path: str, *, authenticated: bool = True) -> Response:
        return request(f"{self.url}{path}", method,
                       credentials=self.credentials if authenticated else None)

    def query(self, expr: str) -> list[dict[str, Any]]:
        from urllib.parse import urlencode

        response = self.api("GET", f"/api/v1/query?{urlencode({'query': expr})}")
        assert response.status == 200, (response.status, response.body)
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result


@contextlib.contextmanager
def secured_prometheus(config_yaml: str, workdir: Path, secrets: Secrets, *,
                       flags: Sequence[str] = ()) -> Iterator[SecuredPrometheus]:
    """A real Prometheus behind the stack's web config; ``flags`` are the stack's own
    (container paths already removed by the caller)."""
    binary = require_binary("prometheus")
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(config_yaml)
    data = Path(tempfile.mkdtemp(prefix="prom-", dir=workdir))
    web_config = secrets.directory / stack_secrets.PROMETHEUS_WEB_CONFIG
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={web_config}",
            *flags]
    with running("prometheus", argv, ready_url=None, workdir=workdir) as process:
        prom = SecuredPrometheus(f"http://127.0.0.1:{port}", secrets.prometheus, process)

        def ready() -> bool:
            process.assert_running()
            return prom.api("GET", "/-/ready").status == 200

        try:
            wait_until(ready, 60, interval=0.2, what="prometheus ready")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{process.log_tail()}") from exc
        yield prom

