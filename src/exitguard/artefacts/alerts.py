"""The ``alerts/`` directory as one unit: the rule file and the Alertmanager config.

``exitguard alerts build`` writes both and ``exitguard alerts check`` checks both, so a hand
edit of either is caught and neither file claims a generator that does not write it.
"""

from __future__ import annotations

from pathlib import Path

from exitguard.runbooks import RUNBOOK_BASE_URL

from .alertmanager import check_alertmanager_config, write_committed_config
from .rules import DEFAULT_THRESHOLDS, Thresholds, check_rules, write_rules

#: The file names inside the alerts directory (``docker-compose.yml`` mounts them).
RULES_FILE = "exitguard.rules.yml"
ALERTMANAGER_FILE = "alertmanager.yml"
#: Where ``exitguard alerts build|check`` write and read, relative to the repository root.
DEFAULT_ALERTS_DIR = Path("alerts")


def build_all(
    alerts_dir: Path,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    *,
    job: str | None = None,
    runbook_base_url: str = RUNBOOK_BASE_URL,
) -> list[Path]:
    """Write every generated file under ``alerts_dir``; returns their paths.

    ``job`` and ``runbook_base_url`` are those of :func:`~exitguard.artefacts.rules.render_rules`
    (the Alertmanager config depends on neither).
    """
    rules, config = alerts_dir / RULES_FILE, alerts_dir / ALERTMANAGER_FILE
    write_rules(rules, thresholds, job=job, runbook_base_url=runbook_base_url)
    write_committed_config(config)
    return [rules, config]


def check_all(
    alerts_dir: Path,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    *,
    job: str | None = None,
    runbook_base_url: str = RUNBOOK_BASE_URL,
) -> list[str]:
    """Every difference between the generated files under ``alerts_dir`` and the code."""
    rules = check_rules(
        alerts_dir / RULES_FILE, thresholds, job=job, runbook_base_url=runbook_base_url
    )
    return rules + check_alertmanager_config(alerts_dir / ALERTMANAGER_FILE)
