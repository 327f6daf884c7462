"""The local stack: Prometheus, Alertmanager, a page receiver and the demo bot, without Docker.

``exitguard stack up`` runs the parts of the monitoring stack that exist as local programs,
wired together on free 127.0.0.1 ports chosen at run time:

    demo bot (/metrics) ◀─scrape── Prometheus (generated rules) ──alerts──▶ Alertmanager
                                                                                │
                        page receiver (stand-in for Slack and Discord) ◀──pages─┘

Every generated file (rules, Alertmanager config for the installed Alertmanager's version,
Prometheus config), every log, every data directory and ``state.json`` live in one state
directory. ``state.json`` records each started process (pid, start time, command line, port)
as soon as it starts, so :func:`down` stops exactly those processes, also after ``up`` or the
machine crashed; a pid that now belongs to another program is never signalled. Nothing binds
a port it did not pick, and nothing listens beyond 127.0.0.1. There is no authentication:
loopback only is the protection (the compose stack is the one with basic auth).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import exitguard
from exitguard.filestore import PRIVATE, atomic_write_text

from ..artefacts.alertmanager import (
    DISCORD_URL_FILE_MIN_VERSION,
    RouteTimings,
    write_alertmanager_config,
)
from ..artefacts.alerts import ALERTMANAGER_FILE, RULES_FILE
from ..artefacts.rules import write_rules
from . import procs
from .procs import ProcessRecord
from .receiver import LABEL, jsonl_path

STATE_FILE = "state.json"
PAGE_LOG = "pages.log"
#: The scrape job of the demo bot: the dashboards' and rules' default job.
JOB = "exitguard"
#: Part names, in start order (``down`` stops them in reverse).
RECEIVER, ALERTMANAGER, BOT, PROMETHEUS = "receiver", "alertmanager", "bot", "prometheus"
#: The message templates the Alertmanager config names (hand-written, in the repository).
TEMPLATES = Path("alerts") / "templates" / "exitguard.tmpl"

#: Each program: the names it goes by on PATH, and the Debian package that ships it.
PROGRAMS: dict[str, tuple[tuple[str, ...], str]] = {
    PROMETHEUS: (("prometheus",), "prometheus"),
    ALERTMANAGER: (("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager"),
}


class StackError(Exception):
    """The stack cannot be started, stopped or read; the message says why and what to do."""


def default_dir() -> Path:
    """``$XDG_STATE_HOME/exitguard/stack`` (``~/.local/state/exitguard/stack`` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "exitguard" / "stack"


@dataclass(frozen=True, slots=True)
class Programs:
    prometheus: str
    alertmanager: str
    alertmanager_version: tuple[int, int, int]


def _version(binary: str) -> tuple[int, int, int]:
    try:
        result = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"cannot run {binary} --version: {exc}") from None
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", result.stdout + result.stderr)
    if not match:
        raise StackError(f"cannot read the version of {binary} from its --version output")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def find_programs() -> Programs:
    """Prometheus and Alertmanager from PATH; refuses, naming the Debian package, without."""
    found: dict[str, str] = {}
    missing = []
    for part, (names, package) in PROGRAMS.items():
        path = next((p for p in map(shutil.which, names) if p is not None), None)
        if path is None:
            missing.append(f"{' or '.join(names)} (Debian package {package})")
        else:
            found[part] = path
    if missing:
        packages = " ".join(PROGRAMS[p][1] for p in PROGRAMS if p not in found)
        raise StackError(f"not found on PATH: {'; '.join(missing)}. Install with"
                         f" `sudo apt-get install {packages}` (or `bash scripts/setup --dev`),"
                         " or put the upstream binaries on PATH")
    return Programs(found[PROMETHEUS], found[ALERTMANAGER], _version(found[ALERTMANAGER]))


def find_templates() -> Path:
    """The repository's Alertmanager message templates: beside the sources of this exitguard
    (a clone, installed editable) or under the working directory."""
    checkout = Path(exitguard.__file__).resolve().parents[2]
    for root in (checkout, Path.cwd()):
        if (root / TEMPLATES).is_file():
            return root / TEMPLATES
    raise StackError(f"the Alertmanager message templates ({TEMPLATES}) were not found: run"
                     " `exitguard stack up` from a clone of the exitguard repository")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (held open together, so distinct)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


# --- the state file -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackState:
    directory: Path
    parts: tuple[ProcessRecord, ...]
    page_log: Path
    fast: bool = False
    start_phase: str | None = None

    def part(self, name: str) -> ProcessRecord | None:
        return next((p for p in self.parts if p.name == name), None)

    def to_json(self) -> str:
        return json.dumps({
            "version": 1, "page_log": str(self.page_log), "fast": self.fast,
            "start_phase": self.start_phase, "parts": [p.to_json() for p in self.parts],
        }, indent=2) + "\n"


def state_path(directory: Path) -> Path:
    return directory / STATE_FILE


def load_state(directory: Path) -> StackState | None:
    """The recorded stack in ``directory``, or None when there is none."""
    path = state_path(directory)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return StackState(
            directory, tuple(ProcessRecord.from_json(p) for p in data["parts"]),
            Path(data["page_log"]), bool(data.get("fast", False)), data.get("start_phase"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is unreadable ({exc}); look at it, stop the processes it"
                         " lists by hand if they run, then delete it") from None


def _save(state: StackState) -> None:
    atomic_write_text(state_path(state.directory), state.to_json(), mode=PRIVATE)


# --- configuration --------------------------------------------------------------------------


def prometheus_config(*, bot: int, alertmanager: int, prometheus: int, rules: Path,
                      fast: bool) -> str:
    """Scrape the bot (job ``exitguard``), Prometheus and Alertmanager; alert to Alertmanager."""
    interval = "1s" if fast else "5s"
    return json.dumps({  # JSON is YAML
        "global": {"scrape_interval": interval, "scrape_timeout": "1s" if fast else "4s",
                   "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager}"]}]}]},
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{bot}"]}]},
            {"job_name": "prometheus",
             "static_configs": [{"targets": [f"127.0.0.1:{prometheus}"]}]},
            {"job_name": "alertmanager",
             "static_configs": [{"targets": [f"127.0.0.1:{alertmanager}"]}]},
        ],
    }, indent=2) + "\n"


def write_configs(directory: Path, programs: Programs, ports: dict[str, int],
                  *, fast: bool) -> tuple[Path, Path]:
    """The rules, the Alertmanager config (pages to the receiver) and the Prometheus config;
    returns the paths of the Alertmanager and Prometheus configs."""
    alerts = directory / "alerts"
    (alerts / "templates").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(find_templates(), alerts / "templates" / TEMPLATES.name)
    rules = alerts / RULES_FILE
    write_rules(rules)
    secrets = directory / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    receiver = f"http://127.0.0.1:{ports[RECEIVER]}"
    atomic_write_text(secrets / "slack_webhook_url", f"{receiver}/slack\n", mode=PRIVATE)
    atomic_write_text(secrets / "discord_webhook_url", f"{receiver}/discord\n", mode=PRIVATE)
    am_config = alerts / ALERTMANAGER_FILE
    write_alertmanager_config(
        am_config, secrets / "slack_webhook_url", secrets / "discord_webhook_url",
        timings=RouteTimings.fast() if fast else RouteTimings(),
        inline_discord_url=programs.alertmanager_version[:2] < DISCORD_URL_FILE_MIN_VERSION,
    )
    prom_config = directory / "prometheus.yml"
    atomic_write_text(prom_config, prometheus_config(
        bot=ports[BOT], alertmanager=ports[ALERTMANAGER], prometheus=ports[PROMETHEUS],
        rules=rules, fast=fast), mode=PRIVATE)
    return am_config, prom_config


# --- up, down, status -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Launch:
    name: str
    argv: list[str]
    port: int
    url: str
    ready_url: str
    env: dict[str, str] | None = None


def _launches(directory: Path, programs: Programs, ports: dict[str, int], am_config: Path,
              prom_config: Path, page_log: Path, start_phase: str | None) -> list[Launch]:
    def url(name: str) -> str:
        return f"http://127.0.0.1:{ports[name]}"

    bot = [sys.executable, "-m", "exitguard", "demo", "--serve", "--bind", "127.0.0.1",
           "--port", str(ports[BOT])]
    if start_phase is not None:
        bot += ["--start-phase", start_phase]
    return [
        Launch(RECEIVER, [sys.executable, "-m", "exitguard.stack.receiver", "--port",
                          str(ports[RECEIVER]), "--page-log", str(page_log)],
               ports[RECEIVER], url(RECEIVER), url(RECEIVER) + "/",
               {"PYTHONUNBUFFERED": "1"}),
        Launch(ALERTMANAGER, [
            programs.alertmanager, f"--config.file={am_config}",
            f"--storage.path={directory / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{ports[ALERTMANAGER]}",
            f"--web.external-url={url(ALERTMANAGER)}", "--cluster.listen-address=",
        ], ports[ALERTMANAGER], url(ALERTMANAGER), url(ALERTMANAGER) + "/-/ready"),
        # Pages come from Alertmanager only: the bot's in-process pager stays off.
        Launch(BOT, bot, ports[BOT], url(BOT) + "/metrics", url(BOT) + "/metrics",
               {"EXITGUARD_PAGER_URLS": "", "EXITGUARD_PAGER_URLS_FILE": ""}),
        Launch(PROMETHEUS, [
            programs.prometheus, f"--config.file={prom_config}",
            f"--storage.tsdb.path={directory / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{ports[PROMETHEUS]}",
            f"--web.external-url={url(PROMETHEUS)}", "--enable-feature=exemplar-storage",
            "--web.enable-lifecycle",
        ], ports[PROMETHEUS], url(PROMETHEUS), url(PROMETHEUS) + "/-/ready"),
    ]


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (OSError, urllib.error.URLError, ValueError):
        return False


def log_tail(path: Path | str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(record: ProcessRecord, popen: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            tail = log_tail(record.log)
            hint = ""
            if "address already in use" in tail.lower():
                hint = (f" (port {record.port} was free when picked and taken before"
                        " it started: run up again)")
            raise StackError(f"{record.name} exited with code {popen.returncode}{hint};"
                             f" the end of {record.log}:\n{tail}")
        if answers(record.ready_url, timeout=1.0):
            return
        time.sleep(0.2)
    raise StackError(f"{record.name} did not answer {record.ready_url} within {timeout:.0f} s;"
                     f" the end of {record.log}:\n{log_tail(record.log)}")


def _refuse_running(directory: Path) -> None:
    state = load_state(directory)
    if state is None:
        return
    running = [p for p in state.parts if procs.is_ours(p)]
    if running:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in running)
        raise StackError(f"a stack is already running from {directory}: {names}; see"
                         " `exitguard stack status`, or stop it with `exitguard stack down`")


def up(directory: Path, *, fast: bool = False, start_phase: str | None = None,
       ready_timeout: float = 60.0,
       on_start: Callable[[ProcessRecord], None] | None = None) -> StackState:
    """Start the stack from ``directory``; returns its state once every part answers.

    ``fast``: 1 s scrape and evaluation, Alertmanager groups without waiting (tests, and
    impatient demos). ``start_phase``: the demo bot's first phase (``outage`` pages within
    seconds). When a part fails, everything already started is stopped again.
    """
    procs.require_proc()
    programs = find_programs()
    find_templates()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _refuse_running(directory)
    names = (RECEIVER, ALERTMANAGER, BOT, PROMETHEUS)
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    am_config, prom_config = write_configs(directory, programs, ports, fast=fast)
    page_log = directory / PAGE_LOG
    for stale in (page_log, jsonl_path(page_log)):
        stale.unlink(missing_ok=True)
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    state = StackState(directory, (), page_log, fast, start_phase)
    _save(state)
    try:
        for launch in _launches(directory, programs, ports, am_config, prom_config, page_log,
                                start_phase):
            log = logs / f"{launch.name}.log"
            record, popen = procs.start(launch.name, launch.argv, port=launch.port,
                                        url=launch.url, ready_url=launch.ready_url, log=log,
                                        cwd=directory, env=launch.env)
            state = StackState(directory, (*state.parts, record), page_log, fast, start_phase)
            _save(state)  # recorded before waiting: a crash from here on leaves it stoppable
            if on_start is not None:
                on_start(record)
            _wait_ready(record, popen, ready_timeout)
    except (StackError, procs.ProcError, KeyboardInterrupt):
        for record in reversed(state.parts):
            procs.stop(record)
        state_path(directory).unlink(missing_ok=True)
        raise
    return state


def down(directory: Path) -> list[tuple[str, str]]:
    """Stop what ``up`` recorded in ``directory`` (only those very processes); (part, what
    happened) for each. The state file goes once nothing recorded runs any more."""
    procs.require_proc()
    state = load_state(directory)
    if state is None:
        return []
    results = [(record.name, procs.stop(record)) for record in reversed(state.parts)]
    if not any(procs.is_ours(record) for record in state.parts):
        state_path(directory).unlink(missing_ok=True)
    return results


@dataclass(frozen=True, slots=True)
class PartStatus:
    record: ProcessRecord
    running: bool
    answering: bool


def status(directory: Path) -> tuple[StackState, list[PartStatus]] | None:
    """Each recorded part: is it our process still, does it answer; None without a stack."""
    procs.require_proc()
    state = load_state(directory)
    if state is None:
        return None
    parts = []
    for record in state.parts:
        running = procs.is_ours(record)
        parts.append(PartStatus(record, running, running and answers(record.ready_url)))
    return state, parts


def pages(page_log: Path) -> Iterator[dict[str, Any]]:
    """The pages the receiver wrote so far (its JSON-lines file), oldest first."""
    try:
        lines = jsonl_path(page_log).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        with contextlib.suppress(ValueError):
            yield json.loads(line)


__all__ = [
    "LABEL",
    "PartStatus",
    "Programs",
    "StackError",
    "StackState",
    "default_dir",
    "down",
    "find_programs",
    "pages",
    "status",
    "up",
]
