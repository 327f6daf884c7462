"""The in-process pager: pages a human the moment a breaker trips or trading halts.

Prometheus alerts wait for a scrape, a rule evaluation and Alertmanager's grouping; this pager
fires from the hook itself, through apprise (Slack, Discord, any apprise URL). It must never
hurt an exit, so:

* a hook call only hands the page to the pager's own thread and event loop and returns (a few
  microseconds): it never blocks the trading loop, and works from any thread, including a
  virtual-time test loop;
* each delivery is bounded by ``timeout``; a webhook that hangs is abandoned and counted;
* pages are rate-limited per (guard, kind): a storm of trips sends one page per
  ``min_interval``, and the next page (sent when the interval ends) carries how many similar
  events were suppressed;
* results are counted in ``exitguard_alerts_sent_total{guard, channel, result}``, where
  ``channel`` is the apprise service kind (``slack``, ``discord``, ``json``...);
* webhook URLs are secrets: they never appear in this module's logs, metrics, exceptions or
  ``repr``, and a redacting filter keeps apprise's and urllib3's own log records from
  showing them either.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import apprise
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from exitguard import catalogue
from exitguard._validate import non_negative, positive
from exitguard.events import BreakerTransition, ExitInfo, Halted, HaltNotSaved, HookEvent
from exitguard.redaction import RedactingFilter, get_logger, redact
from exitguard.runbooks import RUNBOOK_BASE_URL, check_base_url, runbook_url
from exitguard.runbooks import resume_command as resume_command_text

if TYPE_CHECKING:
    from exitguard.breaker import BreakerState
    from exitguard.halt import HaltRecord

__all__ = [
    "ENV_MIN_INTERVAL",
    "ENV_RUNBOOK_BASE_URL",
    "ENV_TIMEOUT",
    "ENV_URLS",
    "ENV_URLS_FILE",
    "PageKind",
    "PageResult",
    "Pager",
    "parse_urls",
]

_log = get_logger("exitguard.alerting")

ENV_URLS = "EXITGUARD_PAGER_URLS"
ENV_URLS_FILE = "EXITGUARD_PAGER_URLS_FILE"
ENV_MIN_INTERVAL = "EXITGUARD_PAGER_MIN_INTERVAL"
ENV_TIMEOUT = "EXITGUARD_PAGER_TIMEOUT"
ENV_RUNBOOK_BASE_URL = "EXITGUARD_RUNBOOK_BASE_URL"

DEFAULT_MIN_INTERVAL = 60.0
DEFAULT_TIMEOUT = 10.0


class PageKind(enum.StrEnum):
    BREAKER_OPEN = "breaker_open"
    HALTED = "halted"
    HALT_NOT_SAVED = "halt_not_saved"


class PageResult(enum.StrEnum):
    """The ``result`` label of ``exitguard_alerts_sent_total``."""

    SENT = "sent"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SUPPRESSED = "suppressed"


#: The alert whose runbook section each page links to (the same section as the alert rule's).
_RUNBOOK_ALERTS = {
    PageKind.BREAKER_OPEN: "ExitguardCircuitBreakerTripped",
    PageKind.HALTED: "ExitguardTradingHalted",
    PageKind.HALT_NOT_SAVED: "ExitguardTradingHalted",
}
#: The links with the default runbooks page.
_RUNBOOKS = {kind: runbook_url(alert) for kind, alert in _RUNBOOK_ALERTS.items()}


# --- secrets ----------------------------------------------------------------------------------

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,31}$")
_PIECES = re.compile(r"[/?&=:@#,;\s]+")


def _scheme(url: str) -> str:
    """The URL's scheme if it looks like one (safe to print), else ``?``."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep and _SCHEME.match(head) else "?"


def _secret_fragments(url: str) -> set[str]:
    """Every part of ``url`` that could identify the webhook (all of it but the scheme)."""
    url = url.strip()
    _, sep, rest = url.partition("://")
    if not sep:
        rest = url
    found = {url, rest}
    for piece in _PIECES.split(rest):
        if len(piece) >= 6:
            found.add(piece)
    try:
        parts = urlsplit(url)
        found.update(p for p in (parts.password, parts.username) if p and len(p) >= 3)
        found.update(v for _, v in parse_qsl(parts.query) if len(v) >= 3)
    except ValueError:
        pass
    for item in list(found):
        found.add(unquote(item))
        found.add(quote(item, safe=""))
    found.discard("")
    return found


class _Redactor(RedactingFilter):
    """The core's redacting filter, plus the pager's known secrets (every fragment of each
    webhook URL, which has no recognisable shape: ``discord://<id>/<token>``) replaced first."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            merged = set(self._secrets) | {s for s in secrets if s}
            # Longest first, so a URL is replaced whole before its pieces.
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def clean(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return super().clean(text)


_REDACTOR = _Redactor()
#: Loggers that may print a webhook URL: apprise's (one logger for all plugins) and urllib3's.
_REDACTED_LOGGERS = (
    "apprise",
    "urllib3.connectionpool",
    "urllib3.poolmanager",
    "urllib3.util.retry",
    "requests",
    "exitguard.alerting",
)


def _protect(urls: Iterable[str]) -> None:
    """Register ``urls`` as secrets before apprise ever sees (and possibly logs) them."""
    fragments: set[str] = set()
    for url in urls:
        if isinstance(url, str):
            fragments |= _secret_fragments(url)
    _REDACTOR.add(fragments)
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


# --- configuration ----------------------------------------------------------------------------

_SPLIT = re.compile(r"[\s,]+(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def parse_urls(text: str) -> list[str]:
    """Apprise URLs from ``text``: separated by commas, spaces or lines; ``#`` lines are comments.

    Splits only where a new ``scheme://`` starts, so commas inside a URL (``?to=a,b``) survive.
    """
    urls: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        urls.extend(u.strip(" \t,") for u in _SPLIT.split(line) if u.strip(" \t,"))
    return urls


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    return positive("environment", name, value)


def _env_runbook_base_url(environ: Mapping[str, str]) -> str:
    raw = environ.get(ENV_RUNBOOK_BASE_URL, "").strip()
    return check_base_url(raw, field=ENV_RUNBOOK_BASE_URL) if raw else RUNBOOK_BASE_URL


# --- metrics ----------------------------------------------------------------------------------

_COUNTER_LOCK = threading.Lock()


def _alerts_counter(registry: CollectorRegistry) -> Counter:
    """``exitguard_alerts_sent_total`` in ``registry``; reuses it if already registered there."""
    spec = catalogue.ALERTS_SENT
    with _COUNTER_LOCK:
        existing = getattr(registry, "_names_to_collectors", {}).get(spec.name)
        if existing is not None:
            labels = tuple(getattr(existing, "_labelnames", ()))
            if not isinstance(existing, Counter) or labels != spec.all_labels:
                raise ValueError(
                    f"{spec.name} is already registered with labels {labels}, not"
                    f" {spec.all_labels}"
                )
            return existing
        return Counter(spec.base_name, spec.help, spec.all_labels, registry=registry)


# --- pages ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Event:
    guard: str
    kind: PageKind
    title: str
    headline: str
    details: tuple[tuple[str, str], ...]

    def page(
        self, suppressed: int, *, digest: bool = False, runbook_base_url: str = RUNBOOK_BASE_URL
    ) -> tuple[str, str]:
        """(title, body) of the page for this event plus ``suppressed`` similar ones."""
        lines = [f"Still happening: {self.headline}" if digest else self.headline, ""]
        lines += [f"{key}: {value}" for key, value in self.details]
        if suppressed:
            lines.append(
                f"suppressed: {suppressed} more {self.kind} event(s) for guard {self.guard}"
                " since the last page (rate limit)"
            )
        lines.append(f"runbook: {runbook_url(_RUNBOOK_ALERTS[self.kind], runbook_base_url)}")
        return self.title, "\n".join(lines)


@dataclass(slots=True)
class _KeyState:
    last_sent: float | None = None
    suppressed: int = 0
    timer: bool = False
    latest: _Event | None = None


@dataclass(frozen=True, slots=True)
class _Channel:
    """One URL, with its own small thread pool so a hanging service cannot starve the others.

    (apprise's ``async_notify`` sends on one process-wide pool shared by every service.)
    """

    number: int  # 1-based position in the URL list: how logs name it
    kind: str
    notifier: apprise.Apprise
    executor: concurrent.futures.ThreadPoolExecutor


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _state_name(state: object) -> str:
    return str(getattr(state, "value", state))


def _channel_kind(plugin: object) -> str:
    """The service kind (``slack``, ``discord``, ``json``): bounded, never part of the URL."""
    for attr in ("protocol", "secure_protocol"):
        value = getattr(plugin, attr, None)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        if isinstance(value, str) and value:
            return re.sub(r"[^a-z0-9_]", "_", value.lower())
    return re.sub(r"^notify", "", type(plugin).__name__.lower()) or "unknown"


class _LoopThread:
    """A private event loop on a daemon thread: deliveries never touch the caller's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="exitguard-pager", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)


class Pager:
    """A hook that pages on a breaker trip and on a halt, through apprise.

    ``urls`` are apprise URLs (``slack://...``, ``discord://...``, ``json://...``); with none,
    the pager does nothing. ``min_interval`` is the rate limit per (guard, kind) in seconds;
    ``timeout`` bounds each delivery to each channel. ``registry`` receives
    ``exitguard_alerts_sent_total`` (``None``: no metric). Each page links to its section of
    the runbooks page at ``runbook_base_url`` (the same base as the alert rules').
    """

    def __init__(
        self,
        urls: Sequence[str] = (),
        *,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        registry: CollectorRegistry | None = REGISTRY,
        runbook_base_url: str = RUNBOOK_BASE_URL,
    ) -> None:
        if isinstance(urls, str):
            raise TypeError("urls must be a sequence of URLs, not one string (see parse_urls)")
        self.min_interval = non_negative("Pager", "min_interval", min_interval)
        self.timeout = positive("Pager", "timeout", timeout)
        self.runbook_base_url = check_base_url(runbook_base_url)
        _protect(urls)
        self._channels = tuple(self._channel(n, url) for n, url in enumerate(urls, 1))
        self._counter = _alerts_counter(registry) if registry is not None else None
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, PageKind], _KeyState] = {}
        self._inflight: set[concurrent.futures.Future[None]] = set()
        self._closed = False
        self._worker = _LoopThread() if self._channels else None
        self._watched: set[str] = set()

    def _channel(self, number: int, url: str) -> _Channel:
        try:
            # No persistent store on disk: the pager keeps nothing between runs.
            asset = apprise.AppriseAsset(
                app_id="exitguard", app_desc="exitguard pager", async_mode=False,
                storage_mode="memory",
            )
        except TypeError:  # apprise < 1.9 has no persistent store at all
            asset = apprise.AppriseAsset(
                app_id="exitguard", app_desc="exitguard pager", async_mode=False
            )
        notifier = apprise.Apprise(asset=asset)
        if not isinstance(url, str) or not notifier.add(url):
            raise ValueError(
                f"pager URL #{number} (scheme {_scheme(str(url))!r}) is not a valid apprise URL"
            )
        plugins = list(notifier)
        for plugin in plugins:
            # Bound the worker thread of an abandoned send, not only our wait for it.
            for attr in ("socket_connect_timeout", "socket_read_timeout"):
                current = getattr(plugin, attr, None)
                if isinstance(current, int | float):
                    setattr(plugin, attr, min(float(current), self.timeout))
        kind = _channel_kind(plugins[0]) if plugins else "unknown"
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix=f"exitguard-pager-{kind}"
        )
        return _Channel(number, kind, notifier, executor)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> Pager:
        """A pager configured by ``EXITGUARD_PAGER_URLS`` and/or ``EXITGUARD_PAGER_URLS_FILE``.

        ``EXITGUARD_PAGER_MIN_INTERVAL`` and ``EXITGUARD_PAGER_TIMEOUT`` (seconds) override the
        defaults; ``EXITGUARD_RUNBOOK_BASE_URL`` is where the runbooks are published (the
        ``--runbook-base-url`` the alert rules were built with). With no URL at all the pager
        is disabled (and says so once, in the log).
        """
        env = os.environ if environ is None else environ
        urls = parse_urls(env.get(ENV_URLS, ""))
        url_file = env.get(ENV_URLS_FILE, "").strip()
        if url_file:
            try:
                text = Path(url_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(
                    f"{ENV_URLS_FILE}: cannot read {url_file}: {exc.strerror or type(exc).__name__}"
                ) from None
            urls += parse_urls(text)
        pager = cls(
            urls,
            min_interval=_env_float(env, ENV_MIN_INTERVAL, DEFAULT_MIN_INTERVAL),
            timeout=_env_float(env, ENV_TIMEOUT, DEFAULT_TIMEOUT),
            registry=registry,
            runbook_base_url=_env_runbook_base_url(env),
        )
        if not urls:
            _log.info("exitguard pager disabled: neither %s nor %s is set", ENV_URLS, ENV_URLS_FILE)
        return pager

    @property
    def enabled(self) -> bool:
        return bool(self._channels) and not self._closed

    @property
    def channels(self) -> tuple[str, ...]:
        """The service kind of each configured URL, in order (never the URLs)."""
        return tuple(channel.kind for channel in self._channels)

    def __repr__(self) -> str:
        return (
            f"Pager(channels={list(self.channels)}, min_interval={self.min_interval},"
            f" timeout={self.timeout}, closed={self._closed})"
        )

    # --- the hook (called by the core; must return at once and never raise) -----------------

    def __call__(self, event: HookEvent) -> None:
        if isinstance(event, ExitInfo):
            self.exit_started(event)
        elif isinstance(event, BreakerTransition):
            self.breaker_transition(event.guard, event.breaker, event.old, event.new)
        elif isinstance(event, Halted):
            self.halted(event.guard, event.record, event.resume_command)
        elif isinstance(event, HaltNotSaved):
            self.halt_not_saved(event.guard, event.error)

    def exit_started(self, exit: ExitInfo) -> None:
        """On a guard's first exit, start its page counters at 0 for every channel and result,
        so dashboards and rules see the series before the first page."""
        if exit.guard in self._watched or self._counter is None:
            return None
        self._watched.add(exit.guard)
        for channel in self._channels:
            for result in PageResult:
                self._counter.labels(exit.guard, channel.kind, result.value)
        return None

    def breaker_transition(
        self, guard: str, breaker: str, old: BreakerState, new: BreakerState
    ) -> None:
        if not self.enabled or _state_name(new) != "open":
            return
        old_name, new_name = _state_name(old), _state_name(new)
        self._event(
            _Event(
                guard=guard,
                kind=PageKind.BREAKER_OPEN,
                title=(
                    f"exitguard CRITICAL: circuit breaker open (guard {guard}, breaker {breaker})"
                ),
                headline=(
                    f"Circuit breaker {breaker!r} of guard {guard!r} opened ({old_name} →"
                    f" {new_name}): new entries are halted; exits still go (to a fallback"
                    " venue, or through it as its probe)."
                ),
                details=(
                    ("guard", guard),
                    ("breaker", breaker),
                    ("event", PageKind.BREAKER_OPEN.value),
                    ("transition", f"{old_name} → {new_name}"),
                    ("at", _iso(time.time())),
                ),
            )
        )

    def halted(self, guard: str, record: HaltRecord, resume_command: str | None = None) -> None:
        if not self.enabled:
            return
        reason = redact(record.reason)  # may quote a venue's error text
        # The command as pasted needs only NAME filled in: the halt file's path is in it, the
        # approvers are stored with the halt and the key comes from the environment.
        command = resume_command or resume_command_text(("--file", "PATH"))
        who = f" (NAME: one of {', '.join(record.approvers)})" if record.approvers else ""
        self._event(
            _Event(
                guard=guard,
                kind=PageKind.HALTED,
                title=f"exitguard CRITICAL: trading halted (guard {guard})",
                headline=(
                    f"Guard {guard!r} halted new entries: {reason}. Exits still run;"
                    f" resume with `{command}`{who}."
                ),
                details=(
                    ("guard", guard),
                    ("event", PageKind.HALTED.value),
                    ("reason", reason),
                    ("actor", redact(record.actor)),
                    ("at", _iso(record.at)),
                ),
            )
        )

    def halt_not_saved(self, guard: str, error: str) -> None:
        if not self.enabled:
            return
        error = redact(error)
        self._event(
            _Event(
                guard=guard,
                kind=PageKind.HALT_NOT_SAVED,
                title=f"exitguard CRITICAL: halt state not saved (guard {guard})",
                headline=(
                    f"Guard {guard!r} could not write its halt file ({error}): the halt lives"
                    " in memory only and a restart would lose it. Free the disk or fix the"
                    " file's permissions; the guard writes it again at the next entry check."
                ),
                details=(("guard", guard), ("event", PageKind.HALT_NOT_SAVED.value),
                         ("error", error)),
            )
        )

    # --- rate limit ---------------------------------------------------------------------------

    def _event(self, event: _Event) -> None:
        now = time.monotonic()
        key = (event.guard, event.kind)
        with self._lock:
            state = self._keys.setdefault(key, _KeyState())
            state.latest = event
            due = state.last_sent is None or now - state.last_sent >= self.min_interval
            if due:
                suppressed, state.suppressed, state.last_sent = state.suppressed, 0, now
            else:
                state.suppressed += 1
                start_timer, state.timer = not state.timer, True
        if due:
            self._submit(event, suppressed, digest=False)
            return
        self._count(event.guard, PageResult.SUPPRESSED)
        if start_timer and self._worker is not None:
            with contextlib.suppress(RuntimeError):  # the pager is closing: nothing to flush
                self._worker.loop.call_soon_threadsafe(self._arm, key)

    def _arm(self, key: tuple[str, PageKind]) -> None:
        """On the pager loop: flush ``key``'s suppressed events when its interval ends."""
        with self._lock:
            state = self._keys[key]
            last = state.last_sent if state.last_sent is not None else time.monotonic()
            delay = max(0.0, last + self.min_interval - time.monotonic())
        assert self._worker is not None
        self._worker.loop.call_later(delay, self._flush_key, key, False)

    def _flush_key(self, key: tuple[str, PageKind], force: bool) -> None:
        now = time.monotonic()
        with self._lock:
            state = self._keys[key]
            if not state.suppressed or state.latest is None or self._closed:
                state.timer = False
                return
            if (
                not force
                and state.last_sent is not None
                and now - state.last_sent < self.min_interval
            ):
                # A page went out since the timer was set: wait for the end of its interval.
                if self._worker is not None:
                    self._worker.loop.call_soon(self._arm, key)
                return
            suppressed, event = state.suppressed, state.latest
            state.suppressed, state.last_sent, state.timer = 0, now, False
        self._submit(event, suppressed, digest=True)

    # --- delivery -----------------------------------------------------------------------------

    def _submit(self, event: _Event, suppressed: int, *, digest: bool) -> None:
        worker = self._worker
        if worker is None or worker.loop.is_closed():
            return
        coro = self._deliver(event, suppressed, digest)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, worker.loop)
        except RuntimeError:  # the loop is shutting down
            coro.close()
            return
        with self._lock:
            self._inflight.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._inflight.discard(future)

    async def _deliver(self, event: _Event, suppressed: int, digest: bool) -> None:
        title, body = event.page(suppressed, digest=digest,
                                 runbook_base_url=self.runbook_base_url)
        results = await asyncio.gather(
            *(self._send(channel, event, title, body) for channel in self._channels)
        )
        _log.info(
            "exitguard pager: %s page for guard %s%s: %s",
            event.kind,
            event.guard,
            f" (+{suppressed} suppressed)" if suppressed else "",
            ", ".join(
                f"#{c.number} {c.kind}={r}" for c, r in zip(self._channels, results, strict=True)
            ),
        )

    async def _send(self, channel: _Channel, event: _Event, title: str, body: str) -> PageResult:
        started = time.monotonic()
        try:
            send = functools.partial(
                channel.notifier.notify,
                body=body,
                title=title,
                notify_type=apprise.NotifyType.FAILURE,
                body_format=apprise.NotifyFormat.TEXT,
            )
            async with asyncio.timeout(self.timeout):
                # Cancelled on timeout: a queued send never starts, a running one is
                # abandoned (its sockets time out on their own, see _channel()).
                outcome = await asyncio.get_running_loop().run_in_executor(
                    channel.executor, send
                )
            result = PageResult.SENT if outcome else PageResult.FAILED
            close = getattr(outcome, "close", None)
            if callable(close):
                close()
        except TimeoutError:
            result = PageResult.TIMEOUT
        except Exception as exc:  # a page must never take the pager down
            _log.warning(
                "exitguard pager: channel #%d (%s) raised %s",
                channel.number, channel.kind, type(exc).__name__,
            )
            result = PageResult.FAILED
        if result is not PageResult.SENT:
            _log.warning(
                "exitguard pager: %s page for guard %s to channel #%d (%s): %s after %.2fs",
                event.kind, event.guard, channel.number, channel.kind, result,
                time.monotonic() - started,
            )
        self._count(event.guard, result, channel)
        return result

    def _count(self, guard: str, result: PageResult, channel: _Channel | None = None) -> None:
        if self._counter is None:
            return
        for target in (channel,) if channel is not None else self._channels:
            self._counter.labels(guard, target.kind, result.value).inc()

    # --- shutdown -----------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every page handed over so far is sent, failed or timed out.

        Each delivery is bounded by ``self.timeout``, so this returns within about that long.
        Suppressed events waiting for their interval are not sent: see :meth:`flush`.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._lock:
                pending = [f for f in self._inflight if not f.done()]
            if not pending:
                return
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            await asyncio.wait([asyncio.wrap_future(f) for f in pending], timeout=remaining)

    async def flush(self, timeout: float | None = None) -> None:
        """Send every pending count of suppressed events now, then :meth:`drain`."""
        worker = self._worker
        if worker is not None and not worker.loop.is_closed():
            with self._lock:
                keys = [k for k, s in self._keys.items() if s.suppressed]
            for key in keys:
                worker.loop.call_soon_threadsafe(self._flush_key, key, True)
            # Let the flushes run (they submit their deliveries) before waiting for them.
            done = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), worker.loop)
            await asyncio.wrap_future(done)
        await self.drain(timeout)

    async def aclose(self, timeout: float | None = None) -> None:
        """Flush suppressed counts, wait for deliveries, stop the pager's thread."""
        if self._closed:
            return
        await self.flush(timeout if timeout is not None else self.timeout * 2)
        await asyncio.to_thread(self._stop)

    def close(self, timeout: float | None = None) -> None:
        """:meth:`aclose` for synchronous shutdown code (not from inside a running loop)."""
        if self._closed:
            return
        worker = self._worker
        if worker is None or worker.loop.is_closed():
            self._stop()
            return
        future = asyncio.run_coroutine_threadsafe(
            self.flush(timeout if timeout is not None else self.timeout * 2), worker.loop
        )
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            future.result(timeout=(timeout or self.timeout * 2) + 1)
        self._stop()

    def _stop(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.stop()
            self._worker.thread.join(self.timeout)
        for channel in self._channels:
            # Queued sends are dropped; a running one ends with its socket timeouts.
            channel.executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Pager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
