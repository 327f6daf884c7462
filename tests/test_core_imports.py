"""The core imports only the standard library: checked at run time and statically."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import exitguard

BLOCKED = ("prometheus_client", "opentelemetry", "structlog", "apprise", "ccxt", "aiohttp")
CORE_MODULES = (
    "policy", "errors", "venue", "retry", "deadline", "tracker", "state_machine", "breaker",
    "halt", "guard", "hooks", "outcome", "catalogue", "clock", "vtime", "testing",
)
#: Modules directly under src/exitguard/ that are not core (they serve the CLI and stack).
NOT_CORE = {"dashboards.py", "cli.py"}
PACKAGE_DIR = Path(exitguard.__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import importlib
    import importlib.abc
    import json
    import sys

    BLOCKED = set(json.loads(sys.argv[1]))
    CORE = json.loads(sys.argv[2])

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Blocker())

    # The harness works: the blocked packages cannot be imported.
    for name in sorted(BLOCKED):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"blocker failed for {name}")

    import exitguard
    for name in CORE:
        importlib.import_module(f"exitguard.{name}")

    from exitguard import ExitGuard, ExitStatus, Position
    from exitguard.testing import ScriptedVenue, run_virtual

    async def main():
        venue = ScriptedVenue()
        guard = ExitGuard(venue)
        outcome = await guard.exit(
            Position("p1", "SOL", 2.0, 100.0), signal_price=95.0, reason="stop_loss"
        )
        await guard.drain()
        return outcome, venue.sold_eventually()

    outcome, sold = run_virtual(main())
    assert outcome.status is ExitStatus.CLOSED, outcome
    assert outcome.filled_size == 2.0, outcome
    assert sold == 2.0, sold
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print(json.dumps({"status": str(outcome.status), "loaded": loaded,
                      "modules": sorted(m for m in sys.modules if m.startswith("exitguard"))}))
    """
)


def test_core_imports_and_exits_without_optional_packages() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), json.dumps(CORE_MODULES)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "closed"
    assert report["loaded"] == []
    for name in CORE_MODULES:
        assert f"exitguard.{name}" in report["modules"]
    # Subpackages that need the optional packages were not dragged in.
    assert not any(m.startswith(("exitguard.telemetry", "exitguard.alerting",
                                 "exitguard.venues"))
                   for m in report["modules"])


def _imported_top_levels(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.partition(".")[0])
    return names


def test_no_core_module_imports_optional_packages() -> None:
    core_files = sorted(
        p for p in PACKAGE_DIR.glob("*.py") if p.name not in NOT_CORE
    )
    scanned = {p.stem for p in core_files}
    assert set(CORE_MODULES) <= scanned  # the scan is not vacuous
    offenders = {}
    for path in core_files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        bad = _imported_top_levels(tree) & set(BLOCKED)
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_the_static_check_sees_imports() -> None:
    # The checker itself catches every import form it claims to.
    source = textwrap.dedent(
        """
        import structlog
        import opentelemetry.trace as trace
        from prometheus_client import Counter
        from .telemetry import instrument
        importlib.import_module("apprise")
        def f():
            import json
        """
    )
    assert _imported_top_levels(ast.parse(source)) == {
        "structlog", "opentelemetry", "prometheus_client", "apprise", "json",
    }
