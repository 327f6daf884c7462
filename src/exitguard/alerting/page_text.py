"""Page text that cannot hijack a page, and a Discord plugin that cannot ping the server.

A page quotes untrusted text: a halt's reason may hold a venue's error or a corrupt pending
file's content. Every field is redacted (before any cut), kept on one line (control
characters escaped), its mentions (``@everyone``, ``@here``, ``<@id>``, ``<@&role>``,
Slack's ``<!here>``) and markdown links (``[text](url)``) defused with a zero-width space,
and capped; the whole page stays under Discord's 2,000-character limit with its runbook link
(a critical page that is too long is refused by Discord, so it would never arrive). Discord
pages also get the field's markdown escaped and ``allowed_mentions``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from apprise.plugins.discord import NotifyDiscord

from exitguard.redaction import escape_controls, redact

__all__ = [
    "FIELD_LIMIT",
    "NAME_LIMIT",
    "OWN_FIELDS",
    "PAGE_LIMIT",
    "SafeDiscord",
    "discord_escape",
    "discord_hook_present",
    "fit",
    "plain",
    "safe_text",
]

#: Discord refuses a message over 2,000 characters (title and body together): a page is
#: kept under this, whatever its fields hold.
PAGE_LIMIT = 1900
#: The bound on one field's text (a halt's reason, an error) and on a name (guard, breaker,
#: actor), before any escaping.
FIELD_LIMIT = 400
NAME_LIMIT = 80

# A mention (Discord's @everyone, @here, <@id>, <@&role>, <#channel>; Slack's <!here>,
# <@U123>), an at-sign before a word, and a markdown link's "](": each gets a zero-width
# space after its first character, which no service parses as a mention or a link.
_DEFUSE = re.compile(r"[@\uff20](?=[\w!&#])|<(?=[@#!&:/A-Za-z])|\](?=\()")
_ZWSP = "\u200b"
# Discord markdown: bold, italics, strike, code, spoiler, quote, heading, links.
_DISCORD_MARKDOWN = re.compile(r"([\\*_~`|>#\[\]()])")


def safe_text(text: str, limit: int = FIELD_LIMIT) -> str:
    """Untrusted text made fit for a page: redacted (before the cut), one line (control
    characters escaped), mentions and links defused, at most ``limit`` characters."""
    text = escape_controls(redact(text, None))
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return _DEFUSE.sub(lambda m: m.group() + _ZWSP, text)


#: Fields whose text is exitguard's own (an event kind, a timestamp): never escaped.
OWN_FIELDS = frozenset({"event", "at"})


def plain(text: str) -> str:
    return text


def discord_escape(text: str) -> str:
    """Markdown characters shown as themselves by Discord (a backslash before each)."""
    return _DISCORD_MARKDOWN.sub(r"\\\1", text)


def fit(title: str, lines: list[str], last: str, limit: int = PAGE_LIMIT) -> tuple[str, str]:
    """(title, body) with the body's ``lines`` cut so that title, body and the ``last`` line
    (the runbook link) fit in ``limit`` characters together."""
    title = title if len(title) <= NAME_LIMIT * 3 else title[: NAME_LIMIT * 3 - 1] + "\u2026"
    head = "\n".join(lines)
    room = limit - len(title) - 2 - len(last) - 1  # 2: apprise's "\r\n" after the title
    if len(head) > room:
        head = head[: max(0, room - 1)] + "\u2026"
    return title, f"{head}\n{last}"


class SafeDiscord(NotifyDiscord):  # type: ignore[no-untyped-call]
    """apprise's Discord plugin, sending ``allowed_mentions`` on every message.

    apprise (up to 2.3 at least) sends no ``allowed_mentions`` for plain text (Discord then
    parses every mention in the content) and, when it does, spells the key
    ``allow_mentions``, which Discord ignores. Its payload is built inside ``send``, so the
    one place to set the key is ``_send(payload, ...)``, which every message goes through:
    only the mentions configured in the URL (``ping=``) may ping; ``parse`` is empty
    otherwise. The pager checks at construction that the hook is there (an apprise that
    renamed it is refused rather than paging unsafely).
    """

    def _send(self, payload: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
        payload = dict(payload)
        payload.pop("allow_mentions", None)
        payload["allowed_mentions"] = self._allowed_mentions()
        return bool(super()._send(payload, *args, **kwargs))

    def _allowed_mentions(self) -> dict[str, list[str]]:
        allowed: dict[str, list[str]] = {"parse": []}
        ping = getattr(self, "ping", None)
        if ping:
            configured = self.ping_payload(" ".join(ping)).get("allow_mentions") or {}
            for key in ("parse", "users", "roles"):
                values = configured.get(key)
                if values:
                    allowed[key] = sorted(str(v) for v in values)
        return allowed


def discord_hook_present() -> bool:
    send = getattr(NotifyDiscord, "_send", None)
    if not callable(send):
        return False
    parameters = list(inspect.signature(send).parameters)
    return len(parameters) >= 2 and parameters[1] == "payload"
