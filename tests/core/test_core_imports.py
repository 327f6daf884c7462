"""The layering holds by folder: the core (every module directly in ``src/exitguard/``) imports
only the standard library, and no exitguard module takes part in an import cycle.

No list of exceptions: the core is whatever ``*.py`` sits in the package's folder, and the
third-party distributions refused are read from exitguard's own requirements (every extra
included), so a new module or a new dependency is covered the day it is added.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import exitguard

PACKAGE_DIR = Path(exitguard.__file__).resolve().parent
SOURCES = PACKAGE_DIR.parent
#: The core: every module directly in the package folder (``__init__`` is the package itself).
CORE_FILES = sorted(p for p in PACKAGE_DIR.glob("*.py") if p.name != "__init__.py")
CORE_MODULES = [p.stem for p in CORE_FILES]
#: The upper layers: every subpackage (telemetry, alerting, artefacts, sim, cli, ...).
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE_DIR.glob("*/__init__.py"))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party_import_names() -> dict[str, str]:
    """Top-level import name -> distribution, for every requirement of exitguard (all extras)."""
    required = set()
    for requirement in importlib.metadata.requires("exitguard") or []:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, requirement
        required.add(_canonical(match.group(1)))
    names: dict[str, str] = {}
    found: set[str] = set()
    for import_name, distributions in importlib.metadata.packages_distributions().items():
        for distribution in map(_canonical, distributions):
            if distribution in required:
                names[import_name] = distribution
                found.add(distribution)
    # A requirement not installed here has no import names to look up: refuse its own name.
    for distribution in required - found:
        names[distribution.replace("-", "_")] = distribution
    return names


BLOCKED = _third_party_import_names()

SCRIPT = textwrap.dedent(
    """
    import importlib
    import importlib.abc
    import importlib.util
    import json
    import sys

    BLOCKED = set(json.loads(sys.argv[1]))
    CORE = json.loads(sys.argv[2])
    already = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    if already:
        raise SystemExit(f"loaded before the test started: {already}")
    installed = {n for n in BLOCKED if importlib.util.find_spec(n) is not None}

    class Blocker(importlib.abc.MetaPathFinder):
        refused = set()

        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in BLOCKED:
                Blocker.refused.add(top)
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Blocker())
    before = set(sys.modules)

    # The harness works: every installed dependency is refused.
    for name in sorted(installed):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"blocker failed for {name}")
    if Blocker.refused != installed:
        raise SystemExit(f"not refused: {sorted(installed - Blocker.refused)}")
    Blocker.refused.clear()

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
    new = sorted(set(sys.modules) - before)
    print(json.dumps({
        "status": str(outcome.status),
        "installed": sorted(installed),
        "refused": sorted(Blocker.refused),
        "new_top_levels": sorted({m.partition(".")[0] for m in new}),
        "modules": sorted(m for m in sys.modules if m.startswith("exitguard")),
    }))
    """
)


def test_the_core_is_found_and_every_dependency_is_blocked() -> None:
    # Not vacuous: the core, the subpackages and the dependencies are all seen.
    assert {"guard", "hooks", "catalogue", "filestore", "testing", "__main__"} <= set(CORE_MODULES)
    assert {"telemetry", "alerting", "artefacts", "sim", "cli"} <= set(SUBPACKAGES)
    for import_name in ("prometheus_client", "opentelemetry", "structlog", "apprise", "rich",
                        "yaml", "grafana_foundation_sdk", "matplotlib", "tenacity", "pytest"):
        assert import_name in BLOCKED, import_name


def test_every_core_module_imports_and_exits_without_any_dependency() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(sorted(BLOCKED)), json.dumps(CORE_MODULES)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "closed"
    assert report["installed"], "no dependency installed: the blocker proved nothing"
    assert report["refused"] == [], "a core module tried to import a dependency"
    # Nothing else outside the standard library was loaded either (an undeclared dependency).
    outside = [m for m in report["new_top_levels"]
               if m != "exitguard" and m not in sys.stdlib_module_names]
    assert outside == []
    for name in CORE_MODULES:
        assert f"exitguard.{name}" in report["modules"]
    # No upper layer was dragged in.
    upper = [m for m in report["modules"] if m.split(".")[1:2] and m.split(".")[1] in SUBPACKAGES]
    assert upper == []


# --- static checks ------------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_main_guard(test: ast.expr) -> bool:
    """``if __name__ == "__main__":``: runs when the file is a program, never on import."""
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _imports(
    nodes: list[ast.stmt], *, module_level: bool, type_checking: bool
) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements in ``nodes``.

    ``module_level``: only those that run when the module is imported (not in a function).
    ``type_checking``: include ``if TYPE_CHECKING:`` blocks. Code under
    ``if __name__ == "__main__":`` never runs on import and is never included.
    """
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_main_guard(node.test):
            yield from _imports(node.orelse, module_level=module_level,
                                type_checking=type_checking)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            if type_checking:
                yield from _imports(node.body, module_level=module_level,
                                    type_checking=type_checking)
            yield from _imports(node.orelse, module_level=module_level,
                                type_checking=type_checking)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and module_level:
            continue
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None) or []
                statements = [c for c in children if isinstance(c, ast.stmt)]
                for child in children:  # except handlers and match cases hold statements
                    if isinstance(child, ast.ExceptHandler | ast.match_case):
                        statements.extend(child.body)
                yield from _imports(statements, module_level=module_level,
                                    type_checking=type_checking)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCES).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom,
             known: set[str]) -> Iterator[str]:
    """The modules ``node`` (in ``module``) imports, by absolute dotted name."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in known else base


def import_graph(
    sources: Mapping[str, tuple[str, bool]], *, type_checking: bool = False
) -> dict[str, set[str]]:
    """Module -> the exitguard modules it imports when it is imported (module level).

    ``sources`` maps a dotted module name to (source, is_package). Imports inside functions
    run later, on a call, and cannot make an import-time cycle: they are left out. So are
    ``if TYPE_CHECKING:`` imports unless ``type_checking`` (they never run).
    """
    known = set(sources)
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for name, (source, is_package) in sources.items():
        tree = ast.parse(source)
        for node in _imports(tree.body, module_level=True, type_checking=type_checking):
            for target in _targets(name, is_package, node, known):
                if target in known and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _package_sources() -> dict[str, tuple[str, bool]]:
    return {
        _module_name(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
    }


def test_no_import_cycle_among_exitguard_modules() -> None:
    """Module-level imports only; ``if TYPE_CHECKING:`` imports are excluded here (they never
    run, so they cannot fail an import) and checked for the core by the next test."""
    graph = import_graph(_package_sources())
    assert len(graph) > 40
    assert sum(map(len, graph.values())) > 80
    assert find_cycles(graph) == []


def test_no_import_cycle_in_the_core_even_for_type_checking() -> None:
    """Type-only imports too: ``hooks`` names ``ExitOutcome`` from ``outcome``, not ``guard``
    (which imports ``hooks``), so a reader and mypy see the core as layers."""
    sources = {k: v for k, v in _package_sources().items() if k.count(".") <= 1}
    assert find_cycles(import_graph(sources, type_checking=True)) == []


def test_the_cycle_check_can_fail() -> None:
    sources = {
        "pkg": ("from .a import A\n", True),
        "pkg.a": ("from .b import B\nA = 1\n", False),
        "pkg.b": ("import pkg.c\nB = 2\n", False),
        "pkg.c": ("from pkg import a\n", False),
        "pkg.d": ("def f():\n    from . import a\nif TYPE_CHECKING:\n    from .a import A\n",
                  False),
    }
    graph = import_graph(sources)
    assert graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == set()  # function-level and type-only imports are not edges
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert import_graph(sources, type_checking=True)["pkg.d"] == {"pkg.a"}


def _top_level_names(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, name) of everything a core file imports, wherever (functions, TYPE_CHECKING):
    a relative import as ``exitguard.<module>``."""
    for node in _imports(tree.body, module_level=False, type_checking=True):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif node.level:
            if node.module:
                yield node.lineno, f"exitguard.{node.module}"
            else:
                for alias in node.names:
                    yield node.lineno, f"exitguard.{alias.name}"
        else:
            yield node.lineno, node.module or ""


def test_every_core_module_imports_only_the_standard_library_and_the_core() -> None:
    """Statically, including imports inside functions and under TYPE_CHECKING."""
    offenders = []
    for path in [*CORE_FILES, PACKAGE_DIR / "__init__.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in _top_level_names(tree):
            top, _, rest = name.partition(".")
            if top == "exitguard":
                sub = rest.partition(".")[0]
                if sub in SUBPACKAGES:
                    offenders.append(f"{path.name}:{line} imports the upper layer {name}")
            elif top not in sys.stdlib_module_names and top != "__future__":
                offenders.append(f"{path.name}:{line} imports {name} (not standard library)")
    assert offenders == []


def test_the_static_check_sees_every_import_form() -> None:
    source = textwrap.dedent(
        """
        import structlog
        import opentelemetry.trace as trace
        from prometheus_client import Counter
        from .telemetry import instrument
        from . import sim
        if TYPE_CHECKING:
            from rich.console import Console
        def f():
            import json
        try:
            import yaml
        except ImportError:
            import grafana_foundation_sdk
        if __name__ == "__main__":
            from exitguard.cli import main
        """
    )
    names = {name for _, name in _top_level_names(ast.parse(source))}
    assert names == {
        "structlog", "opentelemetry.trace", "prometheus_client", "exitguard.telemetry",
        "exitguard.sim", "rich.console", "json", "yaml", "grafana_foundation_sdk",
    }


_BACK_DOORS = ("import_module", "__import__", "spec_from_file_location", "run_module",
               "run_path")
_BACK_DOOR_MODULES = ("importlib", "importlib.import_module", "importlib.util",
                      "importlib.machinery", "runpy")


def test_no_importlib_back_doors() -> None:
    """Every import is a plain ``import`` statement that readers, mypy and this test see."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                # importlib.metadata / .resources read data; these load code by name.
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    f"{node.module}.{a.name}" for a in node.names]
                if any(m in _BACK_DOOR_MODULES for m in modules):
                    found.append(f"{path.relative_to(SOURCES)}:{node.lineno} imports {modules}")
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in _BACK_DOORS:
                    found.append(f"{path.relative_to(SOURCES)}:{node.lineno} calls {name}")
    assert found == []
