"""What an ``@instrumented_exit`` function returned, read as its attempt's result.

Understood shapes (anything else is "unrecognised", and the decorator warns once per
decorated function, naming these):

- an exitguard ``Fill``, or any object (or mapping) with ``price`` and/or ``size`` (and
  optionally ``tx_id``): filled, that size (default the whole order) at that price;
- a number: the fill price of the whole order;
- a ccxt order (the unified order structure every ccxt exchange returns from
  ``create_order`` / ``fetch_order``: ``id``, ``clientOrderId``, ``status``, ``amount``,
  ``filled``, ``remaining``, ``average``, ``price``, ``cost``). ``status`` "closed" is filled;
  "open" (or no status) may still fill, with what it ``filled`` so far; "canceled" /
  "expired" ended with what it filled (nothing: expired); "rejected" did not land. The price
  is ``average``, else ``cost / filled``, else ``price``.

Read without importing ccxt: the shape is ccxt's documented unified order, a plain dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .._validate import is_real

__all__ = ["EXPECTED", "ExitResultWarning", "Returned", "read_returned"]

#: What the decorator's warning says it can read.
EXPECTED = (
    "an exitguard Fill (or an object or dict with .price/.size/.tx_id), the fill price as a"
    " number, or a ccxt order dict (id, status, filled, average/price, amount, remaining)"
)

State = Literal["filled", "open", "ended", "rejected", "unrecognised"]


class ExitResultWarning(UserWarning):
    """An ``@instrumented_exit`` function returned something exitguard cannot read as a
    fill: the exit's price, size or slippage cannot be known from it."""


@dataclass(frozen=True, slots=True)
class Returned:
    """A returned value, read. ``size`` None: the whole order (for "filled"); 0: nothing."""

    state: State
    price: float | None = None
    size: float | None = None
    tx_id: str | None = None
    detail: str = ""  # what the value said, for the attempt's error text and the warning
    note: str = ""  # read, but it says too little: the decorator warns with this


def _positive(value: object) -> float | None:
    """``value`` as a float if it is a finite number > 0 (never a bool), else None."""
    return float(value) if is_real(value) and 0 < value < math.inf else None


def _filled(value: object) -> float | None:
    """A filled size: a finite number >= 0, else None (unknown)."""
    return float(value) if is_real(value) and 0 <= value < math.inf else None


def _is_ccxt_order(value: Mapping[object, object]) -> bool:
    return "status" in value and ("filled" in value or "amount" in value) and (
        "id" in value or "clientOrderId" in value)


def _ccxt(order: Mapping[object, object]) -> Returned:
    ident = order.get("id") or order.get("clientOrderId")
    tx_id = str(ident) if ident not in (None, "") else None
    status = order.get("status")
    amount = _positive(order.get("amount"))
    filled = _filled(order.get("filled"))
    remaining = _filled(order.get("remaining"))
    if filled is None and amount is not None and remaining is not None:
        filled = max(0.0, amount - remaining)
    price = _positive(order.get("average"))
    cost = _positive(order.get("cost"))
    if price is None and cost is not None and filled:
        price = cost / filled
    if price is None:
        price = _positive(order.get("price"))
    said = f"ccxt order {tx_id} status {status!r}, filled {filled!r} of {amount!r}"
    if status == "closed":
        # ccxt's "closed" is fully filled; filled (else amount) is how much.
        return Returned("filled", price, filled if filled else amount, tx_id, said)
    if status in ("canceled", "cancelled", "expired"):
        return Returned("ended", price if filled else None, filled or 0.0, tx_id, said)
    if status == "rejected":
        return Returned("rejected", None, 0.0, tx_id, said)
    if status is None and filled and remaining == 0:
        return Returned("filled", price, filled, tx_id, said)
    # "open", or no status: what filled so far is sold, the rest may still fill.
    note = "" if status is not None or filled else (
        f"the ccxt order {tx_id} has no status or fill (some exchanges answer create_order"
        " with the id only): its outcome is unknown, so the exit is recorded as one that may"
        " still land; return the order from fetch_order, or report the fill through"
        " current_exit().current_attempt")
    return Returned("open", price if filled else None, filled or 0.0, tx_id, said, note)


def read_returned(result: object) -> Returned:
    """What ``result`` says the attempt did."""
    if isinstance(result, bool) or result is None:
        return Returned("unrecognised", detail=repr(result))
    if is_real(result):
        price = _positive(result)
        if price is None:
            return Returned("unrecognised", detail=repr(result))
        return Returned("filled", price, None, None, f"price {price:g}")
    if isinstance(result, Mapping):
        if _is_ccxt_order(result):
            return _ccxt(result)
        price, size, tx_id = result.get("price"), result.get("size"), result.get("tx_id")
    else:
        price = getattr(result, "price", None)
        size = getattr(result, "size", None)
        tx_id = getattr(result, "tx_id", None)
    price, size = _positive(price), _positive(size)
    if price is None and size is None:
        return Returned("unrecognised", detail=type(result).__name__)
    return Returned("filled", price, size, tx_id if isinstance(tx_id, str) and tx_id else None,
                    type(result).__name__)
