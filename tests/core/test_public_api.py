"""The top-level package is small and says what each name is for; the original design's names
live in exitguard.compat."""

from __future__ import annotations

import inspect

import pytest

import exitguard
from exitguard import compat

COMPAT_ALIASES = {
    "ExitDeadlineManager": "exitguard.deadline.ExitDeadline",
    "ExitTimeoutDetector": "exitguard.deadline.TimeoutDetector",
    "ExitCircuitBreaker": "exitguard.breaker.CircuitBreaker",
    "CircuitBreakerAction": "exitguard.breaker.BreakerAction",
    "TradingHaltCoordinator": "exitguard.halt.TradingHalt",
}


def own_doc(obj: object) -> str | None:
    """The object's own docstring: not inherited, not the signature dataclasses write."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    name = getattr(obj, "__name__", "")
    if not doc or doc.startswith(f"{name}("):
        return None
    return doc


def test_at_most_about_thirty_names() -> None:
    assert len(exitguard.__all__) <= 31
    assert len(set(exitguard.__all__)) == len(exitguard.__all__)
    namespace: dict[str, object] = {}
    exec("from exitguard import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(exitguard.__all__)


@pytest.mark.parametrize("name", exitguard.__all__)
def test_each_exported_name_says_what_it_is_for(name: str) -> None:
    doc = own_doc(getattr(exitguard, name))
    assert doc is not None, f"exitguard.{name} has no docstring of its own"
    assert len(doc.split()) >= 5, f"exitguard.{name}: {doc!r} says too little"


def test_bounded_retry_executor_stays_public() -> None:
    assert "BoundedRetryExecutor" in exitguard.__all__


@pytest.mark.parametrize(("alias", "target"), sorted(COMPAT_ALIASES.items()))
def test_the_original_designs_names_are_in_compat_only(alias: str, target: str) -> None:
    module, _, name = target.rpartition(".")
    assert getattr(compat, alias) is getattr(__import__(module, fromlist=[name]), name)
    assert not hasattr(exitguard, alias)
    assert not hasattr(__import__(module, fromlist=[name]), alias)  # one name per module


def test_compat_exports_the_designs_primitives() -> None:
    for name in compat.__all__:
        assert getattr(compat, name) is not None
    for name in ("ExitAttemptTracker", "ExitStateMachine", "AdaptiveExitExecutor",
                 "TransitionRecord"):
        assert name in compat.__all__
        assert name not in exitguard.__all__
