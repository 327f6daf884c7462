"""The compose stack's OpenTelemetry Collector and Tempo configs, checked as far as anything
here can check them.

No binary of either exists in any registry these machines reach (PyPI, Debian, npm), and
neither project publishes a machine-readable schema of its configuration for the pinned
versions (otel/opentelemetry-collector-contrib:0.123.0, grafana/tempo:2.7.2). So each file is
validated with jsonschema against a schema transcribed here from those versions' documentation,
for the sections the files use: unknown keys in those sections, wrong types, malformed
durations and host:port endpoints fail; the collector's pipeline references are checked as the
collector checks them at start-up. This is not the collector's or Tempo's own parser: docs/stack.md
says so. (Prometheus and Alertmanager are checked by their own tools: promtool in
tests/e2e/test_stack.py, amtool in tests/alerting/test_alertmanager_config.py.)
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support import REPO

STACK = REPO / "stack"

_DURATION = {"type": "string", "pattern": r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$"}
_ENDPOINT = {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]*:\d{1,5}$"}
_IDS = {"type": "array", "items": {"type": "string", "pattern": r"^[a-z0-9_]+(/[^/\s]+)?$"},
        "uniqueItems": True}


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": list(required)}


#: From the collector's configuration docs (v0.123): the top-level sections, the otlp
#: receiver, the memory_limiter and batch processors, the otlp exporter's endpoint and tls,
#: the health_check extension's endpoint, and service (extensions, pipelines, telemetry).
COLLECTOR_SCHEMA: dict[str, Any] = _closed({
    "receivers": {"type": "object", "properties": {"otlp": _closed({
        "protocols": _closed({
            "grpc": {"type": "object", "properties": {"endpoint": _ENDPOINT}},
            "http": {"type": "object", "properties": {"endpoint": _ENDPOINT}},
        }),
    })}},
    "processors": {"type": "object", "properties": {
        "memory_limiter": _closed({
            "check_interval": _DURATION, "limit_mib": {"type": "integer", "minimum": 1},
            "spike_limit_mib": {"type": "integer", "minimum": 0},
            "limit_percentage": {"type": "integer"}, "spike_limit_percentage": {"type": "integer"},
        }, required=("check_interval",)),
        "batch": _closed({
            "timeout": _DURATION, "send_batch_size": {"type": "integer"},
            "send_batch_max_size": {"type": "integer"}, "metadata_keys": {"type": "array"},
            "metadata_cardinality_limit": {"type": "integer"},
        }),
    }},
    "exporters": {"type": "object", "patternProperties": {r"^otlp(/.+)?$": {
        "type": "object", "required": ["endpoint"],
        "properties": {"endpoint": _ENDPOINT, "tls": _closed({
            "insecure": {"type": "boolean"}, "insecure_skip_verify": {"type": "boolean"},
            "ca_file": {"type": "string"}, "cert_file": {"type": "string"},
            "key_file": {"type": "string"}, "server_name_override": {"type": "string"},
            "min_version": {"type": "string"}, "max_version": {"type": "string"},
        })},
    }}},
    "extensions": {"type": "object", "properties": {
        "health_check": {"type": "object", "properties": {"endpoint": _ENDPOINT,
                                                          "path": {"type": "string"}}},
    }},
    "connectors": {"type": "object"},
    "service": _closed({
        "extensions": _IDS,
        "pipelines": {"type": "object", "minProperties": 1, "additionalProperties": False,
                      "patternProperties": {r"^(traces|metrics|logs)(/[^/\s]+)?$": _closed(
                          {"receivers": _IDS, "processors": _IDS, "exporters": _IDS},
                          required=("receivers", "exporters"))}},
        "telemetry": _closed({
            "logs": {"type": "object"}, "traces": {"type": "object"},
            "resource": {"type": "object"},
            "metrics": _closed({
                "level": {"enum": ["none", "basic", "normal", "detailed"]},
                "readers": {"type": "array", "items": {"type": "object"}},
            }),
        }),
    }, required=("pipelines",)),
}, required=("receivers", "exporters", "service"))

#: From Tempo's configuration docs (v2.7), the blocks the file sets.
TEMPO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "stream_over_http_enabled": {"type": "boolean"},
        "server": {"type": "object", "properties": {
            "http_listen_port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "grpc_listen_port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "log_level": {"enum": ["debug", "info", "warn", "error"]},
        }},
        "usage_report": _closed({"reporting_enabled": {"type": "boolean"}}),
        "distributor": {"type": "object", "properties": {"receivers": {
            "type": "object", "properties": {"otlp": _closed({"protocols": _closed({
                "grpc": {"type": "object", "properties": {"endpoint": _ENDPOINT}},
                "http": {"type": "object", "properties": {"endpoint": _ENDPOINT}},
            })})},
        }}},
        "ingester": {"type": "object", "properties": {"max_block_duration": _DURATION}},
        "compactor": {"type": "object", "properties": {"compaction": {
            "type": "object", "properties": {"block_retention": _DURATION}}}},
        "storage": _closed({"trace": {
            "type": "object", "required": ["backend"],
            "properties": {
                "backend": {"enum": ["local", "s3", "gcs", "azure"]},
                "wal": {"type": "object", "properties": {"path": {"type": "string"}}},
                "local": _closed({"path": {"type": "string"}}),
            },
        }}),
    },
    "required": ["server", "distributor", "storage"],
}


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((STACK / name).read_text())
    return data


def _errors(data: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(data))


def collector_references(config: dict[str, Any]) -> list[str]:
    """What the collector refuses at start-up: a pipeline or service.extensions naming a
    component that is not configured (and, less strictly, one configured but never used)."""
    problems = []
    for pipeline, parts in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in parts.get(kind, []):
                if component not in (config.get(kind) or {}):
                    problems.append(f"pipeline {pipeline}: {kind[:-1]} {component} is not defined")
    for extension in config["service"].get("extensions", []):
        if extension not in (config.get("extensions") or {}):
            problems.append(f"service.extensions: {extension} is not defined")
    used = {c for parts in config["service"]["pipelines"].values()
            for kind in ("receivers", "processors", "exporters") for c in parts.get(kind, [])}
    for kind in ("receivers", "processors", "exporters"):
        problems += [f"{kind[:-1]} {c} is defined but in no pipeline"
                     for c in (config.get(kind) or {}) if c not in used]
    return problems


def test_collector_config_matches_its_documented_schema() -> None:
    config = _load("otel-collector.yml")
    assert _errors(config, COLLECTOR_SCHEMA) == []
    assert collector_references(config) == []


def test_tempo_config_matches_its_documented_schema() -> None:
    assert _errors(_load("tempo.yml"), TEMPO_SCHEMA) == []


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("processors", "batch", "timout"), "2s", "'timout' was unexpected"),
    (("processors", "memory_limiter", "check_interval"), "1 second", "does not match"),
    (("receivers", "otlp", "protocols", "http", "endpoint"), "0.0.0.0", "does not match"),
    (("service", "pipelines", "trace"), {"receivers": ["otlp"], "exporters": ["otlp/tempo"]},
     "'trace' does not match any of the regexes"),
])
def test_the_collector_check_catches_a_typo(path: tuple[str, ...], value: Any,
                                            expected: str) -> None:
    config = copy.deepcopy(_load("otel-collector.yml"))
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = _errors(config, COLLECTOR_SCHEMA)
    assert any(expected in e for e in errors), errors


def test_the_collector_check_catches_a_dangling_pipeline_reference() -> None:
    config = copy.deepcopy(_load("otel-collector.yml"))
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlp/temp"]
    assert "pipeline traces: exporter otlp/temp is not defined" in collector_references(config)


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("storage", "trace", "backend"), "filesystem", "is not one of"),
    (("storage", "trace", "local", "dir"), "/var/tempo", "'dir' was unexpected"),
    (("usage_report", "enabled"), False, "'enabled' was unexpected"),
    (("ingester", "max_block_duration"), "5 minutes", "does not match"),
])
def test_the_tempo_check_catches_a_typo(path: tuple[str, ...], value: Any,
                                        expected: str) -> None:
    config = copy.deepcopy(_load("tempo.yml"))
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = _errors(config, TEMPO_SCHEMA)
    assert any(expected in e for e in errors), errors
