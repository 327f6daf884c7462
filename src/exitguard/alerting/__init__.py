"""Alerting: Prometheus rules and Alertmanager config as code, and the in-process pager.

``Pager`` is imported lazily, so ``exitguard alerts build|check`` never pulls in apprise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .rules import (
    DEFAULT_THRESHOLDS,
    AlertRule,
    RouteTimings,
    RuleGroup,
    Thresholds,
    all_rules,
    build_all,
    build_rule_groups,
    check_alertmanager_config,
    check_all,
    check_rules,
    render_alertmanager_config,
    render_rules,
    write_alertmanager_config,
    write_rules,
)

if TYPE_CHECKING:
    from .pager import Pager

__all__ = [
    "DEFAULT_THRESHOLDS",
    "AlertRule",
    "Pager",
    "RouteTimings",
    "RuleGroup",
    "Thresholds",
    "all_rules",
    "build_all",
    "build_rule_groups",
    "check_alertmanager_config",
    "check_all",
    "check_rules",
    "render_alertmanager_config",
    "render_rules",
    "write_alertmanager_config",
    "write_rules",
]


def __getattr__(name: str) -> Any:
    if name == "Pager":
        from .pager import Pager

        return Pager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
