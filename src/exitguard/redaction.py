"""Secrets out of every text exitguard writes: one function, one logging filter; and the
escape that keeps untrusted text from forging lines on a terminal.

Venue errors quote what the venue's client had in hand: the RPC URL (whose path or query
holds the provider's API key), request headers (``Authorization: Bearer ...``), JSON bodies
(``"apiKey": "..."``). Every output passes through :func:`redact` before anything else
touches the text (truncation included, so a cut can never leave half a secret behind):

* the core's log records, through :class:`RedactingFilter`, installed on the loggers of the
  ``exitguard`` hierarchy by :func:`protect_loggers` (the package and each subpackage call it
  once their modules are imported);
* span statuses, attributes and events (``exitguard.telemetry.otel``), structlog events
  (``exitguard.telemetry.logs``) and pages (``exitguard.alerting.pager``) call
  :func:`redact` on every text that may come from outside.

What is masked (the value is replaced by ``***``, the name or scheme kept so the text still
says what was there): credentials in URLs (``scheme://user:pass@``), path segments that look
like keys (``/v2/<key>``, ``/v3/<project-id>``, any long mixed letters-and-digits segment, as
Alchemy, Infura, QuickNode, Helius, Ankr and others issue them; ``/vN/<key>`` also in a path
quoted without its URL), ``Authorization`` headers
whole (``Bearer <token>``, ``Basic <base64>``), bare ``Bearer``/``Basic`` credentials,
``name=value``, ``name: value`` and JSON ``"name": "value"`` pairs whose name ends in key,
token, secret, password, passwd, pwd, passphrase, signature, sig, auth, authorization,
credential(s) or cookie (``api-key``, ``apiKey``, ``private_key``, ``api_secret``,
``client_secret``, ``x-api-key``...), and PEM private-key blocks.

Deliberately not masked: bare hex or base58 strings outside a URL. They look like keys but
are, far more often, transaction ids and signatures, which an operator needs to reconcile.

Other libraries log URLs too (urllib3's "Failed to parse headers (url=...)", its retry
warnings, the OpenTelemetry exporter's failed exports): :func:`protect_loggers` is called on
their logger trees (:data:`THIRD_PARTY_LOGGERS`) by the modules that use them.

:func:`escape_controls` is the other half of a safe line: text from a venue, a halt file or
a page can hold ``\n`` (a forged log line) or terminal escape sequences (hidden or rewritten
output); wherever such text meets a terminal it is written with those characters escaped.

Standard library only: the core uses it.
"""

from __future__ import annotations

import logging
import re

__all__ = [
    "DEFAULT_LIMIT",
    "MASK",
    "THIRD_PARTY_LOGGERS",
    "RedactingFilter",
    "escape_controls",
    "get_logger",
    "protect_loggers",
    "protect_third_party_loggers",
    "redact",
]

#: What a secret is replaced by.
MASK = "***"
#: The default bound on a redacted text's length (span statuses, log fields, pages).
DEFAULT_LIMIT = 500
#: With a limit, longer texts are first cut (at a space, so a token stays whole) to this many
#: characters: a megabyte-long error page costs no more than a short one, and whatever lies
#: past the cut is dropped by the final bound anyway.
_PRE_CUT = 8192

# Names whose value is a secret: the name ENDS in one of these words right before the ``=`` or
# ``:`` (so ``signal_price`` or ``max_tokens`` are not secrets; ``apiKey``, ``x-api-key``,
# ``private_key`` and ``client_secret`` are).
_SECRET_WORDS = (
    "key", "token", "secret", "password", "passwd", "pwd", "passphrase", "signature", "sig",
    "auth", "authorization", "credential", "credentials", "cookie",
)
# An auth scheme in front of a value (``Authorization: Bearer xyz``) belongs to the value.
_SCHEME = re.compile(r"(?:bearer|basic|token|digest|negotiate)[ \t]+")
# A value: quoted (JSON or not; an unterminated quote runs to the end), a bracketed list (a
# keypair as a JSON array), or a bare run.
_VALUE = re.compile(r"\"[^\"]*(?:\"|\Z)|'[^']*(?:'|\Z)|\[[^\]]*(?:\]|\Z)|[^\s&,;'\"<>(){}\[\]]+")
_PEM = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL
)
_URL_REST = re.compile(r"[^\s\"'<>]+")  # what follows a scheme's "://"
_AUTHORITY_END = re.compile(r"[/?#]")
_PATH_END = re.compile(r"[?#]")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_VERSION = re.compile(r"[vV]\d+")
_BEARER_TOKEN = re.compile(r"[ \t]+[A-Za-z0-9._~+/=-]+")
# A bare "Basic <base64>" needs mixed case, a digit or base64 punctuation, so that English
# ("Basic authentication failed") is left alone.
_BASIC_TOKEN = re.compile(r"[ \t]+(?=[A-Za-z0-9+/]*(?:[0-9+/=]|[a-z][A-Z]))[A-Za-z0-9+/]{6,}={0,2}")
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")

# CPython's re tries a pattern without a literal prefix at every position (about 70 ns each,
# so 15 us for a 200-character text, per pattern); each rule below finds its anchor with
# str.find (C speed) and runs a regex only where the anchor is.


# Substrings of every secret word: a text with none of them has no pair to mask.
_PAIR_HINTS = ("key", "token", "secret", "pass", "pwd", "sig", "auth", "credential", "cookie")


def _mask_pairs(text: str) -> str:
    """Every ``name=value`` / ``name: value`` / ``"name": "value"`` whose name ends in a
    secret word, with the value masked (name, auth scheme and the value's quotes kept)."""
    lowered = _lower(text)
    pieces: list[str] = []
    done = 0  # text[:done] is already in pieces
    start = 0
    colon, equals = lowered.find(":"), lowered.find("=")
    while True:
        if 0 <= colon < start:
            colon = lowered.find(":", start)
        if 0 <= equals < start:
            equals = lowered.find("=", start)
        separator = min(colon, equals) if colon >= 0 and equals >= 0 else max(colon, equals)
        if separator < 0:
            break
        start = separator + 1
        name_end = separator
        while name_end and lowered[name_end - 1] in " \t":
            name_end -= 1
        if name_end and lowered[name_end - 1] in "\"'":
            name_end -= 1
            while name_end and lowered[name_end - 1] == "\\":  # JSON in a JSON string
                name_end -= 1
        if not lowered.endswith(_SECRET_WORDS, 0, name_end):
            continue
        at = separator + 1
        while at < len(lowered) and lowered[at] in " \t":
            at += 1
        scheme = _SCHEME.match(lowered, at)
        if scheme:
            at = scheme.end()
        slashes = at
        while slashes < len(text) and text[slashes] == "\\":
            slashes += 1
        if slashes > at and text[slashes:slashes + 1] in ('"', "'"):
            # An escaped quote (JSON in a JSON string, once or more): to the same one.
            quote = text[at:slashes + 1]
            close = text.find(quote, slashes + 1)
            end = len(text) if close < 0 else close + len(quote)
            pieces += (text[done:at], f"{quote}{MASK}{quote}")
            done = start = end
            continue
        value = _VALUE.match(text, at)
        if value is None:
            continue
        opening = text[at]
        masked = (f"{opening}{MASK}{opening}" if opening in "\"'"
                  else f"[{MASK}]" if opening == "[" else MASK)
        pieces += (text[done:at], masked)
        done = start = value.end()
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(text: str) -> str:
    """``text`` in lower case, character for character (positions in it fit ``text``)."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a rare character whose lower case is longer (U+0130)
        lowered = text.translate(_ASCII_LOWER)
    return lowered


def _is_key_segment(segment: str, previous: str) -> bool:
    """A URL path segment that is a provider's key: after ``/vN/`` (Alchemy ``/v2/<key>``,
    Infura ``/v3/<project id>``) 8+ characters, anywhere else 20+ mixing letters and digits
    (QuickNode, Ankr, GetBlock)."""
    if len(segment) >= 8 and _VERSION.fullmatch(previous):
        return True
    return (len(segment) >= 20 and any(c.isdigit() for c in segment)
            and any(c.isalpha() for c in segment))


def _mask_url(rest: str) -> str:
    """What follows a URL's ``://`` with user:password@ and key-like path segments masked
    (the query is left to the name=value rule: ``?api-key=...``)."""
    end = _AUTHORITY_END.search(rest)
    cut = end.start() if end else len(rest)
    authority, tail = rest[:cut], rest[cut:]
    at = authority.rfind("@")
    if at >= 0:
        authority = MASK + authority[at:]
    if tail.startswith("/"):
        path_end = _PATH_END.search(tail)
        cut = path_end.start() if path_end else len(tail)
        segments = tail[:cut].split("/")
        for index in range(1, len(segments)):
            segment = segments[index]
            word = _SEGMENT.match(segment)
            if word and _is_key_segment(word.group(), segments[index - 1]):
                segments[index] = MASK + segment[word.end():]
        tail = "/".join(segments) + tail[cut:]
    return authority + tail


def _mask_urls(text: str) -> str:
    pieces: list[str] = []
    done = 0
    while (found := text.find("://", done)) >= 0:
        rest = _URL_REST.match(text, found + 3)
        if rest is None:
            pieces.append(text[done:found + 3])
            done = found + 3
            continue
        pieces += (text[done:found + 3], _mask_url(rest.group()))
        done = rest.end()
    pieces.append(text[done:])
    return "".join(pieces)


# Without the URL around it, a segment after /vN/ is a key only if it looks like one (16+
# characters with a digit), so that "/v2/accounts" stays readable.
_VERSION_PATH = re.compile(r"/[vV]\d+/((?=[A-Za-z_-]*\d)[A-Za-z0-9_-]{16,})")


def _mask_version_paths(text: str) -> str:
    """A key after ``/vN/`` in a path quoted without its URL (``POST /v2/<key> 401``)."""
    return _VERSION_PATH.sub(lambda m: m.group()[: m.start(1) - m.start()] + MASK, text)


def _mask_after(text: str, haystack: str, word: str, token: re.Pattern[str]) -> str:
    """Mask the credential ``token`` matches right after each whole ``word`` in ``haystack``
    (``text`` or its lower case, same length)."""
    pieces: list[str] = []
    done = start = 0
    while (found := haystack.find(word, start)) >= 0:
        start = found + len(word)
        if found and haystack[found - 1] in _WORD_CHARS:
            continue
        match = token.match(text, start)
        if match is None:
            continue
        spaces = len(match.group()) - len(match.group().lstrip(" \t"))
        pieces += (text[done:start + spaces], MASK)
        done = start = match.end()
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def _may_hold_a_secret(text: str) -> bool:
    """Every shape needs one of these: a URL's "/", a pair's "=" or ":", the space or tab
    after "Bearer"/"Basic" (and inside a PEM header)."""
    return " " in text or ":" in text or "=" in text or "/" in text or "\t" in text


def redact(text: str, limit: int | None = DEFAULT_LIMIT) -> str:
    """``text`` with every secret shape masked, then cut to ``limit`` characters (None: no
    bound). Redaction comes first, so the cut can never leave part of a secret readable.

    Each rule runs only when the text holds its anchor (``://``, ``=`` or ``:``, ``bearer``,
    ``Basic``, ``-----BEGIN``), so a text with nothing to mask costs a few scans.
    """
    if not _may_hold_a_secret(text):  # an id, an enum value, a word: nothing to mask
        return text if limit is None or len(text) <= limit else text[:limit] + "..."
    if limit is not None and len(text) > (cut := max(_PRE_CUT, limit)):
        space = text.rfind(" ", 0, cut)
        text = text[: space if space > 0 else cut] + "..."
    if "-----BEGIN" in text:
        text = _PEM.sub(f"-----{MASK} PRIVATE KEY-----", text)
    if "://" in text:
        text = _mask_urls(text)
    lowered = _lower(text)
    if "/v" in lowered:
        masked = _mask_version_paths(text)
        if masked != text:
            text, lowered = masked, _lower(masked)
    if ("=" in text or ":" in text) and any(hint in lowered for hint in _PAIR_HINTS):
        masked = _mask_pairs(text)
        if masked is not text:
            text, lowered = masked, _lower(masked)
    if "bearer" in lowered:
        text = _mask_after(text, lowered, "bearer", _BEARER_TOKEN)
    if "Basic" in text:
        text = _mask_after(text, text, "Basic", _BASIC_TOKEN)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text


class RedactingFilter(logging.Filter):
    """A ``logging.Filter`` that redacts a record's message (``msg % args``), traceback and
    stack in place; it never drops a record.

    Only a record it changes is rewritten (its message formatted once, ``args`` cleared), so
    other records keep their arguments. A traceback holding a secret is rendered, redacted and
    appended to the message (``exc_info`` cleared): formatters such as structlog's render
    ``exc_info`` afresh, which would bring the secret back. Records whose ``msg`` is not a
    string (structlog's events in stdlib mode) are left alone: exitguard's telemetry redacts
    their fields where it builds them.
    """

    def clean(self, text: str) -> str:
        """The redaction applied (subclasses add their own known secrets)."""
        return redact(text, None)

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record is not ours to fix (logging reports it)
            return True
        clean = self.clean(message)
        changed = clean != message
        if record.exc_info and record.exc_info[1] is not None:
            trace = logging.Formatter().formatException(record.exc_info)
            clean_trace = self.clean(trace)
            if clean_trace != trace:
                clean, changed = f"{clean}\n{clean_trace}", True
                record.exc_info, record.exc_text = None, None
        elif record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self.clean(record.stack_info)
        if changed:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactingFilter()
#: The root of the loggers :func:`protect_loggers` covers.
ROOT_LOGGER = "exitguard"


def protect_loggers(root: str = ROOT_LOGGER) -> None:
    """Install the redacting filter on ``root`` and on every logger below it that exists now.

    A filter on a logger sees only the records logged on that very logger (not those of its
    children), so each must carry it; exitguard and each of its subpackages call this once
    their modules (and so their loggers) exist, and ``tests/test_redaction.py`` checks that no
    ``exitguard.*`` logger is left without it. Idempotent.
    """
    prefix = root + "."
    names = [root, *(n for n in list(logging.root.manager.loggerDict) if n.startswith(prefix))]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the redacting filter installed: what a module of
    exitguard creates its logger with, so its records are redacted from the first one."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


#: The logger trees of other libraries whose records may quote a URL with its key or a
#: request's headers: urllib3 (``urllib3.connection`` logs the whole URL of a response with
#: malformed headers; ``urllib3.connectionpool`` its retries), requests, the OpenTelemetry
#: SDK and exporters (a failed export names the collector's URL), apprise.
THIRD_PARTY_LOGGERS = ("urllib3", "requests", "opentelemetry", "apprise")


def protect_third_party_loggers() -> None:
    """:func:`protect_loggers` on each of :data:`THIRD_PARTY_LOGGERS` (the loggers that
    exist now: call it after importing the library)."""
    for root in THIRD_PARTY_LOGGERS:
        protect_loggers(root)


# Every C0 control character, DEL and the C1 range (ESC and CSI start terminal sequences);
# U+2028/U+2029 (line breaks to some terminals and editors) and the bidirectional overrides
# (U+202A-U+202E, U+2066-U+2069: text displayed in another order than it reads).
_CONTROLS = (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F),
             *range(0x2066, 0x206A))
_ESCAPES = {c: repr(chr(c))[1:-1] for c in _CONTROLS}
_ESCAPES_KEEP_LINES = {c: e for c, e in _ESCAPES.items() if c not in (0x0A, 0x09)}


def escape_controls(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with control characters written as escapes (``\\n``, ``\\x1b``,
    ``\\u2028``): one line that cannot move the cursor, clear the screen, set the title or
    write the clipboard. ``keep_lines`` keeps newlines and tabs (a traceback), escaping the
    rest."""
    if text.isprintable():
        return text
    return text.translate(_ESCAPES_KEEP_LINES if keep_lines else _ESCAPES)
