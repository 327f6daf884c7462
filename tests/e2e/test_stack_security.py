"""The stack needs credentials (issue 21, item 4), checked on the real servers.

Alertmanager 0.25 (Debian) and Prometheus 2.42 run with the flags docker-compose.yml gives
them and the secrets ``exitguard stack secrets`` makes: a silence (which would mute every
exitguard page) is refused without the password, including from a browser page on another
origin; the lifecycle API (``/-/quit``, ``/-/reload``) is off even with the password.
"""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitguard.artefacts import stack_secrets
from tests.support import REPO
from tests.support.secured import (
    Node,
    Secrets,
    alertmanager_cluster,
    request,
    secured_prometheus,
    stack_secrets_dir,
)
from tests.support.servers import (
    ALERTMANAGER_BINARIES,
    free_port,
    require_binary,
    running,
)

EVIL_ORIGIN = "http://evil.example"
AM_CONFIG = "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n"


def _service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())[
        "services"]
    service: dict[str, Any] = services[name]
    return service


def _secret_flag(command: list[str], flag: str) -> str:
    """The secret named by ``--flag=/run/secrets/<name>`` in a compose command."""
    values = [a.split("=", 1)[1] for a in command if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} given {len(values)} times in {command}"
    assert values[0].startswith(stack_secrets.SECRETS_MOUNT + "/"), values[0]
    return Path(values[0]).name


def _silence(created_by: str = "someone") -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "matchers": [{"name": "alertname", "value": "Exitguard.+", "isRegex": True}],
        "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(days=30)).isoformat(),
        "createdBy": created_by, "comment": "mute every exitguard page",
    }


@pytest.fixture
def secrets(tmp_path: Path) -> Secrets:
    return stack_secrets_dir(tmp_path)


@pytest.fixture
def am(tmp_path: Path, secrets: Secrets) -> Iterator[Node]:
    """One Alertmanager with the compose stack's web config (the secret it names)."""
    for name in ("alertmanager", "alertmanager-2"):
        service = _service(name)
        web = _secret_flag(service["command"], "--web.config.file")
        assert web == stack_secrets.ALERTMANAGER_WEB_CONFIG
        assert web in service["secrets"], f"{name} does not mount the {web} secret"
    config = tmp_path / "alertmanager.yml"
    config.write_text(AM_CONFIG)
    with alertmanager_cluster(config, tmp_path, secrets, size=1) as nodes:
        yield nodes[0]


def test_an_unauthenticated_silence_is_refused(am: Node) -> None:
    refused = am.api("POST", "/api/v2/silences", _silence("attacker"), authenticated=False)
    assert refused.status == 401
    wrong = am.api("POST", "/api/v2/silences", _silence("attacker"),
                   credentials=(stack_secrets.USERNAME, "not-the-password"))
    assert wrong.status == 401
    for path in ("/api/v2/silences", "/api/v2/alerts", "/-/ready", "/metrics"):
        assert am.api("GET", path, authenticated=False).status == 401, path
    assert am.silences() == []

    accepted = am.api("POST", "/api/v2/silences", _silence("on-call"))
    assert accepted.status == 200, accepted.body
    silence_id = accepted.json()["silenceID"]
    assert [s["id"] for s in am.silences()] == [silence_id]


def test_a_page_on_another_origin_cannot_create_a_silence(am: Node) -> None:
    """What a web page open in a browser on the host can send to 127.0.0.1:9093."""
    # The CORS preflight a browser sends before a JSON POST: refused, and no
    # Access-Control-Allow-Origin, so the browser never sends the POST itself.
    preflight = am.api("OPTIONS", "/api/v2/silences", authenticated=False, headers={
        "Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    })
    assert preflight.status == 401
    assert "Access-Control-Allow-Origin" not in preflight.headers
    # The "simple" requests a page may send without a preflight: refused too.
    body = yaml.safe_dump(_silence("attacker")).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x"):
        simple = am.api("POST", "/api/v2/silences", body, authenticated=False,
                        content_type=content_type, headers={"Origin": EVIL_ORIGIN})
        assert simple.status == 401, content_type
        # Even with the credentials a browser may have cached for the origin, Alertmanager
        # takes JSON only, which a page on another origin cannot send without a preflight.
        cached = am.api("POST", "/api/v2/silences", body, content_type=content_type,
                        headers={"Origin": EVIL_ORIGIN})
        assert cached.status == 415, (content_type, cached.status, cached.body)
    assert am.silences() == []


def _health(service: str, address: str) -> int:
    """The compose health check of ``service`` run against ``address`` (GNU wget here; the
    images have busybox's, whose error line also carries "401 Unauthorized")."""
    require_binary("wget")
    test = _service(service)["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    port = "9090" if service == "prometheus" else "9093"
    command = test[1].replace(f"127.0.0.1:{port}", address)
    assert command != test[1], test
    return subprocess.run(["sh", "-c", command], timeout=60, check=False).returncode


def test_health_checks_pass_on_a_server_demanding_credentials(am: Node) -> None:
    """No password on a health check's command line (it would show in `ps`): healthy means
    "answers, and asks for credentials"; a server that does not answer is unhealthy."""
    for service in ("alertmanager", "alertmanager-2"):
        assert "password" not in " ".join(_service(service)["healthcheck"]["test"]).lower()
        assert _health(service, am.address) == 0, service
        assert _health(service, f"127.0.0.1:{free_port()}") != 0, service


def test_control_without_the_web_config_anyone_can_silence(tmp_path: Path) -> None:
    """The defect of issue 21 item 4 on the same binary, so the tests above can fail."""
    binary = require_binary(*ALERTMANAGER_BINARIES)
    config = tmp_path / "alertmanager.yml"
    config.write_text(AM_CONFIG)
    port = free_port()
    argv = [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    url = f"http://127.0.0.1:{port}"
    with running("open-alertmanager", argv, ready_url=f"{url}/-/ready", workdir=tmp_path):
        preflight = request(f"{url}/api/v2/silences", "OPTIONS", headers={
            "Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST"})
        assert preflight.headers.get("Access-Control-Allow-Origin") == "*"
        assert request(f"{url}/api/v2/silences", "POST", body=_silence()).status == 200


def test_prometheus_needs_credentials_and_has_no_lifecycle_api(
    tmp_path: Path, secrets: Secrets
) -> None:
    service = _service("prometheus")
    command: list[str] = service["command"]
    assert "--web.enable-lifecycle" not in command
    web = _secret_flag(command, "--web.config.file")
    assert web == stack_secrets.PROMETHEUS_WEB_CONFIG
    assert web in service["secrets"]
    # The stack's own flags, less those naming container paths (replaced by the helper).
    local = ("--config.file", "--storage.tsdb.path", "--web.config.file",
             "--web.external-url")
    flags = [f for f in command if not f.startswith(local)]
    config = "global:\n  scrape_interval: 1m\n"
    with secured_prometheus(config, tmp_path, secrets, flags=flags) as prom:
        for path in ("/api/v1/query?query=up", "/-/ready", "/metrics", "/graph"):
            assert prom.api("GET", path, authenticated=False).status == 401, path
        for path in ("/-/quit", "/-/reload"):
            assert prom.api("POST", path, authenticated=False).status == 401, path
            # With the password: the lifecycle API is off.
            assert prom.api("POST", path).status == 403, path
        prom.process.assert_running()
        assert prom.query("vector(1)")[0]["value"][1] == "1"
        assert _health("prometheus", prom.url.removeprefix("http://")) == 0


# --- the secrets directory ------------------------------------------------------------------


def test_stack_secrets_are_private_on_the_host_and_readable_in_the_containers(
    tmp_path: Path,
) -> None:
    """Issue 21 item 5: a 0700 directory mounted whole was unreadable by Alertmanager's user
    (nobody), so every page failed. Each file is mounted on its own (compose secrets): the
    directory keeps other host users out, the file's 0644 lets the container user read it."""
    directory = tmp_path / "s"
    written = stack_secrets.write_stack_secrets(directory, rounds=4)
    assert {w.name for w in written} == set(stack_secrets.ALL_FILES)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in stack_secrets.ALL_FILES:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o644, name
    assert stack_secrets.check_permissions(directory) == []
    # Every file the compose stack mounts is made, and nothing else.
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    sources = {Path(s["file"].rsplit("}", 1)[1]).name for s in compose["secrets"].values()}
    assert sources == set(stack_secrets.ALL_FILES)
    assert set(compose["secrets"]) == set(stack_secrets.ALL_FILES)

    passwords = {n: (directory / n).read_text() for n in stack_secrets.PASSWORDS}
    assert len(set(passwords.values())) == len(passwords)
    assert all(len(p) >= 40 and "\n" not in p for p in passwords.values())
    web = yaml.safe_load((directory / stack_secrets.ALERTMANAGER_WEB_CONFIG).read_text())
    hashed = web["basic_auth_users"][stack_secrets.USERNAME]
    assert hashed.startswith("$2b$")
    assert passwords["alertmanager_password"] not in hashed

    # A second run keeps passwords and any webhook URL the user wrote; --rotate replaces.
    (directory / "slack_webhook_url").write_text("https://hooks.example/real")
    stack_secrets.write_stack_secrets(directory, rounds=4)
    assert (directory / "slack_webhook_url").read_text() == "https://hooks.example/real"
    assert all((directory / n).read_text() == p for n, p in passwords.items())
    stack_secrets.write_stack_secrets(directory, rotate=True, rounds=4)
    assert all((directory / n).read_text() != p for n, p in passwords.items())
    assert (directory / "slack_webhook_url").read_text() == "https://hooks.example/real"


def test_check_reports_the_permissions_that_broke_paging(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    stack_secrets.write_stack_secrets(directory, rounds=4)
    (directory / "slack_webhook_url").chmod(0o600)
    directory.chmod(0o755)
    problems = stack_secrets.check_permissions(directory)
    assert any("other users can reach" in p for p in problems), problems
    assert any("slack_webhook_url" in p and "not readable" in p for p in problems), problems


def test_cli_never_prints_a_password(tmp_path: Path) -> None:
    directory = tmp_path / "cli-secrets"
    result = subprocess.run(
        [sys.executable, "-m", "exitguard", "stack", "secrets", str(directory)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in stack_secrets.PASSWORDS:
        assert (directory / name).read_text() not in result.stdout + result.stderr
    assert "EXITGUARD_STACK_SECRETS_DIR=" in result.stdout
    check = subprocess.run(
        [sys.executable, "-m", "exitguard", "stack", "secrets", "--check", str(directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "exitguard", "stack", "secrets", "--check",
         str(tmp_path / "nope")], capture_output=True, text=True, timeout=60, check=False,
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
