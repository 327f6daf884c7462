"""TradingHalt: reduce-only halts, resumes only by the approvers stored with the halt, an
audit chain that detects tampering, a store shared safely between processes, and a store
that fails safe."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from exitguard import FileHaltStore, TradingHalt, TradingHalted, halt_chain
from exitguard.compat import TradingHaltCoordinator
from exitguard.errors import HaltResumeError, HaltStoreError
from exitguard.halt import (
    ENV_KEY,
    ENV_KEY_FILE,
    HaltRecord,
    MemoryHaltStore,
    load_key,
    os_user,
    verify,
)
from exitguard.testing import FakeClock
from tests.conftest import TEST_HALT_KEY

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


def test_a_shared_memory_store_behaves_like_a_shared_file() -> None:
    store = MemoryHaltStore()
    halt = TradingHalt(APPROVERS, store=store, key=TEST_HALT_KEY)
    halt.halt("breaker")
    assert store.records is not None
    assert store.records[-1]["halted"] is True
    again = TradingHalt(APPROVERS, store=store, key=TEST_HALT_KEY)  # same store, new process
    assert again.is_halted
    assert again.history == halt.history


# -- The file store ----------------------------------------------------------------------------


def _records(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    records: list[dict[str, Any]] = data["records"]
    return records


def _write_records(path: Path, records: list[dict[str, Any]]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["records"] = records
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


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
    records = _records(path)
    assert [r["seq"] for r in records] == [0, 1]
    assert records[1]["prev"] == records[0]["mac"]  # chained
    assert records[0]["approvers"] == ["alice", "bob"]  # who may lift it, stored with it
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert all(r["os_user"].startswith(me) for r in records)  # who wrote each record


def test_file_store_writes_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    halt = TradingHalt.from_file(path, APPROVERS)
    for n in range(5):
        halt.halt(f"halt {n}")
        halt.resume("alice", f"resume {n}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["halt.json", "halt.json.lock"]
    assert len(_records(path)) == 10
    assert len(TradingHalt.from_file(path).history) == 10


def test_crash_mid_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "halt.json"
    halt = TradingHalt.from_file(path, APPROVERS)
    halt.halt("breaker opened")
    old = path.read_bytes()

    def crash(_src: object, _dst: object) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="Input/output error"):
            FileHaltStore(path).write([])
        assert path.read_bytes() == old  # the old file is intact
        assert sorted(p.name for p in tmp_path.iterdir()) == ["halt.json", "halt.json.lock"]

        # Through the coordinator: the resume holds in memory, the failure is reported, and
        # the file still says halted, so a restart comes back halted (the safe side).
        halt.resume("alice", "fixed")
        assert not halt.is_halted
        assert halt.store_error is not None
        assert "Input/output error" in halt.store_error
    assert path.read_bytes() == old
    assert TradingHalt.from_file(path, APPROVERS).is_halted


CORRUPT_FILES: list[tuple[str, bytes]] = [
    ("garbage", b"this is not json at all"),
    ("binary", b"\xff\xfe\x00\x81garbage"),
    ("empty", b""),
    ("truncated", b'{"format": "exitguard-halt/2", "records": [{"halted": tru'),
    ("list", b"[]"),
    ("null", b"null"),
    ("an older exitguard's file", b'{"halted": false, "reason": "", "history": []}'),
    ("records missing", b'{"format": "exitguard-halt/2"}'),
    ("records is a dict", b'{"format": "exitguard-halt/2", "records": {"a": 1}}'),
    ("record is a list", b'{"format": "exitguard-halt/2", "records": [[1, 2]]}'),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000),
]


@pytest.mark.parametrize(("kind", "content"), CORRUPT_FILES, ids=[k for k, _ in CORRUPT_FILES])
def test_corrupt_file_means_halted(tmp_path: Path, kind: str, content: bytes) -> None:
    path = tmp_path / "halt.json"
    path.write_bytes(content)
    with pytest.raises(HaltStoreError, match="corrupt"):
        FileHaltStore(path).read()

    halt = TradingHalt.from_file(path, APPROVERS)
    assert halt.is_halted, kind  # never "trading allowed"
    assert halt.store_error is not None
    assert str(path) in halt.store_error
    assert "corrupt" in halt.store_error
    with pytest.raises(TradingHalted):
        halt.check_entry()
    assert halt.history[-1].actor == "halt_store"

    # An approved resume (by the bot, which knows its approvers) writes a new chain.
    halt.resume("alice", "inspected and repaired the halt file")
    assert halt.store_error is None
    again = TradingHalt.from_file(path, APPROVERS)
    assert not again.is_halted
    assert again.store_error is None
    assert [(r.halted, r.actor) for r in again.history] == [(True, "halt_store"),
                                                            (False, "alice")]
    assert "a new audit chain starts here" in again.history[0].reason


def _halted_file(tmp_path: Path) -> Path:
    path = tmp_path / "halt.json"
    halt = TradingHalt.from_file(path, APPROVERS)
    halt.halt("first")
    halt.resume("alice", "ok")
    halt.halt("circuit breaker dex opened")
    return path


def _edit_halted_false(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records[-1]["halted"] = False
    return records


TAMPERING = [
    ("last record edited to halted: false", _edit_halted_false, "fails its MAC"),
    ("approvers edited", lambda r: [*r[:-1], {**r[-1], "approvers": ["mallory"]}],
     "fails its MAC"),
    ("last halt removed, the resume kept", lambda r: [*r[:-1], r[1]], "out of its chain"),
    ("a record removed in the middle", lambda r: [r[0], r[2]], "out of its chain"),
    ("records reordered", lambda r: [r[1], r[0], r[2]], "out of its chain"),
    ("a forged record appended", lambda r: [*r, {**r[1], "seq": 3, "prev": r[2]["mac"]}],
     "fails its MAC"),
    ("a MAC removed", lambda r: [*r[:-1], {k: v for k, v in r[-1].items() if k != "mac"}],
     "malformed"),
]


@pytest.mark.parametrize(("kind", "edit", "why"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_a_tampered_file_means_halted_and_says_why(
    tmp_path: Path, kind: str, edit: Any, why: str
) -> None:
    path = _halted_file(tmp_path)
    _write_records(path, edit(_records(path)))
    halt = TradingHalt.from_file(path, APPROVERS)
    assert halt.is_halted, kind
    assert halt.store_error is not None
    assert why in halt.store_error
    assert f"halt store {path} fails verification" in halt.store_error
    with pytest.raises(TradingHalted):
        halt.check_entry()
    # The CLI (no approvers of its own) cannot resume a file it cannot trust.
    cli = TradingHalt((), store=FileHaltStore(path), key=TEST_HALT_KEY)
    with pytest.raises(HaltResumeError, match="cannot say who may resume"):
        cli.resume("mallory", "looks fine to me")


def test_another_key_cannot_verify_the_file(tmp_path: Path) -> None:
    path = _halted_file(tmp_path)
    _write_records(path, _edit_halted_false(_records(path)))
    other = TradingHalt.from_file(path, APPROVERS, key="another key of 16+ bytes")
    assert other.is_halted
    assert "another key" in (other.store_error or "")


def test_the_key_is_required_with_a_store_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_KEY)
    with pytest.raises(ValueError, match="TradingHalt key") as info:
        TradingHalt.from_file(tmp_path / "halt.json", APPROVERS)
    assert ENV_KEY_FILE in str(info.value)
    TradingHalt(APPROVERS)  # in memory only: a random key of its own
    with pytest.raises(ValueError, match="shorter than 16 bytes") as short:
        load_key("s3cr3t")
    assert "s3cr3t" not in str(short.value)
    key_file = tmp_path / "halt.key"
    key_file.write_text("from-a-file-0123456789\n")
    monkeypatch.setenv(ENV_KEY_FILE, str(key_file))
    assert load_key() == b"from-a-file-0123456789"
    monkeypatch.setenv(ENV_KEY_FILE, str(tmp_path / "missing.key"))
    with pytest.raises(ValueError, match="EXITGUARD_HALT_KEY_FILE: cannot read the key file"):
        load_key()


@pytest.mark.parametrize("poll", [-1.0, float("nan"), float("inf"), True])
def test_poll_interval_is_validated(poll: float) -> None:
    TradingHalt(poll_interval=0)  # 0: look at every call
    with pytest.raises(ValueError, match="poll_interval"):
        TradingHalt(poll_interval=poll)


# -- approvers live with the halt ----------------------------------------------------------


def test_the_approvers_are_those_stored_with_the_halt_not_the_resumers(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    TradingHalt.from_file(path, ["alice"]).halt("breaker")
    # Another process (the CLI) configured with mallory cannot make mallory an approver.
    other = TradingHalt.from_file(path, ["mallory"])
    assert other.approvers_of_halt == {"alice"}
    with pytest.raises(HaltResumeError, match="'mallory' is not an approver"):
        other.resume("mallory", "let me")
    assert TradingHalt.from_file(path).is_halted
    record = TradingHalt.from_file(path).resume("alice", "venue fixed")
    assert record.os_user == os_user()
    assert not TradingHalt.from_file(path).is_halted


def test_a_halt_stored_without_approvers_is_lifted_only_in_process(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    TradingHalt.from_file(path).halt("breaker")  # the bot configured no approvers
    with pytest.raises(HaltResumeError, match="no approvers are stored with this halt"):
        TradingHalt.from_file(path).resume("alice", "please")
    TradingHalt.from_file(path, ["alice"]).resume("alice", "configured now")


# -- other processes: bounded staleness, no lost writes ----------------------------------------


def test_a_running_bot_sees_a_cli_resume_within_its_poll_interval(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    clock = FakeClock(100.0)
    bot = TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY,
                      poll_interval=1.0, clock=clock)
    resumed: list[HaltRecord] = []
    bot.on_resume(resumed.append)
    bot.halt("breaker")
    clock.advance(0.2)
    cli = TradingHalt((), store=FileHaltStore(path), key=TEST_HALT_KEY)
    cli.resume("bob", "venue fixed")
    with pytest.raises(TradingHalted):  # within the interval: the bot may still say halted
        bot.check_entry()
    clock.advance(0.8)  # one poll interval after the bot's last look
    bot.check_entry()  # seen: entries allowed
    assert not bot.is_halted
    assert [r.actor for r in resumed] == ["bob"]  # announced once (metrics, logs, hooks)
    clock.advance(5)
    bot.check_entry()
    assert len(resumed) == 1


def test_the_bots_next_write_never_erases_a_cli_resume(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    clock = FakeClock()
    bot = TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY,
                      poll_interval=3600.0, clock=clock)  # never polls in this test
    bot.halt("breaker one")
    TradingHalt.from_file(path).resume("alice", "fixed")  # the CLI
    assert bot.halt("breaker two") is True  # re-read under the lock: not halted any more
    history = TradingHalt.from_file(path).history
    assert [(r.halted, r.actor) for r in history] == [
        (True, "circuit_breaker"), (False, "alice"), (True, "circuit_breaker")]


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    # Two writers, each with a view that is never refreshed by polling, halt and resume in
    # a loop. Every write that reported success must be in the one chain, in its order.
    path = tmp_path / "halt.json"
    done: dict[str, list[tuple[bool, str]]] = {"a": [], "b": []}

    def writer(name: str) -> None:
        halt = TradingHalt([name], store=FileHaltStore(path), key=TEST_HALT_KEY,
                           poll_interval=3600.0)
        for n in range(15):
            if halt.halt(f"{name} {n}", actor=name):  # False: the other's halt is in force
                done[name].append((True, f"{name} {n}"))
            # The other writer's halt: only its approver may lift it.
            with contextlib.suppress(HaltResumeError):
                TradingHalt.from_file(path).resume(name, f"{name} {n} resumed")
                done[name].append((False, f"{name} {n} resumed"))

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    stored = _records(path)
    records, _ = verify(TEST_HALT_KEY.encode(), stored)  # one unbroken chain
    assert done["a"] or done["b"]
    for name, writes in done.items():
        mine = [(r.halted, r.reason) for r in records if r.reason.split()[0] == name]
        assert mine == writes  # nothing lost, nothing twice, in order
    assert len(records) == len(done["a"]) + len(done["b"])


def test_a_rollback_while_running_is_recorded_as_a_halt(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    clock = FakeClock()
    bot = TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY, clock=clock)
    bot.halt("breaker")
    bot.resume("alice", "fixed")
    before = path.read_bytes()
    bot.halt("breaker again")
    path.write_bytes(before)  # an old (valid) copy put back: the last halt vanishes
    halts: list[HaltRecord] = []
    resumes: list[HaltRecord] = []
    bot.on_halt(halts.append)
    bot.on_resume(resumes.append)
    clock.advance(1.0)
    with pytest.raises(TradingHalted, match="went back in time"):
        bot.check_entry()
    assert resumes == []  # the old copy's resume is not announced as a new one
    assert halts
    assert "went back in time" in halts[0].reason
    # Written down on top of what is there, with the approvers: the CLI can lift it.
    reread = TradingHalt.from_file(path)
    assert reread.is_halted
    assert reread.approvers_of_halt == {"alice", "bob"}
    assert "went back in time" in (reread.reason or "")


def test_a_halt_file_deleted_while_halted_is_written_again(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    clock = FakeClock()
    bot = TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY, clock=clock)
    bot.halt("breaker")
    path.unlink()
    clock.advance(1.0)
    assert bot.is_halted
    assert path.exists()
    again = TradingHalt.from_file(path)
    assert again.is_halted
    assert again.store_error is None


def test_tampering_while_running_halts_and_is_announced(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    clock = FakeClock()
    bot = TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY, clock=clock)
    bot.halt("breaker")
    bot.resume("alice", "fixed")
    halts: list[HaltRecord] = []
    bot.on_halt(halts.append)
    bot.check_entry()
    records = _records(path)
    records[0]["reason"] = "something else"
    _write_records(path, records)
    clock.advance(1.0)
    with pytest.raises(TradingHalted, match="fails its MAC"):
        bot.check_entry()
    assert len(halts) == 1
    assert halts[0].actor == "halt_store"


# -- incremental verification: only new records are verified, tampering still caught ---------


def _bot_and_writer(path: Path, clock: FakeClock) -> tuple[TradingHalt, TradingHalt]:
    """A bot that has verified a 3-record history, and a second process sharing the file."""
    bot = TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY, clock=clock)
    other = TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY, poll_interval=0)
    other.halt("breaker")
    other.resume("alice", "fixed")
    other.halt("breaker again")
    clock.advance(1.0)
    assert bot.is_halted  # polls the store: the three records are verified
    assert len(bot.history) == 3
    return bot, other


def test_a_reload_after_one_appended_record_verifies_that_record_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "halt.json"
    clock = FakeClock()
    bot, other = _bot_and_writer(path, clock)
    other.resume("bob", "fixed again")  # the other process appends record 3
    checked: list[int] = []
    real = halt_chain._verify_one

    def spy(key: bytes, index: int, prev: str, raw: Any) -> tuple[HaltRecord, str]:
        checked.append(index)
        return real(key, index, prev, raw)

    monkeypatch.setattr(halt_chain, "_verify_one", spy)
    clock.advance(1.0)
    bot.check_entry()  # resumed: no raise
    assert checked == [3]  # not 0, 1, 2 again
    assert [r.reason for r in bot.history] == [
        "breaker", "fixed", "breaker again", "fixed again"]
    # A process that has verified nothing yet still verifies every record.
    checked.clear()
    TradingHalt.from_file(path)
    assert checked == [0, 1, 2, 3]


def test_an_old_record_edited_after_its_prefix_was_verified_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    clock = FakeClock()
    bot, other = _bot_and_writer(path, clock)
    other.resume("bob", "fixed again")  # appended, so the reload looks like a plain extension
    records = _records(path)
    records[0]["reason"] = "something else"  # MACs kept: only record 0's own MAC is wrong
    _write_records(path, records)
    clock.advance(1.0)
    with pytest.raises(TradingHalted, match="record 0 fails its MAC"):
        bot.check_entry()
    assert bot.store_error is not None


def test_a_history_truncated_after_it_was_verified_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    clock = FakeClock()
    bot, other = _bot_and_writer(path, clock)
    other.resume("bob", "fixed again")
    clock.advance(1.0)
    bot.check_entry()
    assert len(bot.history) == 4
    _write_records(path, _records(path)[:2])  # a valid, shorter chain: rolled back
    clock.advance(1.0)
    with pytest.raises(TradingHalted, match="went back in time"):
        bot.check_entry()


# -- owner and mode survive a rewrite ----------------------------------------------------------


def test_a_rewrite_keeps_the_files_mode_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    TradingHalt.from_file(path, APPROVERS).halt("breaker")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a new file: private
    path.chmod(0o640)  # the operator lets the bot's group read it
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
        os.chown(f"{path}.lock", nobody.pw_uid, nobody.pw_gid)
    TradingHalt.from_file(path).resume("alice", "fixed")  # e.g. the CLI, run as root
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not TradingHalt.from_file(path).is_halted
    if os.geteuid() == 0:
        assert (path.stat().st_uid, path.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_a_lock_file_made_by_root_goes_to_the_halt_files_owner(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    TradingHalt.from_file(path, APPROVERS).halt("breaker")
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    Path(f"{path}.lock").unlink()
    path.chmod(0o640)  # the bot's group may read it: then it may lock it too
    TradingHalt.from_file(path).resume("alice", "fixed")
    lock = Path(f"{path}.lock").stat()
    assert (lock.st_uid, lock.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert stat.S_IMODE(lock.st_mode) == 0o640


# -- unreadable and unwritable stores ----------------------------------------------------------


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
    halt._last_save_try = 0.0  # the retry is rate-limited in wall time; no sleeping here
    halt.resume("bob", "disk cleaned")
    assert halt.store_error is None
    assert path.exists()
    assert [(r.halted, r.actor) for r in TradingHalt.from_file(path).history] == [
        (True, "circuit_breaker"), (False, "bob")]


def test_a_bad_file_moved_aside_while_running_is_replaced_by_a_halted_one(
    tmp_path: Path,
) -> None:
    # The runbook's recovery: the bot starts on a tampered file (halted, in memory), the
    # operator moves the file aside, the bot writes a fresh verified halt the CLI can lift.
    path = _halted_file(tmp_path)
    _write_records(path, _edit_halted_false(_records(path)))
    clock = FakeClock()
    bot = TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY, clock=clock)
    assert bot.is_halted
    assert bot.store_error is not None
    path.rename(tmp_path / "halt.json.bad")
    clock.advance(1.0)
    with pytest.raises(TradingHalted, match="emptied while halted"):
        bot.check_entry()
    assert bot.store_error is None
    cli = TradingHalt((), store=FileHaltStore(path), key=TEST_HALT_KEY)
    assert cli.is_halted
    assert cli.approvers_of_halt == {"alice", "bob"}
    cli.resume("bob", "file checked, moved aside")
    clock.advance(1.0)
    bot.check_entry()


def test_a_halt_that_changes_nothing_on_an_unreachable_store_is_no_write_failure(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x", encoding="utf-8")
    halt = TradingHalt.from_file(blocker / "halt.json", APPROVERS)
    error, failures = halt.store_error, halt.store_failures
    assert halt.halt("breaker again") is False  # already halted (unknown state): no write
    assert (halt.store_error, halt.store_failures) == (error, failures)


def test_the_os_user_comes_from_the_uid_not_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    name = pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert os_user() == name
    monkeypatch.setenv("SUDO_USER", "bob")
    assert os_user() == (f"{name} (sudo from bob)" if os.geteuid() == 0 else name)


def test_a_reason_quoting_a_secret_is_stored_redacted(tmp_path: Path) -> None:
    """A breaker's halt reason quotes the venue's last error, which may carry a key: the halt
    file (read by people, printed by the CLI, kept for the audit) never holds it."""
    path = tmp_path / "halt.json"
    halt = TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY)
    halt.halt("breaker dex opened: GET https://rpc.example/v2/AbCdEf0123456789XyZ"
              "?api_key=Sekr3tKey99 failed")
    halt.resume(APPROVERS[0], "fixed; old token was Authorization: Bearer Tok3nValue.abc.def")
    stored = path.read_text()
    for secret in ("AbCdEf0123456789XyZ", "Sekr3tKey99", "Tok3nValue.abc.def"):
        assert secret not in stored
    assert "breaker dex opened" in stored
    assert not TradingHalt(APPROVERS, store=FileHaltStore(path), key=TEST_HALT_KEY).is_halted
