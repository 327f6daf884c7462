"""``exitguard halt status|resume``: distinct exit codes, approvers stored with the halt, the
resume command printed in the page, the status and the runbook works when pasted, and text
from the file reaches the terminal escaped."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exitguard import ExitGuard
from exitguard.cli import main
from exitguard.halt import ENV_KEY, ENV_KEY_FILE, FileHaltStore, TradingHalt
from exitguard.testing import FakeClock, ScriptedVenue
from tests.conftest import TEST_HALT_KEY
from tests.support import REPO
from tests.support.servers import WebhookSink, webhook_sink


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("exitguard: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def halted_file(tmp_path: Path, reason: str = "circuit breaker sim-dex opened",
                approvers: tuple[str, ...] = ("alice", "bob")) -> Path:
    path = tmp_path / "halt.json"
    TradingHalt.from_file(path, approvers).halt(reason)
    return path


def me() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


# -- exit codes ---------------------------------------------------------------------------------


def test_status_exit_codes_are_distinct(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    path = halted_file(tmp_path)
    code, out, _ = run(capsys, "halt", "status", "--file", str(path))
    assert code == 1
    assert "trading: HALTED" in out
    assert "circuit breaker sim-dex opened" in out
    assert "May resume: alice, bob" in out

    TradingHalt.from_file(path).resume("alice", "fixed")
    code, out, _ = run(capsys, "halt", "status", "--file", str(path))
    assert code == 0
    assert out.startswith("trading: allowed")

    missing = tmp_path / "hlat.json"  # mistyped
    code, out, _ = run(capsys, "halt", "status", "--file", str(missing))
    assert code == 3
    assert "trading: UNKNOWN" in out
    assert "--missing-ok" in out
    code, out, _ = run(capsys, "halt", "status", "--file", str(missing), "--missing-ok")
    assert code == 0
    assert "never halted" in out

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    code, out, _ = run(capsys, "halt", "status", "--file", str(corrupt))
    assert code == 3
    assert "HALTED" in out
    assert "cannot be trusted" in out
    assert "corrupt" in out


def test_status_json_carries_the_exit_code(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    path = halted_file(tmp_path)
    code, out, _ = run(capsys, "halt", "status", "--file", str(path), "--json")
    data = json.loads(out)
    assert code == data["exit_code"] == 1
    assert data["halted"] is True
    assert data["verified"] is True
    assert data["approvers"] == ["alice", "bob"]
    assert data["history"][0]["os_user"].startswith(me())
    code, out, _ = run(capsys, "halt", "status", "--file", str(tmp_path / "none.json"),
                       "--json")
    assert code == json.loads(out)["exit_code"] == 3


def test_a_hand_edited_halted_false_is_reported_as_tampered(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = halted_file(tmp_path)
    data = json.loads(path.read_text())
    data["records"][-1]["halted"] = False
    path.write_text(json.dumps(data))
    code, out, _ = run(capsys, "halt", "status", "--file", str(path))
    assert code == 3
    assert "trading: HALTED" in out
    assert "record 0 fails its MAC" in out
    code, _, err = run(capsys, "halt", "resume", "--file", str(path), "--approver", "alice",
                       "--reason", "ok")
    assert code == 3
    assert_one_line_error(err, "fails its MAC")


def test_the_key_is_needed_and_the_wrong_key_fails_verification(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = halted_file(tmp_path)
    monkeypatch.delenv(ENV_KEY)
    code, _, err = run(capsys, "halt", "status", "--file", str(path))
    assert code == 2
    assert_one_line_error(err, "--key-file", ENV_KEY_FILE)
    key_file = tmp_path / "halt.key"
    key_file.write_text(TEST_HALT_KEY + "\n")
    code, _, _ = run(capsys, "halt", "status", "--file", str(path), "--key-file", str(key_file))
    assert code == 1  # the right key: verified, halted
    key_file.write_text("some other key, long enough\n")
    monkeypatch.setenv(ENV_KEY_FILE, str(key_file))
    code, out, err = run(capsys, "halt", "status", "--file", str(path))
    assert code == 3
    assert "another key" in out
    assert "some other key" not in out + err


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXITGUARD_HALT_FILE", raising=False)
    code, _, err = run(capsys, "halt", "status")
    assert code == 2
    assert_one_line_error(err, "--file", "EXITGUARD_HALT_FILE")
    code, _, err = run(capsys, "halt", "status", "--file", str(tmp_path))
    assert code == 2
    assert_one_line_error(err, "is a directory")


# -- who may resume -----------------------------------------------------------------------------


def test_a_self_declared_approver_list_is_refused(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    path = halted_file(tmp_path)
    code, _, err = run(capsys, "halt", "resume", "--file", str(path), "--approvers", "mallory",
                       "--approver", "mallory", "--reason", "let me")
    assert code == 2
    assert_one_line_error(err, "--approvers is gone", "stored with the halt")
    code, _, err = run(capsys, "halt", "resume", "--file", str(path), "--approver", "mallory",
                       "--reason", "let me")
    assert code == 1
    assert_one_line_error(err, "'mallory' is not an approver")
    assert TradingHalt.from_file(path).is_halted


def test_a_resume_records_the_approver_and_the_os_user(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = halted_file(tmp_path)
    monkeypatch.setenv("USER", "alice")  # $USER is not who runs the command
    monkeypatch.setenv("EXITGUARD_HALT_FILE", str(path))
    code, out, _ = run(capsys, "halt", "resume", "--approver", "bob", "--reason",
                       "RPC provider fixed")
    assert code == 0
    assert f"trading resumed by bob (OS user {me()}" in out
    last = TradingHalt.from_file(path).history[-1]
    assert (last.halted, last.actor, last.reason) == (False, "bob", "RPC provider fixed")
    assert last.os_user.startswith(me())
    code, out, _ = run(capsys, "halt", "status")
    assert code == 0
    assert f"resume  bob (OS user {me()}" in out
    code, _, err = run(capsys, "halt", "resume", "--approver", "bob", "--reason", "again")
    assert code == 1
    assert_one_line_error(err, "not halted")
    code, _, err = run(capsys, "halt", "resume", "--file", str(tmp_path / "none.json"),
                       "--approver", "bob", "--reason", "ok")
    assert code == 3
    assert_one_line_error(err, "no halt file")


# -- terminal safety ----------------------------------------------------------------------------


def test_status_escapes_control_characters(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    forged = "\x1b[2K\rtrading: allowed"
    TradingHalt.from_file(path, ["alice"]).halt(forged, actor="venue\x1b]52;c;ZXZpbA==\x07")
    code, out, _ = run(capsys, "halt", "status", "--file", str(path))
    assert code == 1
    assert "\x1b" not in out
    assert "\r" not in out
    assert "\x07" not in out
    assert "\\x1b[2K\\rtrading: allowed" in out
    assert "venue\\x1b]52;c;ZXZpbA==\\x07" in out
    assert out.startswith("trading: HALTED")
    code, out, _ = run(capsys, "halt", "status", "--file", str(path), "--json")
    assert "\x1b" not in out
    assert "\r" not in out
    assert json.loads(out)["reason"] == forged


# -- the printed resume command works when pasted ----------------------------------------------


def _fill_in(command: str, approver: str) -> list[str]:
    """The command as an operator pastes it: NAME replaced by their name, nothing else."""
    argv = shlex.split(command)
    assert argv.count("NAME") == 1, command
    return [approver if word == "NAME" else word for word in argv]


def test_the_command_printed_by_status_works_when_pasted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    directory = tmp_path / "my bot's state"  # a path that needs quoting
    directory.mkdir()
    path = halted_file(directory)
    code, out, _ = run(capsys, "halt", "status", "--file", str(path))
    assert code == 1
    command = out.split("resume with (NAME = one of them): ", 1)[1].splitlines()[0]
    argv = _fill_in(command, "alice")
    assert argv[:3] == ["exitguard", "halt", "resume"]
    code, out, err = run(capsys, *argv[1:])
    assert code == 0, err
    assert not TradingHalt.from_file(path).is_halted


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    with webhook_sink() as server:
        yield server


def test_the_command_in_the_page_works_when_pasted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sink: WebhookSink
) -> None:
    from prometheus_client import CollectorRegistry

    from exitguard.alerting.pager import Pager

    path = tmp_path / "halt.json"
    clock = FakeClock()
    halt = TradingHalt(["alice", "bob"], store=FileHaltStore(path), key=TEST_HALT_KEY,
                       clock=clock)
    host = sink.url().partition("://")[2]
    pager = Pager([f"json://{host}/pages"], registry=CollectorRegistry())
    try:
        guard = ExitGuard(ScriptedVenue(), halt=halt, hooks=pager, name="bot")
        halt.halt("circuit breaker dex opened")
        asyncio.run(pager.drain())
        body: Any = sink.wait_for_requests("/pages")[0].json()
    finally:
        pager.close(timeout=2)
    text = json.dumps(body)  # every string of the page
    message = body["message"]
    found = re.search(r"resume with `([^`]+)` \(NAME: one of alice, bob\)", message)
    assert found, text
    argv = _fill_in(found.group(1), "bob")
    assert f"--file {shlex.quote(str(path.resolve()))}" in found.group(1)
    code, _, err = run(capsys, *argv[1:])
    assert code == 0, err
    clock.advance(1.0)  # the bot's poll interval
    guard.check_entry()  # the running bot resumed
    assert halt.history[-1].actor == "bob"


def _runbook_resume_command() -> str:
    text = (REPO / "docs" / "runbooks.md").read_text(encoding="utf-8")
    section = text.split("## ExitguardTradingHalted", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines()
             if line.strip().startswith("exitguard halt resume")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_command_in_the_runbook_works_when_pasted_in_a_shell(tmp_path: Path) -> None:
    path = halted_file(tmp_path)
    command = _runbook_resume_command().replace("NAME", "alice", 1)
    key_file = tmp_path / "halt.key"
    key_file.write_text(TEST_HALT_KEY)
    env = {k: v for k, v in os.environ.items() if k != ENV_KEY}  # as the runbook says
    env.update({"EXITGUARD_HALT_FILE": str(path), ENV_KEY_FILE: str(key_file),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "trading resumed by alice" in done.stdout
    assert not TradingHalt.from_file(path).is_halted


BOT = """
import sys, time
from exitguard import TradingHalt, TradingHalted
halt = TradingHalt.from_file(sys.argv[1], ["alice"], poll_interval=0.2)
halt.halt("circuit breaker dex opened")
print("halted", flush=True)
while True:
    try:
        halt.check_entry()
    except TradingHalted:
        time.sleep(0.05)
        continue
    print("entries allowed, resumed by", halt.history[-1].actor, flush=True)
    break
"""


def test_a_running_bot_process_sees_a_resume_from_the_cli_process(tmp_path: Path) -> None:
    path = tmp_path / "halt.json"
    bot = subprocess.Popen([sys.executable, "-c", BOT, str(path)], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        assert bot.stdout is not None
        assert bot.stdout.readline().strip() == "halted"
        done = subprocess.run([sys.executable, "-m", "exitguard", "halt", "resume", "--file",
                               str(path), "--approver", "alice", "--reason", "fixed"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        # No restart: the running bot reads the resume from the file by itself.
        out, _ = bot.communicate(timeout=60)
        assert out.strip() == "entries allowed, resumed by alice"
    finally:
        if bot.poll() is None:
            bot.kill()
            bot.wait(timeout=10)
