"""Paging: the in-process pager (apprise) that pages the moment a breaker trips or trading
halts, without waiting for a scrape.

The Prometheus rules and the Alertmanager config are generated artefacts: they live in
:mod:`exitguard.artefacts`, which this package does not need.
"""

from __future__ import annotations

from .pager import PageKind, Pager, PageResult, parse_urls

__all__ = ["PageKind", "PageResult", "Pager", "parse_urls"]
