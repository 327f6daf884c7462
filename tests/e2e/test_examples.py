"""Every runnable example in examples/ runs and prints what its docstring promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.py"))
EXPECTED = {
    "guarded_exit.py": "status=closed",
    "retry_executor.py": "gave up: max attempts (3) reached",
    "breaker_and_halt.py": "resumed by alice",
    "state_machine_and_deadline.py": "emergency halt",
    "ladder.py": "after 1 failures: market max 500 bps",
    "solana_jupiter.py": "step 2: market slippageBps=300",  # dry run: no keypair set
    "ccxt_exit.py": "exchange ground truth: sold=1 held=1",
}
#: Examples that need an optional extra (skipped without it; scripts/setup --dev installs it).
REQUIRES = {"ccxt_exit.py": "ccxt"}


def test_every_example_is_checked() -> None:
    assert {p.name for p in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example: Path) -> None:
    if example.name in REQUIRES:
        pytest.importorskip(REQUIRES[example.name])
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert EXPECTED[example.name] in done.stdout + done.stderr
