"""The first hour tells one story: README's demo figures are what ``exitguard demo`` prints,
and ``bash scripts/demo`` installs once, then reruns without pip, quietly (issue 15)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from exitguard.cli.app import main
from tests.support import REPO

README = REPO / "README.md"
ROW = re.compile(r"^[│|]?\s*(?P<label>[a-z][a-z -]+?)\s*[│|]?\s+(?P<naive>\S+(?: %| s)?)"
                 r"\s*[│|]?\s+(?P<guarded>\S+(?: %| s)?)\s*[│|]?\s*$")
LABELS = ("realized loss", "time to exit", "attempts", "transactions sent", "double-sells",
          "average exit price", "loss vs the stop")


def _rows(text: str) -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        match = ROW.match(line.strip())
        if match and match.group("label") in LABELS:
            rows[match.group("label")] = (match.group("naive"), match.group("guarded"))
    return rows


def _readme_demo_block() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("`exitguard demo` replays the seed incident")
    fence = text.index("```\n", start)
    return text[fence + 4:text.index("```", fence + 4)]


def test_readme_figures_are_what_the_demo_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    printed = capsys.readouterr().out
    demo, readme = _rows(printed), _rows(_readme_demo_block())
    assert set(demo) == set(LABELS), printed
    assert readme == demo, (
        "README.md's demo table differs from what `exitguard demo` prints now; update README:\n"
        + "\n".join(f"{label:<20}{naive:>12}{guarded:>12}" for label, (naive, guarded)
                    in demo.items())
    )
    text = README.read_text(encoding="utf-8")
    # The headline: the naive loss the demo prints, and the price path its scenario describes.
    naive_loss = demo["realized loss"][0]
    assert f"lands as {naive_loss.replace(' ', '')}." in text, naive_loss
    toward = re.search(r"slides\s+toward\s+(\d+)", printed)
    assert toward, printed
    assert f"slides toward {toward.group(1)})" in text
    assert "17%" not in text


def _fake_checkout(tmp_path: Path, *, setup_fails: bool = False) -> Path:
    """scripts/demo in a checkout whose scripts/setup is a stand-in that records its calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "demo", tmp_path / "scripts" / "demo")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    setup = tmp_path / "scripts" / "setup"
    setup.write_text(
        "#!/usr/bin/env bash\nset -e\n"
        "echo 'pip: Collecting things...'\n"
        "echo call >> calls\n"
        + ("echo 'pip: ERROR: no network' >&2; exit 3\n" if setup_fails else "")
        + "mkdir -p .venv/bin\n"
        "printf '#!/usr/bin/env bash\\necho \"demo ran: $*\"\\n' > .venv/bin/exitguard\n"
        "chmod +x .venv/bin/exitguard\n"
    )
    setup.chmod(setup.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def _demo(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(checkout / "scripts" / "demo"), *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "LC_ALL": "C"})


def _calls(checkout: Path) -> int:
    calls = checkout / "calls"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_scripts_demo_installs_once_then_reruns_without_pip(tmp_path: Path) -> None:
    checkout = _fake_checkout(tmp_path)
    first = _demo(checkout, "--seed", "2")
    assert first.returncode == 0, first.stderr
    assert _calls(checkout) == 1
    assert first.stdout == "demo ran: demo --seed 2\n"
    assert "pip" not in first.stdout + first.stderr, "the installer's output is not shown"

    again = _demo(checkout)
    assert again.returncode == 0, again.stderr
    assert _calls(checkout) == 1, "nothing changed: no reinstall"
    assert (again.stdout, again.stderr) == ("demo ran: demo\n", "")

    (checkout / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '2'\n")
    assert _demo(checkout).returncode == 0
    assert _calls(checkout) == 2, "pyproject.toml changed: reinstall"

    (checkout / ".venv" / "bin" / "exitguard").unlink()
    assert _demo(checkout).returncode == 0
    assert _calls(checkout) == 3, "exitguard missing from .venv: reinstall"


def test_scripts_demo_shows_the_installer_output_when_it_fails(tmp_path: Path) -> None:
    checkout = _fake_checkout(tmp_path, setup_fails=True)
    failed = _demo(checkout)
    assert failed.returncode == 1
    assert "pip: ERROR: no network" in failed.stderr
    assert "pip: Collecting things" in failed.stderr
    assert "installing exitguard failed" in failed.stderr
    assert failed.stdout == ""
    assert not (checkout / ".venv" / ".exitguard-demo-installed").exists()
