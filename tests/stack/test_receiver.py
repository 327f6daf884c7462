"""The page receiver: answers as Slack and Discord do, and writes every page it gets."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

from exitguard.stack.receiver import PageLog, jsonl_path, make_server, summarize


def _post(url: str, body: object) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status), response.read()


def test_pages_are_answered_like_slack_and_discord_and_logged(tmp_path: Path) -> None:
    log = PageLog(tmp_path / "pages.log")
    server = make_server(0, log)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        slack = {"attachments": [{"title": "[FIRING:1] Breaker", "text": "Runbook: r"}]}
        discord = {"embeds": [{"title": "[FIRING:1] Breaker", "description": "Summary: s"}]}
        assert _post(url + "/slack", slack) == (200, b"ok")
        assert _post(url + "/discord", discord) == (204, b"")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    text = (tmp_path / "pages.log").read_text()
    assert "page 1 at" in text
    assert "received by the stand-in for Slack (POST /slack)" in text
    assert "received by the stand-in for Discord (POST /discord)" in text
    assert "Runbook: r" in text
    assert "Summary: s" in text
    rows = [json.loads(line) for line in jsonl_path(tmp_path / "pages.log").read_text()
            .splitlines()]
    assert [(r["service"], r["body"]) for r in rows] == [("Slack", slack), ("Discord", discord)]


def test_summarize_falls_back_to_the_raw_body() -> None:
    assert summarize({"text": "plain"}) == ["plain"]
    assert summarize({"content": "hello"}) == ["hello"]
    assert summarize({"other": 1}) == ['{"other": 1}']
