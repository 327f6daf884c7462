"""Where the runbooks live: one base URL, and one section (anchor) per alert.

The generated alert rules, the in-process pager and the docs all link to
``docs/runbooks.md``; building every link here means a fork or a private copy of the
runbooks is one setting away (``exitguard alerts build --runbook-base-url URL``), and a link
cannot point at a section whose spelling drifted. Standard library only.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from urllib.parse import urlsplit

#: The published runbooks; each alert links to one ``## <AlertName>`` heading of this page.
RUNBOOK_BASE_URL = "https://github.com/exitguard/exitguard/blob/main/docs/runbooks.md"


def anchor(alert: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a ``## <alert>`` heading."""
    return alert.lower()


def runbook_url(alert: str, base_url: str = RUNBOOK_BASE_URL) -> str:
    """The link to ``alert``'s section of the runbooks page at ``base_url``."""
    return f"{base_url}#{anchor(alert)}"


def check_base_url(base_url: str, field: str = "runbook_base_url") -> str:
    """``base_url`` if it can carry an anchor (an http(s) URL without one), else ValueError.

    ``field`` names the setting in the error, so a bad value is reported where it was given.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{field} must be an http(s) URL of the runbooks page, such as "
            f"{RUNBOOK_BASE_URL}, got {base_url!r}"
        )
    if parts.fragment or base_url.endswith("#"):
        raise ValueError(
            f"{field} must not contain '#': each alert adds its own anchor, got {base_url!r}"
        )
    return base_url


#: The approver placeholder in a printed resume command: one of the names stored with the halt.
APPROVER_PLACEHOLDER = "NAME"


def resume_command(store_args: Sequence[str], reason: str = "WHY") -> str:
    """The ``exitguard halt resume`` command for the store selected by ``store_args`` (e.g.
    ``("--file", "/var/lib/bot/halt.json")``), quoted for a POSIX shell so it runs as pasted
    once ``NAME`` is replaced by one of the halt's approvers. Who may resume is stored with
    the halt and the HMAC key comes from the environment, so no other option is needed."""
    words = ["exitguard", "halt", "resume", *store_args, "--approver", APPROVER_PLACEHOLDER,
             "--reason", reason]
    return shlex.join(words)
