"""The generated dashboards, type-checked against Grafana's published types (@grafana/schema).

No Grafana server runs here, so the dashboards' JSON is held against the types Grafana
publishes for the version the compose file runs: the whole dashboard as ``Dashboard``, each
panel's options and custom field config as that panel type's ``Options`` and ``FieldConfig``,
by ``tsc --noEmit --strict`` (see tests/support/grafana_types.py). The packages live in
tests/schema/ (``npm ci`` by ``bash scripts/setup --dev``); without them the tests skip, or
fail in CI.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from exitguard.artefacts import dashboards as dash
from tests.support import REPO
from tests.support import grafana_types as gt
from tests.support.servers import in_ci


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    built: dict[str, dict[str, Any]] = dash.build_dashboards()
    return built


@pytest.fixture(scope="module")
def typescript() -> None:
    if not gt.installed():
        message = (f"@grafana/schema and typescript are not installed in {gt.SCHEMA_DIR}:"
                   " run bash scripts/setup --dev (npm ci there)")
        if in_ci():
            pytest.fail(message + " (CI=true: never skipped)")
        pytest.skip(message)


def _check(boards: dict[str, dict[str, Any]], workdir: Path) -> str:
    cleaned = {name: gt.apply_allow_list(board)[0] for name, board in boards.items()}
    result = gt.tsc_check(gt.typescript_source(cleaned), workdir)
    output = result.stdout + result.stderr
    assert result.returncode in (0, 1, 2), output
    return output if result.returncode else ""


def test_the_pins_match_the_compose_files_grafana() -> None:
    """@grafana/schema is the compose file's Grafana version, exactly; typescript is pinned."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    image = compose["services"]["grafana"]["image"]
    tag = image.rpartition(":")[2].removeprefix("v")
    package = json.loads((gt.SCHEMA_DIR / "package.json").read_text())
    pins = package["devDependencies"]
    assert pins["@grafana/schema"] == tag, (pins, image)
    assert re.fullmatch(r"\d+\.\d+\.\d+", pins["typescript"]), pins
    lock = json.loads((gt.SCHEMA_DIR / "package-lock.json").read_text())["packages"]
    assert lock["node_modules/@grafana/schema"]["version"] == tag
    assert lock["node_modules/typescript"]["version"] == pins["typescript"]


def test_every_panel_type_is_checked(boards: dict[str, dict[str, Any]]) -> None:
    for name, board in boards.items():
        for panel in gt.panels(board):
            assert panel["type"] == "row" or panel["type"] in gt.PANEL_TYPES, (name, panel)


def test_each_allowed_field_is_still_needed(boards: dict[str, dict[str, Any]]) -> None:
    """An allow-list entry that removes nothing any more is stale: delete it."""
    hits: set[gt.Allowed] = set()
    for board in boards.values():
        hits |= gt.apply_allow_list(board)[1]
    stale = [entry for entry in gt.ALLOWED if entry not in hits]
    assert not stale, stale
    for entry in gt.ALLOWED:
        assert len(entry.reason) > 40, entry


@pytest.mark.usefixtures("typescript")
def test_the_generated_dashboards_match_grafanas_types(
    boards: dict[str, dict[str, Any]], tmp_path: Path,
) -> None:
    source = gt.typescript_source({n: gt.apply_allow_list(b)[0] for n, b in boards.items()})
    panels = [p for b in boards.values() for p in gt.panels(b) if p["type"] != "row"]
    # Every panel's options are typed by its own panel type (not only the dashboard's shape).
    assert source.count("_options: Loose<") == sum("options" in p for p in panels) > 0
    assert source.count("_custom: Loose<") > 0
    assert _check(boards, tmp_path) == ""


@pytest.mark.usefixtures("typescript")
def test_the_check_fails_on_a_typo(boards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """A wrong enum value (``drawStyle: "lines"``) and an unknown options key both fail."""
    broken = copy.deepcopy(boards)
    board = next(iter(broken.values()))
    series = next(p for p in gt.panels(board) if p["type"] == "timeseries")
    series["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "lines"
    stat = next(p for p in gt.panels(board) if p["type"] == "stat")
    stat["options"]["colourMode"] = "value"
    board["graphTooltipp"] = 1
    output = _check(broken, tmp_path)
    assert re.search(r"error TS\d+: Type '\"lines\"' is not assignable", output), output
    for key in ("colourMode", "graphTooltipp"):
        assert f"'\"{key}\"' does not exist" in output, output
