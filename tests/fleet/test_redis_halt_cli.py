"""``exitguard halt status|resume --redis``: an SRE lifts a fleet's halt from a shell, with the
command the halt itself prints, against a real redis-server; the fleet's processes see it."""

from __future__ import annotations

import shlex

import pytest

pytest.importorskip("redis")

from exitguard.cli import main
from exitguard.fleet import RedisHaltStore, shared_halt
from tests.support.servers import RedisServer, wait_until


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_fleet_halt_is_shown_and_lifted_with_the_printed_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
) -> None:
    bots = [shared_halt(redis_server.url, ["alice", "bob"], name="desk-a", namespace="t")
            for _ in range(2)]
    try:
        bots[0].halt("breaker dex opened")
        wait_until(lambda: bots[1].is_halted, 10)
        monkeypatch.setenv("EXITGUARD_REDIS_URL", redis_server.url)

        code, out, _ = run(capsys, "halt", "status", "--redis", "--halt-name", "desk-a",
                           "--namespace", "t")
        assert code == 1, out  # halted
        assert "trading: HALTED" in out
        assert "breaker dex opened" in out
        assert "May resume: alice, bob" in out
        command = bots[1].resume_command()
        assert command is not None
        assert f"resume with (NAME = one of them): {command}" in out

        argv = [("bob" if word == "NAME" else word) for word in shlex.split(command)]
        code, out, err = run(capsys, *argv[1:])  # as pasted, NAME filled in
        assert code == 0, err
        assert "trading resumed by bob" in out
        wait_until(lambda: not bots[0].is_halted and not bots[1].is_halted, 10)
        assert bots[0].history[-1].actor == "bob"

        code, out, _ = run(capsys, "halt", "status", "--redis", "--halt-name", "desk-a",
                           "--namespace", "t")
        assert (code, out.splitlines()[0]) == (0, "trading: allowed")
    finally:
        for bot in bots:
            store = bot.store
            assert isinstance(store, RedisHaltStore)
            store.close()


def test_an_approver_not_stored_with_the_fleet_halt_is_refused(
    capsys: pytest.CaptureFixture[str], redis_server: RedisServer,
) -> None:
    bot = shared_halt(redis_server.url, ["alice"], name="desk-b", namespace="t")
    try:
        bot.halt("breaker dex opened")
        code, _, err = run(capsys, "halt", "resume", "--redis", redis_server.url,
                           "--halt-name", "desk-b", "--namespace", "t",
                           "--approver", "mallory", "--reason", "let me in")
        assert code == 1, err
        assert "mallory" in err
        assert bot.is_halted
    finally:
        store = bot.store
        assert isinstance(store, RedisHaltStore)
        store.close()


def test_a_redis_url_with_a_password_on_the_command_line_is_refused_unechoed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "halt", "status", "--redis",
                       "redis://:Sup3rSecretPw@127.0.0.1:6390/0")
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "EXITGUARD_REDIS_URL" in err
    assert "Sup3rSecretPw" not in err


def test_a_fleet_halt_that_was_never_written_is_unknown_not_allowed(
    capsys: pytest.CaptureFixture[str], redis_server: RedisServer,
) -> None:
    code, out, _ = run(capsys, "halt", "status", "--redis", redis_server.url,
                       "--halt-name", "nobody-wrote-me", "--namespace", "t")
    assert code == 3, out
    code, out, _ = run(capsys, "halt", "status", "--redis", redis_server.url,
                       "--halt-name", "nobody-wrote-me", "--namespace", "t", "--missing-ok")
    assert code == 0, out
