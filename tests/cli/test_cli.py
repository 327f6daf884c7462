"""The ``exitguard`` command: output, exit codes, and one clear line for every error."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exitguard.cli import main
from tests.support import REPO


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("exitguard: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- help -------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("demo", "simulate", "halt", "dashboards", "alerts", "examples:"):
        assert command in out


@pytest.mark.parametrize(("argv", "needles"), [
    (("demo",), ("--scenario", "--seed", "--serve", "--port", "--otlp-endpoint", "incident",
                 "double-sell", "60 s")),
    (("simulate",), ("--runs", "--seed", "--json", "--plot", "no reconciliation",
                     "--serve")),
    (("halt",), ("status", "resume")),
    (("halt", "resume"), ("--approver", "--reason", "--file", "--key-file", "exit codes")),
    (("halt", "status"), ("--file", "--json", "--missing-ok", "exit codes", "3  the halt file")),
    (("dashboards",), ("build|check", "--out", "--datasource-uid", "--job", "--title")),
    (("alerts",), ("build|check", "--out", "--job", "--runbook-base-url", "alertmanager.yml")),
])
def test_each_command_has_useful_help(capsys: pytest.CaptureFixture[str],
                                      argv: tuple[str, ...], needles: tuple[str, ...]) -> None:
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    for needle in needles:
        assert needle in out, needle


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "demo" in err
    assert "simulate" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("exitguard ")


# -- bad arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "needle"), [
    (("simulate", "--runs", "-5"), "--runs"),
    (("simulate", "--runs", "0"), "--runs"),
    (("simulate", "--runs", "many"), "--runs"),
    (("simulate", "--seed", "-1"), "--seed"),
    (("demo", "--scenario", "nope"), "unknown scenario 'nope'"),
    (("demo", "--seed", "x"), "--seed"),
    (("demo", "--serve", "--port", "70000"), "--port"),
    (("demo", "--serve", "--port", "-1"), "--port"),
    (("demo", "--serve", "--otlp-endpoint", "localhost:4318"), "--otlp-endpoint"),
    (("demo", "--serve", "--duration", "0"), "--duration"),
    (("demo", "--bogus"), "--bogus"),
    (("frobnicate",), "frobnicate"),
    (("halt",), "status or resume"),
    (("halt", "resume", "--file", "x.json", "--reason", "ok"), "--approver"),
    (("halt", "resume", "--file", "x.json", "--approver", "a", "--reason", " "), "--reason"),
    (("dashboards", "publish"), "publish"),
    (("alerts",), "build|check"),
])
def test_bad_arguments_get_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                               argv: tuple[str, ...], needle: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert_one_line_error(err, needle)


@pytest.mark.parametrize("argv", [
    ("demo", "--port", "9999"),
    ("simulate", "--runs", "3", "--otlp-endpoint", "http://127.0.0.1:4318"),
    ("demo", "--serve", "--json"),
    ("simulate", "--serve", "--plot", "x.png"),
    ("simulate", "--serve", "--runs", "5"),
    ("demo", "--serve", "--scenario", "calm"),
])
def test_serve_options_need_serve_and_vice_versa(capsys: pytest.CaptureFixture[str],
                                                 argv: tuple[str, ...]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert_one_line_error(err)


# -- demo ---------------------------------------------------------------------------------------


def _row(out: str, label: str) -> list[str]:
    line = next(line for line in out.splitlines() if label in line)
    return [cell.strip() for cell in re.split(r"[│|]", line) if cell.strip()]


def test_demo_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo")
    assert code == 0, err
    for label in ("realized loss", "time to exit", "attempts", "transactions sent",
                  "double-sells", "naive (seed)", "exitguard"):
        assert label in out
    naive, guarded = (float(cell.rstrip(" %")) for cell in _row(out, "realized loss")[1:])
    assert naive >= 15.0
    assert guarded <= 7.0


def test_demo_json_matches_the_thresholds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--json", "--seed", "4")
    assert code == 0
    data = json.loads(out)
    assert data["scenario"] == "incident"
    assert data["seed"] == 4
    assert data["naive"]["realized_loss_pct"] >= 15.0
    assert data["guarded"]["realized_loss_pct"] <= 7.0
    assert data["guarded"]["double_sells"] == 0


def test_demo_other_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--scenario", "double-sell")
    assert code == 0
    assert "sold too many" in out


def test_python_dash_m_demo_runs_in_under_5_seconds() -> None:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "exitguard", "demo"], capture_output=True,
                          text=True, timeout=60, check=False)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "realized loss" in done.stdout
    assert elapsed < 5.0


# -- simulate -----------------------------------------------------------------------------------


def test_simulate_prints_the_percentile_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "simulate", "--runs", "20", "--seed", "3")
    assert code == 0
    for label in ("loss p50", "loss p95", "loss p99", "exit p99", "failed", "double-sold",
                  "naive (seed)", "exitguard", "no deadline", "no escalation",
                  "no reconciliation", "no breaker"):
        assert label in out, label
    assert re.search(r"20 runs x 6 executors in [\d.]+ s \(\d+ runs/s\)", err)


def test_simulate_same_seed_same_table(capsys: pytest.CaptureFixture[str]) -> None:
    _, first, _ = run(capsys, "simulate", "--runs", "15", "--seed", "9", "--json")
    _, second, _ = run(capsys, "simulate", "--runs", "15", "--seed", "9", "--json")
    _, other, _ = run(capsys, "simulate", "--runs", "15", "--seed", "10", "--json")
    assert first == second
    assert first != other
    data = json.loads(first)
    assert data["runs"] == 15
    assert data["seed"] == 9
    assert set(data["variants"]) == {"naive", "guarded", "no-deadline", "no-escalation",
                                     "no-reconciliation", "no-breaker"}
    for figures in data["variants"].values():
        assert set(figures["loss_pct"]) == {"p50", "p95", "p99", "mean"}
        assert set(figures["exit_time_s"]) == {"p50", "p95", "p99"}
        assert 0.0 <= figures["failure_rate"] <= 1.0


def test_simulate_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "dist.png"
    code, _, err = run(capsys, "simulate", "--runs", "10", "--plot", str(target))
    assert code == 0, err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {target}" in err


@pytest.mark.parametrize(("target", "needle"), [
    ("missing-dir/dist.png", "does not exist"),
    ("file.txt/dist.png", "does not exist"),
    ("dist.xyz", "unknown image format"),
    (".", "directory"),
])
def test_simulate_unwritable_plot_path(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       target: str, needle: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    started = time.perf_counter()
    code, out, err = run(capsys, "simulate", "--runs", "1000", "--plot",
                         str(tmp_path / target))
    assert code == 2
    assert out == ""
    assert_one_line_error(err, needle)
    assert time.perf_counter() - started < 2  # refused before running anything


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_simulate_plot_in_a_read_only_directory(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run(capsys, "simulate", "--runs", "5", "--plot", str(locked / "x.png"))
    assert code == 2
    assert_one_line_error(err, "permission denied")


def test_simulate_plot_without_matplotlib(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run(capsys, "simulate", "--runs", "5", "--plot", "x.png")
    assert code == 2
    assert_one_line_error(err, "matplotlib", "pip install 'exitguard[plot]'")


# -- halt: see test_halt_cli.py -------------------------------------------------------------


# -- dashboards and alerts ------------------------------------------------------------------------


def test_dashboards_build_then_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "dash"
    code, out, err = run(capsys, "dashboards", "build", "--out", str(out_dir))
    assert code == 0, err
    written = sorted(out_dir.glob("*.json"))
    assert written
    assert all(f"wrote {path}" in out for path in written)
    code, out, _ = run(capsys, "dashboards", "check", "--out", str(out_dir))
    assert code == 0
    assert "up to date" in out
    written[0].write_text("{}\n")
    code, out, err = run(capsys, "dashboards", "check", "--out", str(out_dir))
    assert code == 1
    assert str(written[0]) in out
    assert "exitguard dashboards build" in err


def test_dashboards_options_are_passed_on(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    options = ["--datasource-uid", "prom-x", "--job", "mybot", "--title", "My exits"]
    code, _, _ = run(capsys, "dashboards", "build", "--out", str(tmp_path), *options)
    assert code == 0
    text = "".join(p.read_text() for p in tmp_path.glob("*.json"))
    assert "prom-x" in text
    assert "mybot" in text
    assert "My exits" in text
    code, _, _ = run(capsys, "dashboards", "check", "--out", str(tmp_path), *options)
    assert code == 0
    code, _, _ = run(capsys, "dashboards", "check", "--out", str(tmp_path))
    assert code == 1


def test_dashboards_module_failing_to_import(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "exitguard.artefacts.dashboards", None)
    code, _, err = run(capsys, "dashboards", "build", "--out", str(tmp_path))
    assert code == 2
    assert_one_line_error(err, "dashboards")
    code, _, _ = run(capsys, "demo", "--json")  # the rest of the command still works
    assert code == 0


def test_alerts_build_then_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    alerts_dir = tmp_path / "alerts"
    rules = alerts_dir / "exitguard.rules.yml"
    code, out, err = run(capsys, "alerts", "build", "--out", str(alerts_dir))
    assert code == 0, err
    assert rules.is_file()
    assert f"wrote {rules}" in out
    code, out, _ = run(capsys, "alerts", "check", "--out", str(alerts_dir))
    assert code == 0
    assert "up to date" in out
    rules.write_text(rules.read_text().replace("severity: critical", "severity: info", 1))
    code, out, _ = run(capsys, "alerts", "check", "--out", str(alerts_dir))
    assert code == 1
    assert str(rules) in out
    code, out, _ = run(capsys, "alerts", "check", "--out", str(tmp_path / "nope"))
    assert code == 1
    assert "missing" in out


def test_alerts_build_writes_and_check_checks_the_alertmanager_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """alerts/README.md and the file's header say `alerts build` writes alertmanager.yml."""
    config = tmp_path / "alertmanager.yml"
    code, out, err = run(capsys, "alerts", "build", "--out", str(tmp_path))
    assert code == 0, err
    assert f"wrote {config}" in out
    assert config.read_text() == (REPO / "alerts" / "alertmanager.yml").read_text()
    assert "`exitguard alerts build`" in config.read_text().splitlines()[0]
    config.write_text(config.read_text().replace("repeat_interval: 1h", "repeat_interval: 9h"))
    code, out, _ = run(capsys, "alerts", "check", "--out", str(tmp_path))
    assert code == 1
    assert f"{config}: route differs from the code" in out


def test_alerts_out_is_a_directory_not_the_old_rule_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "alerts", "build", "--out", str(tmp_path / "rules.yml"))
    assert code == 2
    assert_one_line_error(err, "--out is the alerts directory")
    assert not (tmp_path / "rules.yml").exists()


def test_one_job_knob_for_the_rules_and_the_dashboards(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """docs/stack.md: with another job name, rebuild with --job; TargetDown must follow it."""
    job = "my-bots.prod"
    code, _, err = run(capsys, "alerts", "build", "--out", str(tmp_path / "a"), "--job", job)
    assert code == 0, err
    code, _, err = run(capsys, "dashboards", "build", "--out", str(tmp_path / "d"), "--job", job)
    assert code == 0, err
    rules = yaml.safe_load((tmp_path / "a" / "exitguard.rules.yml").read_text())
    target_down = next(r for g in rules["groups"] for r in g["rules"]
                       if r["alert"] == "ExitguardTargetDown")
    # PromQL string "my-bots\\.prod" is the regex my-bots\.prod: exactly that job.
    assert target_down["expr"] == 'up{job=~"my-bots\\\\.prod"} == 0'
    dashboard = json.loads((tmp_path / "d" / "exit-health.json").read_text())
    job_variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "job")
    assert job_variable["current"]["value"] == job
    # check with the same knob is clean; without it, the job's rule differs.
    assert run(capsys, "alerts", "check", "--out", str(tmp_path / "a"), "--job", job)[0] == 0
    code, out, _ = run(capsys, "alerts", "check", "--out", str(tmp_path / "a"))
    assert code == 1
    assert "ExitguardTargetDown" in out


def test_runbook_base_url_is_configurable(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    base = "https://wiki.example.org/ops/exitguard-runbooks"
    code, _, err = run(capsys, "alerts", "build", "--out", str(tmp_path),
                       "--runbook-base-url", base)
    assert code == 0, err
    rules = yaml.safe_load((tmp_path / "exitguard.rules.yml").read_text())
    urls = [r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"]]
    assert urls
    assert all(url == f"{base}#{r['alert'].lower()}"
               for url, r in zip(urls, (r for g in rules["groups"] for r in g["rules"]),
                                 strict=True))
    code, _, err = run(capsys, "alerts", "build", "--out", str(tmp_path),
                       "--runbook-base-url", "docs/runbooks.md#top")
    assert code == 2
    assert_one_line_error(err, "--runbook-base-url")


@pytest.mark.parametrize(("command", "options"), [
    ("dashboards", ["--datasource-uid", "prom-x", "--job", "my bots", "--title", "My exits"]),
    ("alerts", ["--job", "my bots", "--runbook-base-url", "https://wiki.example.org/rb"]),
])
def test_check_prints_the_exact_build_command_with_the_flags_used(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, options: list[str]
) -> None:
    out_dir = tmp_path / "generated files"
    code, _, err = run(capsys, command, "check", "--out", str(out_dir), *options)
    assert code == 1
    fix = err.strip().splitlines()[-1].partition("regenerate with: ")[2]
    assert fix == shlex.join(["exitguard", command, "build", "--out", str(out_dir), *options])
    # Pasted, it fixes the drift.
    assert run(capsys, *shlex.split(fix)[1:])[0] == 0
    assert run(capsys, command, "check", "--out", str(out_dir), *options)[0] == 0


def test_alerts_module_failing_to_import(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "exitguard.artefacts.alerts", None)
    code, _, err = run(capsys, "alerts", "check")
    assert code == 2
    assert_one_line_error(err, "alert rules")


def test_the_committed_files_are_up_to_date(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    if not (REPO / "alerts" / "exitguard.rules.yml").is_file():
        pytest.skip("no committed rule file in this checkout")
    assert run(capsys, "alerts", "check")[0] == 0


# -- --serve --------------------------------------------------------------------------------------


def _start_serve(*extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "exitguard", *extra], stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL, text=True, cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("EXITGUARD_PAGER")},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        found = re.search(r"metrics on (http://[^\s;]+)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError(f"--serve did not start: {proc.stderr.read()}")


@pytest.fixture
def serving() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_serves_metrics_and_stops_cleanly(serving: list[subprocess.Popen[str]],
                                                signum: signal.Signals) -> None:
    proc, url = _start_serve("demo", "--serve", "--port", "0")
    serving.append(proc)
    assert url.startswith("http://127.0.0.1:")
    body = ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and 'outcome="closed"' not in body:
        time.sleep(0.5)
        body = _scrape(url)
    assert 'exitguard_exits_total{guard="demo",outcome="closed"}' in body
    assert 'exitguard_circuit_breaker_state{breaker="sim-dex",guard="demo"}' in body
    proc.send_signal(signum)
    assert proc.wait(timeout=20) == 0
    assert proc.stderr is not None
    rest = proc.stderr.read()
    assert "Traceback" not in rest
    with pytest.raises(OSError, match="refused"):
        _scrape(url)


def test_simulate_serve_stops_after_its_duration(serving: list[subprocess.Popen[str]]) -> None:
    proc, url = _start_serve("simulate", "--serve", "--port", "0", "--duration", "3")
    serving.append(proc)
    assert "exitguard_exits_in_flight" in _scrape(url)
    assert proc.wait(timeout=30) == 0


def test_serve_on_a_port_in_use_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "exitguard", "demo", "--serve", "--port", str(port)],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("exitguard: error:")]
    assert len(errors) == 1, done.stderr
    assert str(port) in errors[0]
    assert "in use" in errors[0]
    assert "Traceback" not in done.stderr


def test_serve_on_an_address_that_cannot_be_bound_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exitguard", "demo", "--serve", "--bind", "203.0.113.7",
         "--port", "0"], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "exitguard: error: " in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_exports_traces_to_the_otlp_endpoint(serving: list[subprocess.Popen[str]]) -> None:
    from tests.support.otlp_receiver import OtlpReceiver

    with OtlpReceiver() as receiver:
        proc, _ = _start_serve("demo", "--serve", "--port", "0", "--otlp-endpoint",
                               receiver.endpoint)
        serving.append(proc)
        spans = receiver.wait_for(
            lambda spans: any(s.name == "exitguard.exit" for s in spans), timeout=30
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    exits = [s for s in spans if s.name == "exitguard.exit"]
    assert exits[0].resource.get("service.name") == "exitguard-demo"
    assert any(s.name == "exitguard.exit.attempt" for s in spans)


def test_serve_without_telemetry_exits_2(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "exitguard.telemetry", None)
    monkeypatch.delitem(sys.modules, "exitguard.sim.serve", raising=False)  # import it afresh
    code, _, err = run(capsys, "demo", "--serve", "--port", "0", "--duration", "1")
    assert code == 2
    assert_one_line_error(err, "--serve needs exitguard.telemetry")
