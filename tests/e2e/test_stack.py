"""The compose stack, checked without a container engine.

``docker-compose config`` validates and resolves docker-compose.yml; promtool checks the
Prometheus configuration; the rest cross-checks the files that must agree with each other
(ports, paths, datasource uids), since nothing here starts the containers themselves.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitguard.artefacts import dashboards as dash
from tests.support import REPO
from tests.support.servers import require_binary

STACK = REPO / "stack"
SERVICES = {"bot", "prometheus", "alertmanager", "grafana", "otel-collector", "tempo"}
STATEFUL = {"prometheus": "/prometheus", "alertmanager": "/alertmanager",
            "grafana": "/var/lib/grafana", "tempo": "/var/tempo"}
SECRET_FILES = ("slack_webhook_url", "discord_webhook_url")


def _compose_env(**overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"GRAFANA_ADMIN_PASSWORD", "EXITGUARD_ALERT_SECRETS_DIR"}
           and not k.startswith("COMPOSE_")}
    env["GRAFANA_ADMIN_PASSWORD"] = "test-only-password"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _compose_config(**env: str | None) -> subprocess.CompletedProcess[str]:
    binary = require_binary("docker-compose")
    return subprocess.run(
        [binary, "-f", "docker-compose.yml", "config"], cwd=REPO, env=_compose_env(**env),
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = _compose_config()
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, from either the short or the long compose syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = str(volume["source"]), str(volume["target"])
        mounts.append((source, target))
    return mounts


def _mount_target(service: dict[str, Any], source: Path) -> str:
    targets = [t for s, t in _mounts(service) if Path(s) == source]
    assert len(targets) == 1, f"{source} is mounted {len(targets)} times"
    return targets[0]


def _published(port: Any) -> tuple[str, str]:
    """(host ip, published port) of a port entry, short or long syntax."""
    if isinstance(port, str):
        match = re.fullmatch(r"(?:(?P<ip>[\d.]+):)?(?P<published>\d+):\d+(?:/\w+)?", port)
        assert match, f"unexpected port syntax {port!r}"
        return match.group("ip") or "", match.group("published")
    return str(port.get("host_ip", "")), str(port.get("published", ""))


def _flag(command: list[str], flag: str) -> str:
    """The value of ``--flag value`` in a command list."""
    return command[command.index(flag) + 1]


def _flag_value(command: list[str], flag: str) -> str:
    """The value of ``--flag=value`` or ``--flag value`` in a command list."""
    for arg in command:
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return _flag(command, flag)


# --- docker-compose config ------------------------------------------------------------------


def test_compose_config_lists_the_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_compose_requires_the_grafana_password() -> None:
    result = _compose_config(GRAFANA_ADMIN_PASSWORD=None)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: image {image!r} has no tag"
        assert "/" not in tag, f"{name}: image {image!r} has no tag"
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image!r} is not a pinned release"


def test_grafana_image_matches_the_dashboard_sdk(compose: dict[str, Any]) -> None:
    """The dashboards are generated for one Grafana version; the stack must run that one."""
    sdk = importlib.metadata.version("grafana-foundation-sdk").split("!")[-1]
    tag = compose["services"]["grafana"]["image"].rpartition(":")[2]
    assert tag.split(".")[:2] == sdk.split(".")[:2], (tag, sdk)


def test_ports_are_published_on_localhost_only(compose: dict[str, Any]) -> None:
    seen = set()
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host_ip, published = _published(port)
            assert host_ip == "127.0.0.1", f"{name}: port {port!r} is open beyond localhost"
            seen.add(published)
    assert {"3000", "9090", "9093", "9464", "3200"} <= seen


def test_every_service_has_a_healthcheck_and_a_restart_policy(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), name
        test = check.get("test")
        assert test, f"{name}: no healthcheck"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck {test!r}"
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, name


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, path in STATEFUL.items():
        sources = [s for s, t in _mounts(compose["services"][name]) if t == path]
        assert sources, f"{name}: nothing mounted at {path}"
        assert sources[0] in named, f"{name}: {path} is not a named volume"


def test_bot_service(compose: dict[str, Any]) -> None:
    bot = compose["services"]["bot"]
    assert Path(bot["build"]["context"]) == REPO
    assert bot["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert bot["command"] == [
        "demo", "--serve", "--bind", "0.0.0.0", "--port", "9464",
        "--otlp-endpoint", "http://otel-collector:4318",
    ]


def test_grafana_service(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "test-only-password"
    provider = _load(REPO / "dashboards/provisioning/dashboards.yml")["providers"][0]
    dashboards_dir = _mount_target(grafana, REPO / "dashboards")
    assert provider["options"]["path"] == dashboards_dir
    assert _mount_target(grafana, REPO / "dashboards/provisioning/dashboards.yml").startswith(
        "/etc/grafana/provisioning/dashboards/"
    )
    assert _mount_target(grafana, STACK / "grafana/datasources.yml").startswith(
        "/etc/grafana/provisioning/datasources/"
    )
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (REPO / "dashboards" / Path(home).name).is_file()


def test_alert_secrets_default_to_placeholders_that_page_nowhere(compose: dict[str, Any]) -> None:
    alertmanager = compose["services"]["alertmanager"]
    placeholders = STACK / "alertmanager-secrets"
    assert _mount_target(alertmanager, placeholders) == "/etc/alertmanager/secrets"
    for name in SECRET_FILES:
        url = (placeholders / name).read_text().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\S*", url), f"{name} must page nowhere"
    assert (placeholders / "README.md").is_file()


def test_alert_secrets_dir_comes_from_the_environment(tmp_path: Path) -> None:
    result = _compose_config(EXITGUARD_ALERT_SECRETS_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    alertmanager = yaml.safe_load(result.stdout)["services"]["alertmanager"]
    assert _mount_target(alertmanager, tmp_path) == "/etc/alertmanager/secrets"


def test_alertmanager_service(compose: dict[str, Any]) -> None:
    alertmanager = compose["services"]["alertmanager"]
    config = _flag_value(alertmanager["command"], "--config.file")
    alerts_dir = _mount_target(alertmanager, REPO / "alerts")
    assert config == f"{alerts_dir}/alertmanager.yml"


# --- prometheus -----------------------------------------------------------------------------


def test_prometheus_service_matches_its_config(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    command = prometheus["command"]
    assert "--enable-feature=exemplar-storage" in command
    config_path = _flag_value(command, "--config.file")
    assert _mount_target(prometheus, STACK / "prometheus.yml") == config_path
    config = _load(STACK / "prometheus.yml")
    rules_target = _mount_target(prometheus, REPO / "alerts/exitguard.rules.yml")
    assert config["rule_files"] == [rules_target]

    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    bot_port = _flag(compose["services"]["bot"]["command"], "--port")
    assert jobs[dash.DEFAULT_JOB]["static_configs"][0]["targets"] == [f"bot:{bot_port}"]
    for job in jobs.values():
        for target in job["static_configs"][0]["targets"]:
            host = target.split(":")[0]
            assert host == "localhost" or host in SERVICES, target


def test_prometheus_finds_a_fleet_in_the_mounted_targets_directory(
    compose: dict[str, Any],
) -> None:
    """A fleet lists its bot processes in stack/targets/*.yml (file_sd); compose mounts that
    directory where the exitguard job reads it, and the example there is a valid file_sd file."""
    prometheus = compose["services"]["prometheus"]
    config = _load(STACK / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == dash.DEFAULT_JOB]
    (files,) = [sd["files"] for sd in job["file_sd_configs"]]
    mounted = _mount_target(prometheus, STACK / "targets")
    assert files == [f"{mounted}/*.yml"]
    example = yaml.safe_load((STACK / "targets" / "fleet.yml.example").read_text())
    assert all(set(group) <= {"targets", "labels"} and group["targets"] for group in example)
    assert not list((STACK / "targets").glob("*.yml")), "the stack ships no fleet targets"


def test_promtool_check_config(tmp_path: Path) -> None:
    """Rule paths in stack/prometheus.yml are container paths: check a copy pointing at the
    repository's rules (or with no rules while alerts/ has none yet)."""
    promtool = require_binary("promtool")
    config = _load(STACK / "prometheus.yml")
    rules = REPO / "alerts/exitguard.rules.yml"
    if rules.is_file():
        config["rule_files"] = [str(rules)]
    else:
        config.pop("rule_files", None)
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(copy)], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# --- grafana, collector, tempo --------------------------------------------------------------


def test_grafana_datasources_link_exemplars_to_traces() -> None:
    sources = {ds["type"]: ds for ds in _load(STACK / "grafana/datasources.yml")["datasources"]}
    prometheus, tempo = sources["prometheus"], sources["tempo"]
    assert prometheus["uid"] == dash.DEFAULT_DATASOURCE_UID
    assert prometheus["url"] == "http://prometheus:9090"
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": tempo["uid"]}.items() <= destinations[0].items()
    tempo_port = _load(STACK / "tempo.yml")["server"]["http_listen_port"]
    assert tempo["url"] == f"http://tempo:{tempo_port}"


def test_collector_receives_otlp_and_exports_to_tempo(compose: dict[str, Any]) -> None:
    collector = _load(STACK / "otel-collector.yml")
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    bot_endpoint = _flag(compose["services"]["bot"]["command"], "--otlp-endpoint")
    assert bot_endpoint == "http://otel-collector:4318"

    pipeline = collector["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    tempo_grpc = _load(STACK / "tempo.yml")["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]
    tempo_port = tempo_grpc["endpoint"].rsplit(":", 1)[1]
    assert tempo_grpc["endpoint"].startswith("0.0.0.0:")
    exporters = [collector["exporters"][name] for name in pipeline["exporters"]]
    assert any(e["endpoint"] == f"tempo:{tempo_port}" for e in exporters)

    service = compose["services"]["otel-collector"]
    config_path = _flag_value(service["command"], "--config")
    assert _mount_target(service, STACK / "otel-collector.yml") == config_path
    assert config_path in service["healthcheck"]["test"][-1]


def test_tempo_stores_locally_in_its_volume(compose: dict[str, Any]) -> None:
    tempo = _load(STACK / "tempo.yml")
    trace = tempo["storage"]["trace"]
    assert trace["backend"] == "local"
    for path in (trace["wal"]["path"], trace["local"]["path"]):
        assert path.startswith(STATEFUL["tempo"] + "/")
    service = compose["services"]["tempo"]
    config_path = _flag_value(service["command"], "-config.file")
    assert _mount_target(service, STACK / "tempo.yml") == config_path


# --- the bot image --------------------------------------------------------------------------


def test_dockerfile() -> None:
    lines = [
        line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert "EXPOSE 9464" in lines
    assert any("pip install ." in line for line in lines)
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in ignored
    assert "!src" in ignored
