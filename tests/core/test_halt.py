"""TradingHalt: reduce-only halts, approved resumes, and a store that fails safe."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from exitguard import FileHaltStore, TradingHalt, TradingHalted
from exitguard.compat import TradingHaltCoordinator
from exitguard.errors import HaltResumeError, HaltStoreError
from exitguard.halt import HaltRecord, HaltSnapshot, MemoryHaltStore

APPROVERS = ("alice", "bob")


def test_compatibility_name_is_an_alias() -> None:
    assert TradingHaltCoordinator is TradingHalt


def test_halt_blocks_entries_with_the_reason() -> None:
    halt = TradingHalt(APPROVERS)
    assert not halt.is_halted
    halt.check_entry()  # not halted: no error
    assert halt.reason is None
    assert halt.halt("circuit breaker jupiter opened") is True
    assert halt.is_halted
    assert halt.reason == "circuit breaker jupiter opened"
    with pytest.raises(TradingHalted, match="circuit breaker jupiter opened") as info:
        halt.check_entry()
    assert info.value.reason == "circuit breaker jupiter opened"


def test_second_halt_keeps_the_first_reason() -> None:
    halt = TradingHalt(APPROVERS)
    assert halt.halt("first")
    assert halt.halt("second") is False
    assert halt.reason == "first"
    assert len(halt.history) == 1


def test_resume_by_an_approver_is_recorded() -> None:
    halt = TradingHalt(APPROVERS)
    halt.halt("breaker", actor="circuit_breaker")
    before = time.time()
    record = halt.resume("alice", "RPC provider fixed, checked positions")
    after = time.time()
    assert not halt.is_halted
    halt.check_entry()
    assert record == halt.history[-1]
    assert record.halted is False
    assert record.actor == "alice"  # who
    assert before <= record.at <= after  # when (wall time)
    assert record.reason == "RPC provider fixed, checked positions"  # why
    assert [(r.halted, r.actor) for r in halt.history] == [
        (True, "circuit_breaker"), (False, "alice"),
    ]


@pytest.mark.parametrize("approver", ["mallory", "", "ALICE", "alice "])
def test_resume_by_a_non_approver_is_refused(approver: str) -> None:
    halt = TradingHalt(APPROVERS)
    halt.halt("breaker")
    with pytest.raises(HaltResumeError, match="not an approver"):
        halt.resume(approver, "let me trade")
    assert halt.is_halted  # stays halted
    with pytest.raises(TradingHalted):
        halt.check_entry()
    assert len(halt.history) == 1  # nothing recorded


def test_resume_without_configured_approvers_is_refused() -> None:
    for approvers in ((), ("",)):
        halt = TradingHalt(approvers)
        halt.halt("breaker")
        with pytest.raises(HaltResumeError, match="no approvers"):
            halt.resume("alice", "please")
        assert halt.is_halted


@pytest.mark.parametrize("reason", ["", "   ", "\n"])
def test_resume_needs_a_reason(reason: str) -> None:
    halt = TradingHalt(APPROVERS)
    halt.halt("breaker")
    with pytest.raises(HaltResumeError, match="reason is required"):
        halt.resume("alice", reason)
    assert halt.is_halted


def test_resume_when_not_halted_is_refused() -> None:
    halt = TradingHalt(APPROVERS)
    with pytest.raises(HaltResumeError, match="not halted"):
        halt.resume("alice", "nothing to do")
    assert halt.history == ()


def test_listeners_are_called_and_a_raising_one_is_ignored() -> None:
    halt = TradingHalt(APPROVERS)
    halted: list[HaltRecord] = []
    resumed: list[HaltRecord] = []

    def broken(_record: HaltRecord) -> None:
        raise RuntimeError("listener bug")

    halt.on_halt(broken)
    halt.on_halt(halted.append)
    halt.on_resume(broken)
    halt.on_resume(resumed.append)
    halt.halt("breaker opened")
    halt.halt("again")  # already halted: no second notification
    record = halt.resume("bob", "fixed")
    assert [r.reason for r in halted] == ["breaker opened"]
    assert resumed == [record]
    assert not halt.is_halted


def test_memory_store_keeps_the_snapshot() -> None:
    store = MemoryHaltStore()
    halt = TradingHalt(APPROVERS, store=store)
    halt.halt("breaker")
    assert store.snapshot is not None
    assert store.snapshot.halted
    again = TradingHalt(APPROVERS, store=store)  # same store, new coordinator
    assert again.is_halted
    assert again.history == halt.history


# -- The file store ----------------------------------------------------------------------------


def test_file_store_survives_a_restart_with_history(tmp_path: Path) -> None:
    path = tmp_path / "state" / "halt.json"  # the directory is created on first write
    first = TradingHalt.from_file(path, APPROVERS)
    assert not first.is_halted  # no file yet: never halted
    first.halt("circuit breaker opened: 3 consecutive failed exits")
    assert path.exists()

    restarted = TradingHalt.from_file(path, APPROVERS)
    assert restarted.is_halted
    assert restarted.reason == "circuit breaker opened: 3 consecutive failed exits"
    assert restarted.history == first.history
    assert restarted.store_error is None
    with pytest.raises(TradingHalted):
        restarted.check_entry()

    restarted.resume("alice", "venue recovered")
    again = TradingHalt.from_file(path, APPROVERS)
    assert not again.is_halted
    assert [(r.halted, r.actor, r.reason) for r in again.history] == [
        (True, "circuit_breaker", "circuit breaker opened: 3 consecutive failed exits"),
        (False, "alice", "venue recovered"),
    ]
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["halted"] is False
    assert len(data["history"]) == 2


def test_file_store_writes_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    halt = TradingHalt.from_file(path, APPROVERS)
    for n in range(5):
        halt.halt(f"halt {n}")
        halt.resume("alice", f"resume {n}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["halt.json"]
    assert len(FileHaltStore(path).load().history) == 10  # type: ignore[union-attr]


def test_crash_mid_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "halt.json"
    halt = TradingHalt.from_file(path, APPROVERS)
    halt.halt("breaker opened")
    old = path.read_bytes()

    def crash(_src: object, _dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    store = FileHaltStore(path)
    with pytest.raises(OSError, match="Input/output error"):
        store.save(HaltSnapshot(False, "", ()))
    assert path.read_bytes() == old  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["halt.json"]  # temp file removed

    # Through the coordinator: the resume holds in memory, the failure is reported, and
    # the file still says halted, so a restart comes back halted (the safe side).
    halt.resume("alice", "fixed")
    assert not halt.is_halted
    assert halt.store_error is not None
    assert "Input/output error" in halt.store_error
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert TradingHalt.from_file(path, APPROVERS).is_halted


CORRUPT_FILES: list[tuple[str, bytes]] = [
    ("garbage", b"this is not json at all"),
    ("binary", b"\xff\xfe\x00\x81garbage"),
    ("empty", b""),
    ("truncated", b'{"halted": false, "reason": "", "history": [{"halted": tru'),
    ("list", b"[]"),
    ("null", b"null"),
    ("missing halted", b'{"reason": "", "history": []}'),
    ("halted is a string", b'{"halted": "false", "reason": "", "history": []}'),
    ("halted is a number", b'{"halted": 0, "reason": "", "history": []}'),
    ("reason is a number", b'{"halted": false, "reason": 5, "history": []}'),
    ("history is a dict", b'{"halted": false, "reason": "", "history": {"a": 1}}'),
    ("history is a string", b'{"halted": false, "reason": "", "history": "abc"}'),
    ("record is a list", b'{"halted": false, "reason": "", "history": [[1, 2]]}'),
    ("record halted is a string",
     b'{"halted": false, "reason": "", "history": '
     b'[{"halted": "no", "reason": "r", "actor": "a", "at": 1.0}]}'),
    ("record at is text",
     b'{"halted": false, "reason": "", "history": '
     b'[{"halted": true, "reason": "r", "actor": "a", "at": "noon"}]}'),
    ("record actor missing",
     b'{"halted": false, "reason": "", "history": [{"halted": true, "reason": "r", "at": 1}]}'),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000),
]


@pytest.mark.parametrize(("kind", "content"), CORRUPT_FILES, ids=[k for k, _ in CORRUPT_FILES])
def test_corrupt_file_means_halted(tmp_path: Path, kind: str, content: bytes) -> None:
    path = tmp_path / "halt.json"
    path.write_bytes(content)
    with pytest.raises(HaltStoreError, match="corrupt"):
        FileHaltStore(path).load()

    halt = TradingHalt.from_file(path, APPROVERS)
    assert halt.is_halted, kind  # never "trading allowed"
    assert halt.store_error is not None
    assert str(path) in halt.store_error
    assert "corrupt" in halt.store_error
    with pytest.raises(TradingHalted):
        halt.check_entry()
    assert halt.history[-1].actor == "halt_store"

    # An approved resume writes a good file again.
    halt.resume("alice", "inspected and repaired the halt file")
    assert halt.store_error is None
    assert not TradingHalt.from_file(path, APPROVERS).is_halted


def test_unreadable_path_means_halted(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    path.mkdir()  # a directory where the file should be: reading fails
    halt = TradingHalt.from_file(path, APPROVERS)
    assert halt.is_halted
    assert halt.store_error is not None
    assert "cannot read" in halt.store_error


def _assert_halt_holds_in_memory(halt: TradingHalt) -> None:
    notified: list[HaltRecord] = []
    halt.on_halt(notified.append)
    assert halt.halt("breaker opened") is True
    assert halt.is_halted  # the halt holds in memory
    with pytest.raises(TradingHalted):
        halt.check_entry()
    assert halt.store_error is not None
    assert halt.store_error.startswith("cannot write halt store")
    assert len(notified) == 1  # listeners still hear about it


def test_unwritable_directory_keeps_the_halt_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, which ignores permission bits: refuse the temp file creation
    # the way an unwritable directory does.
    def denied(*_args: object, **_kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    path = tmp_path / "halt.json"
    halt = TradingHalt.from_file(path, APPROVERS)
    assert not halt.is_halted  # readable, just no file yet
    assert halt.store_error is None
    _assert_halt_holds_in_memory(halt)
    assert "Permission denied" in (halt.store_error or "")
    assert not path.exists()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permission bits"
)
def test_read_only_directory_keeps_the_halt_in_memory(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        halt = TradingHalt.from_file(directory / "halt.json", APPROVERS)
        assert not halt.is_halted
        _assert_halt_holds_in_memory(halt)
    finally:
        directory.chmod(0o755)


def test_path_under_a_regular_file_is_halted_and_unwritable(tmp_path: Path) -> None:
    # A regular file where the directory should be: neither readable nor writable, for
    # any user. Unknown state fails safe (halted), and a further halt still holds.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x", encoding="utf-8")
    halt = TradingHalt.from_file(blocker / "halt.json", APPROVERS)
    assert halt.is_halted
    assert halt.store_error is not None
    assert "cannot read" in halt.store_error
    halt.resume("alice", "checked by hand")  # held in memory, the write fails
    assert not halt.is_halted
    assert halt.store_error is not None
    _assert_halt_holds_in_memory(halt)


def test_a_healthy_write_clears_a_previous_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "halt.json"
    halt = TradingHalt.from_file(path, APPROVERS)

    def full_disk(_src: object, _dst: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full_disk)
        halt.halt("breaker")
        assert halt.store_error is not None
        assert not path.exists()
    halt.resume("bob", "disk cleaned")
    assert halt.store_error is None
    assert path.exists()
