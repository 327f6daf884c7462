"""Type-check dashboard JSON against Grafana's published types (``@grafana/schema``) with tsc.

``tests/schema/`` pins ``@grafana/schema`` to the compose file's Grafana tag and
``typescript``; ``scripts/setup --dev`` installs them there (``npm ci``). :func:`typescript_source`
writes a ``.ts`` file typing the whole dashboard as ``Dashboard`` and, for each panel, its
``options`` as that panel type's ``Options`` and its ``fieldConfig.defaults.custom`` as that
panel type's ``FieldConfig``; :func:`tsc_check` runs ``tsc --noEmit --strict`` on it.

JSON strings are never TypeScript enum members, so every type is first made
:data:`LOOSE` (a string enum becomes the union of its values, ``GraphDrawStyle`` becomes
``"bars" | "line" | "points"``); object literals keep TypeScript's excess-property check, so an
unknown key and a wrong enum value both fail.

:data:`ALLOWED` lists the only fields removed before the check: fields Grafana reads but the
types omit, each with its reason. Each entry must still match something (the test asserts it),
so the list cannot go stale silently.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import REPO

SCHEMA_DIR = REPO / "tests" / "schema"
NODE_MODULES = SCHEMA_DIR / "node_modules"
GRAFANA_SCHEMA = NODE_MODULES / "@grafana" / "schema"
TSC = NODE_MODULES / "typescript" / "bin" / "tsc"
_ESM = GRAFANA_SCHEMA / "dist" / "esm"

#: Panel type -> the module of its generated options types (under raw/composable/).
PANEL_TYPES = {
    "timeseries": "timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen",
    "stat": "stat/panelcfg/x/StatPanelCfg_types.gen",
    "heatmap": "heatmap/panelcfg/x/HeatmapPanelCfg_types.gen",
    "state-timeline": "statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen",
    "status-history": "statushistory/panelcfg/x/StatusHistoryPanelCfg_types.gen",
    "bargauge": "bargauge/panelcfg/x/BarGaugePanelCfg_types.gen",
    "gauge": "gauge/panelcfg/x/GaugePanelCfg_types.gen",
    "table": "table/panelcfg/x/TablePanelCfg_types.gen",
    "text": "text/panelcfg/x/TextPanelCfg_types.gen",
    "barchart": "barchart/panelcfg/x/BarChartPanelCfg_types.gen",
    "histogram": "histogram/panelcfg/x/HistogramPanelCfg_types.gen",
    "piechart": "piechart/panelcfg/x/PieChartPanelCfg_types.gen",
}

#: A JSON value as TypeScript sees it: enums as the union of their values (JSON holds the
#: value, never the enum member), the rest unchanged but recursively so.
LOOSE = """\
type Loose<T> =
  T extends string ? `${T}` :
  T extends number ? number :
  T extends boolean ? boolean :
  T extends null | undefined ? T :
  T extends readonly (infer U)[] ? Loose<U>[] :
  T extends object ? { [K in keyof T]: Loose<T[K]> } :
  T;
"""


@dataclass(frozen=True, slots=True)
class Allowed:
    """A field Grafana reads that the published types omit: removed before the check."""

    #: dashboard, panel, options:<panel type>, custom:<panel type>, annotation,
    #: built-in-annotation, variable
    where: str
    key: str
    reason: str


_LEGACY_PROMETHEUS_ANNOTATION = (
    "a Prometheus annotation's legacy top-level query field: Grafana's Prometheus datasource"
    " reads it (annotations are migrated into `target` on load) but the Dashboard type's"
    " AnnotationQuery has no such key"
)
_BUILT_IN_TARGET = (
    "the built-in 'Annotations & Alerts' query's target: the -- Grafana -- datasource's own"
    " query ({limit, matchAny, tags, type}), which Grafana reads; the types model every target"
    " as a DataQuery (refId required, none of those keys)"
)
_SDK_INTERVAL_AUTO = (
    "an interval variable's auto-interval field: Grafana reads it for interval variables;"
    " grafana-foundation-sdk writes it on every variable and the VariableModel type omits it"
)

#: Every field removed before the type check, with why Grafana needs it. Keep it short.
ALLOWED: tuple[Allowed, ...] = (
    *(Allowed("annotation", key, _LEGACY_PROMETHEUS_ANNOTATION)
      for key in ("expr", "step", "tagKeys", "textFormat", "titleFormat", "useValueForTime")),
    Allowed("built-in-annotation", "target", _BUILT_IN_TARGET),
    *(Allowed("variable", key, _SDK_INTERVAL_AUTO) for key in ("auto", "auto_count", "auto_min")),
)


def installed() -> bool:
    return TSC.is_file() and (_ESM / "index.d.ts").is_file()


def _ts(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)


def _ident(text: str) -> str:
    return re.sub(r"\W", "_", text)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panels(panel)


def _drop(mapping: Any, key: str, hits: set[Allowed], entry: Allowed) -> None:
    if isinstance(mapping, dict) and key in mapping:
        del mapping[key]
        hits.add(entry)


def apply_allow_list(dashboard: dict[str, Any],
                     allowed: tuple[Allowed, ...] = ALLOWED) -> tuple[dict[str, Any], set[Allowed]]:
    """A copy without the allowed fields, and the entries that removed something."""
    data = copy.deepcopy(dashboard)
    hits: set[Allowed] = set()
    for entry in allowed:
        kind, _, panel_type = entry.where.partition(":")
        if kind == "dashboard":
            _drop(data, entry.key, hits, entry)
        elif kind in ("annotation", "built-in-annotation"):
            for annotation in (data.get("annotations") or {}).get("list") or []:
                if kind == "annotation" or annotation.get("builtIn") == 1:
                    _drop(annotation, entry.key, hits, entry)
        elif kind == "variable":
            for variable in (data.get("templating") or {}).get("list") or []:
                _drop(variable, entry.key, hits, entry)
        else:
            for panel in panels(data):
                if kind == "panel":
                    _drop(panel, entry.key, hits, entry)
                elif panel.get("type") == panel_type and kind == "options":
                    _drop(panel.get("options"), entry.key, hits, entry)
                elif panel.get("type") == panel_type and kind == "custom":
                    custom = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("custom")
                    _drop(custom, entry.key, hits, entry)
    return data, hits


def typescript_source(dashboards: dict[str, dict[str, Any]]) -> str:
    """One ``.ts`` module typing each dashboard and each of its panels' options."""
    index = (_ESM / "index").as_posix()
    lines = [f'import type {{ Dashboard }} from "{index}";']
    for panel_type, module in PANEL_TYPES.items():
        path = (_ESM / "raw" / "composable" / module).as_posix()
        lines.append(f'import type * as {_ident(panel_type)} from "{path}";')
    lines += ["", LOOSE]
    for name, dashboard in dashboards.items():
        base = _ident(Path(name).stem)
        lines.append(f"export const {base}: Loose<Dashboard> = {_ts(dashboard)};\n")
        for panel in panels(dashboard):
            panel_type = str(panel.get("type"))
            if panel_type == "row":
                continue
            if panel_type not in PANEL_TYPES:
                raise ValueError(f"{name}: panel {panel.get('title')!r} has type {panel_type!r},"
                                 " which tests/support/grafana_types.py does not map yet")
            ns = _ident(panel_type)  # the import alias of the panel type's module
            label = _ident(f"{base}_panel_{panel.get('id')}")
            if "options" in panel:
                lines.append(f"// {panel.get('title')}\nexport const {label}_options:"
                             f" Loose<{ns}.Options> = {_ts(panel['options'])};\n")
            custom = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("custom")
            if custom is not None:
                lines.append(f"export const {label}_custom: Loose<{ns}.FieldConfig> ="
                             f" {_ts(custom)};\n")
    return "\n".join(lines)


TSCONFIG = {
    "compilerOptions": {
        "strict": True, "noEmit": True, "target": "es2022", "module": "esnext",
        "moduleResolution": "bundler", "skipLibCheck": True, "types": [],
    },
    "files": ["dashboards.ts"],
}


def tsc_check(source: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``tsc --noEmit`` on ``source`` (written to ``workdir/dashboards.ts``)."""
    (workdir / "dashboards.ts").write_text(source, encoding="utf-8")
    (workdir / "tsconfig.json").write_text(json.dumps(TSCONFIG, indent=2), encoding="utf-8")
    node = shutil.which("node") or "node"
    return subprocess.run([node, str(TSC), "-p", str(workdir / "tsconfig.json")],
                          cwd=workdir, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "NO_COLOR": "1"})
