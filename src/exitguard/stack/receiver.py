"""The local stack's page receiver: it stands in for Slack and Discord and prints every page.

Alertmanager's Slack and Discord receivers post here (``/slack`` and ``/discord``) instead of
to the real services, so the whole alerting loop can be watched on one machine without a
webhook URL. Each page is printed on stdout, appended in readable form to the page log, and
appended as one JSON object per line to ``<page log>.jsonl`` (for scripts and tests). It
answers as the real services do (Slack ``200 ok``, Discord ``204``), so Alertmanager counts
the notification delivered.

Run as ``python -m exitguard.stack.receiver --port N --page-log FILE``; ``exitguard stack up``
does that. It binds 127.0.0.1 only. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

#: What each path stands in for.
SERVICES = {"slack": "Slack", "discord": "Discord"}
LABEL = "stand-in for Slack and Discord (exitguard stack): nothing is sent to either"


def jsonl_path(page_log: Path) -> Path:
    """Where the machine-readable copy of the page log is written."""
    return page_log.with_name(page_log.name + ".jsonl")


def _service(path: str) -> str:
    first = path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
    return SERVICES.get(first, "an unknown service")


def summarize(body: Any) -> list[str]:
    """The readable lines of a Slack or Discord webhook body (titles, then texts)."""
    lines: list[str] = []
    if isinstance(body, dict):
        for attachment in body.get("attachments") or []:  # Slack
            if isinstance(attachment, dict):
                lines += [str(attachment[k]) for k in ("title", "text") if attachment.get(k)]
        for embed in body.get("embeds") or []:  # Discord
            if isinstance(embed, dict):
                lines += [str(embed[k]) for k in ("title", "description") if embed.get(k)]
        for key in ("text", "content"):  # plain Slack text, plain Discord content
            if not lines and body.get(key):
                lines.append(str(body[key]))
    if not lines:
        lines.append(json.dumps(body, sort_keys=True))
    return lines


class PageLog:
    """Appends pages to the readable log and its JSON-lines twin, one writer at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.jsonl = jsonl_path(path)
        self.count = 0
        self._lock = threading.Lock()

    def record(self, path: str, raw: bytes) -> str:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        service = _service(path)
        at = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock:
            self.count += 1
            header = (f"--- page {self.count} at {at}, received by the stand-in for {service}"
                      f" (POST {path}) ---")
            text = "\n".join([header, *summarize(body)]) + "\n\n"
            with self.path.open("a", encoding="utf-8") as log:
                log.write(text)
            with self.jsonl.open("a", encoding="utf-8") as log:
                log.write(json.dumps({"at": at, "service": service, "path": path,
                                      "body": body}) + "\n")
        return text


def make_server(port: int, page_log: PageLog) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            text = page_log.record(self.path, self.rfile.read(length))
            sys.stdout.write(text)
            sys.stdout.flush()
            if _service(self.path) == "Discord":
                self._reply(204, b"")
            else:
                self._reply(200, b"ok")

        def do_GET(self) -> None:  # readiness, and a hint for a curious browser
            self._reply(200, (f"exitguard page receiver: {LABEL}.\n{page_log.count} page(s)"
                              f" received; they are in {page_log.path}\n").encode())

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exitguard.stack.receiver",
                                     description=f"Print every page it receives: {LABEL}.")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--page-log", type=Path, required=True, help="file to append pages to")
    args = parser.parse_args(argv)
    page_log = PageLog(args.page_log)
    args.page_log.touch()
    server = make_server(args.port, page_log)

    def _stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"exitguard page receiver on http://127.0.0.1:{args.port}: {LABEL}; pages also go to"
          f" {args.page_log}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
