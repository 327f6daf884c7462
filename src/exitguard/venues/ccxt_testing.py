"""A loopback exchange speaking Binance spot's REST dialect, with scripted faults.

It lets the real ``ccxt.async_support.binance`` client (and so ``CcxtVenue``) run offline:
exchangeInfo, time, ticker, account, order create / query / cancel, openOrders and
allOrders, HMAC-signed like Binance, with Binance's error codes and HTTP statuses
(-2010 rejected / insufficient balance, -2013 order does not exist, -2011 unknown order on
cancel, -1021 timestamp outside recvWindow, -1013 filter failure, -1003 / HTTP 429 rate
limit, -1104 unread parameters).

It keeps the ground truth, what was really sold and bought, so a test asserts on the
exchange rather than on what the client believes, and each order request can be scripted
(``CreateFault``): refused, held before it reaches the matching engine, accepted and then
never answered, answered 5xx after filling, invisible to queries for a while, partly filled,
filled later. Other endpoints take ``EndpointFault`` (hang, or an error).

Why it lives in the package, not in tests/: the example bot and the test suite share it,
and a user can test their own ccxt bot's exits against it (``pip install
'exitguard[ccxt]'`` brings aiohttp, its only dependency, with ccxt). It binds 127.0.0.1 on
a free port and stops with its context manager, waking any request it holds.

    async with BinanceLoopback(balances={"BTC": 3.0}) as exchange_server:
        exchange = ccxt.async_support.binance({"apiKey": LOOPBACK_KEY, "secret": LOOPBACK_SECRET})
        exchange_server.configure(exchange)

Why one module of about 560 lines: it is one fake exchange (its order book, signatures and
fault script share one state); it ships in the package so users can test their own bots.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import math
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

__all__ = [
    "LOOPBACK_KEY",
    "LOOPBACK_SECRET",
    "BinanceLoopback",
    "CreateFault",
    "EndpointFault",
    "LoopbackOrder",
    "Market",
]

#: Credentials the loopback accepts (not secrets: they only open the loopback).
LOOPBACK_KEY = "loopback-api-key"
LOOPBACK_SECRET = "loopback-api-secret"

_ORDER_PARAMS = frozenset({
    "symbol", "side", "type", "timeInForce", "quantity", "quoteOrderQty", "price",
    "newClientOrderId", "newOrderRespType", "timestamp", "recvWindow", "signature",
    "selfTradePreventionMode",
})
_OPEN = ("NEW", "PARTIALLY_FILLED")


@dataclass(frozen=True, slots=True)
class Market:
    """One spot market: its filters (Binance's LOT_SIZE, PRICE_FILTER, NOTIONAL) and book."""

    base: str
    quote: str
    bid: float
    ask: float
    step_size: float = 0.00001
    tick_size: float = 0.01
    min_notional: float = 5.0

    @property
    def id(self) -> str:
        return self.base + self.quote


@dataclass(slots=True)
class CreateFault:
    """What happens to one order request (faults are taken in arrival order).

    ``reject`` = (HTTP status, Binance code, message): refused, nothing placed.
    ``delay``: held this long before it reaches the matching engine (where recvWindow is
    checked: a request older than its recvWindow is refused with -1021, unseen).
    ``fill``: the fraction filled on arrival (a market order's rest expires, a limit
    order's rests); ``fill_later``: seconds after acceptance when a resting rest fills.
    ``answer``: "ok"; "hang" (accepted, never answered); "5xx" (accepted, then
    ``status_5xx``). ``invisible_for``: queries and cancels answer "does not exist" for this
    long after acceptance (Binance does for a few seconds).
    """

    reject: tuple[int, int, str] | None = None
    delay: float = 0.0
    fill: float = 1.0
    fill_later: float | None = None
    answer: Literal["ok", "hang", "5xx"] = "ok"
    status_5xx: int = 503
    invisible_for: float = 0.0


@dataclass(slots=True)
class EndpointFault:
    """One request to another endpoint: "hang" (never answered), "error" (``status``,
    ``code``, ``msg``; code 0: ``msg`` as a bare text page), or "pass" (answered normally).
    ``before`` runs first, the instant the request arrives (say, a counter-party fills the
    order a cancel is about to hit)."""

    answer: Literal["hang", "error", "pass"] = "hang"
    status: int = 503
    code: int = -1001
    msg: str = "Internal error; unable to process your request. Please try again."
    before: Callable[[], None] | None = None


@dataclass(slots=True)
class LoopbackOrder:
    """An order as the exchange knows it (the ground truth)."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    quantity: float
    price: float | None
    time_in_force: str | None
    created_ms: int
    accepted_at: float  # loop time
    visible_at: float  # loop time
    ended_at: float | None = None  # loop time it became terminal (filled, cancelled, expired)
    status: str = "NEW"
    executed: float = 0.0
    quote_qty: float = 0.0
    fills: list[tuple[float, float]] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.status in _OPEN

    @property
    def remaining(self) -> float:
        return max(0.0, self.quantity - self.executed)


class _Answered(Exception):
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


def _error(status: int, code: int, msg: str) -> _Answered:
    return _Answered(web.json_response({"code": code, "msg": msg}, status=status))


def _fmt(value: float) -> str:
    return f"{value:.8f}"


class BinanceLoopback:
    """The loopback exchange. Use as ``async with``; ``configure(exchange)`` points a ccxt
    binance client at it. Ground truth: ``sold(symbol)``, ``bought(symbol)``, ``orders``,
    ``balances``. Scripts: ``create_faults`` (a deque of CreateFault), ``faults[(method,
    path)]`` (deques of EndpointFault), ``clock_skew_ms``."""

    def __init__(
        self,
        *,
        markets: Iterable[Market] = (Market("BTC", "USDT", bid=100.0, ask=100.1),),
        balances: Mapping[str, float] | None = None,
        api_key: str = LOOPBACK_KEY,
        secret: str = LOOPBACK_SECRET,
    ) -> None:
        self.markets = {m.id: m for m in markets}
        self.balances: dict[str, float] = {"USDT": 0.0, **(balances or {"BTC": 10.0})}
        self.locked: dict[str, float] = {}
        self.api_key = api_key
        self.secret = secret
        self.orders: list[LoopbackOrder] = []
        self.create_faults: deque[CreateFault] = deque()
        self.faults: dict[tuple[str, str], deque[EndpointFault]] = {}
        self.clock_skew_ms = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._ids = itertools.count(1000)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.port = 0

    # -- life cycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> BinanceLoopback:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        self._closing.set()  # wakes every request held by a "hang"
        for timer in self._timers:
            timer.cancel()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> BinanceLoopback:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def configure(self, exchange: Any, *, recv_window_ms: int = 1000) -> None:
        """Point a ``ccxt.async_support.binance`` at this server: every REST base URL (the
        spot ones to us, the others to a closed port so a stray margin/futures call fails
        loudly), spot-only markets without margin or currency look-ups."""
        api = exchange.urls["api"]
        for name in list(api):
            api[name] = "http://127.0.0.1:9/unused"
        api["public"] = f"{self.url}/api/v3"
        api["private"] = f"{self.url}/api/v3"
        api["v1"] = f"{self.url}/api/v1"
        exchange.options["fetchMarkets"] = {"types": ["spot"]}
        exchange.options["fetchMargins"] = False
        exchange.options["fetchCurrencies"] = False
        exchange.options["recvWindow"] = recv_window_ms
        exchange.apiKey = exchange.apiKey or self.api_key
        exchange.secret = exchange.secret or self.secret

    # -- ground truth ---------------------------------------------------------------------

    def sold(self, symbol: str = "BTCUSDT") -> float:
        return sum(o.executed for o in self.orders if o.symbol == symbol and o.side == "SELL")

    def bought(self, symbol: str = "BTCUSDT") -> float:
        return sum(o.executed for o in self.orders if o.symbol == symbol and o.side == "BUY")

    def open_orders(self, symbol: str | None = None) -> list[LoopbackOrder]:
        return [o for o in self.orders if o.open and (symbol is None or o.symbol == symbol)]

    def order_requests(self) -> list[dict[str, str]]:
        return [p for method, path, p in self.requests
                if method == "POST" and path == "/api/v3/order"]

    def set_book(self, symbol: str, bid: float, ask: float) -> None:
        """Move the market; resting orders the new book crosses fill at once."""
        market = self.markets[symbol]
        self.markets[symbol] = Market(market.base, market.quote, bid, ask, market.step_size,
                                      market.tick_size, market.min_notional)
        for order in self.open_orders(symbol):
            if order.price is not None and self._crosses(order):
                self._execute(order, order.remaining)

    def fill_resting(self, order: LoopbackOrder, quantity: float | None = None) -> None:
        """Fill (part of) a resting order at its limit price, as a counter-party would."""
        if order.open:
            self._execute(order, order.remaining if quantity is None else quantity,
                          price=order.price)

    # -- matching -------------------------------------------------------------------------

    def _server_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_skew_ms

    def _crosses(self, order: LoopbackOrder) -> bool:
        market = self.markets[order.symbol]
        assert order.price is not None
        return order.price <= market.bid if order.side == "SELL" else order.price >= market.ask

    def _execute(self, order: LoopbackOrder, quantity: float, price: float | None = None) -> None:
        quantity = min(quantity, order.remaining)
        if quantity <= 0:
            return
        market = self.markets[order.symbol]
        if price is None:
            price = market.bid if order.side == "SELL" else market.ask
        order.executed += quantity
        order.quote_qty += quantity * price
        order.fills.append((price, quantity))
        base, quote = market.base, market.quote
        if order.side == "SELL":
            self.locked[base] = self.locked.get(base, 0.0) - quantity
            self.balances[quote] = self.balances.get(quote, 0.0) + quantity * price
        else:
            self.locked[quote] = self.locked.get(quote, 0.0) - quantity * (order.price or price)
            self.balances[base] = self.balances.get(base, 0.0) + quantity
        if order.remaining <= 1e-12:
            order.status = "FILLED"
            order.ended_at = asyncio.get_running_loop().time()
        else:
            order.status = "PARTIALLY_FILLED"

    def _release(self, order: LoopbackOrder) -> None:
        market = self.markets[order.symbol]
        if order.side == "SELL":
            asset, amount = market.base, order.remaining
        else:
            asset, amount = market.quote, order.remaining * (order.price or market.ask)
        self.locked[asset] = self.locked.get(asset, 0.0) - amount
        self.balances[asset] = self.balances.get(asset, 0.0) + amount

    def _schedule(self, delay: float, callback: Any) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay, callback))

    # -- HTTP ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.raw_query_string
        body = await request.text() if request.method == "POST" else ""
        params = dict(urllib.parse.parse_qsl(query or body))
        if request.method == "POST" and query and body:
            params.update(urllib.parse.parse_qsl(body))
        path = request.path
        self.requests.append((request.method, path, params))
        try:
            queue = self.faults.get((request.method, path))
            if queue:
                fault = queue.popleft()
                if fault.before is not None:
                    fault.before()
                if fault.answer == "hang":
                    await self._closing.wait()
                    raise _error(503, -1001, "server closing")
                if fault.answer == "error" and fault.code == 0:  # a proxy's bare page
                    return web.Response(status=fault.status, text=fault.msg)
                if fault.answer == "error":
                    raise _error(fault.status, fault.code, fault.msg)
            route = {
                ("GET", "/api/v3/ping"): self._ping,
                ("GET", "/api/v3/time"): self._time,
                ("GET", "/api/v3/exchangeInfo"): self._exchange_info,
                ("GET", "/api/v3/ticker/24hr"): self._ticker,
                ("GET", "/api/v3/account"): self._account,
                ("POST", "/api/v3/order"): self._create,
                ("GET", "/api/v3/order"): self._query,
                ("DELETE", "/api/v3/order"): self._cancel,
                ("GET", "/api/v3/openOrders"): self._open_orders,
                ("GET", "/api/v3/allOrders"): self._all_orders,
            }.get((request.method, path))
            if route is None:
                raise _error(404, -1000, f"unknown endpoint {request.method} {path}")
            signed = path not in ("/api/v3/ping", "/api/v3/time", "/api/v3/exchangeInfo",
                                  "/api/v3/ticker/24hr")
            if signed:
                self._authenticate(request, query if request.method != "POST" else body,
                                   params)
            return await route(params)
        except _Answered as answered:
            return answered.response

    def _authenticate(self, request: web.Request, payload: str, params: dict[str, str]) -> None:
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            raise _error(401, -2015, "Invalid API-key, IP, or permissions for action.")
        signed, _, signature = payload.rpartition("&signature=")
        expected = hmac.new(self.secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, expected):
            raise _error(400, -1022, "Signature for this request is not valid.")
        self._check_window(params)

    def _check_window(self, params: dict[str, str]) -> None:
        timestamp = int(params.get("timestamp", "0"))
        window = int(params.get("recvWindow", "5000"))
        now = self._server_ms()
        if timestamp > now + 1000 or now - timestamp > window:
            raise _error(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    async def _ping(self, params: dict[str, str]) -> web.StreamResponse:
        return web.json_response({})

    async def _time(self, params: dict[str, str]) -> web.StreamResponse:
        return web.json_response({"serverTime": self._server_ms()})

    async def _exchange_info(self, params: dict[str, str]) -> web.StreamResponse:
        symbols = [
            {
                "symbol": m.id, "status": "TRADING", "baseAsset": m.base,
                "baseAssetPrecision": 8, "quoteAsset": m.quote, "quotePrecision": 8,
                "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
                "icebergAllowed": True, "ocoAllowed": False, "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False, "permissions": [], "permissionSets": [["SPOT"]],
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": _fmt(m.tick_size),
                     "maxPrice": "1000000.00000000", "tickSize": _fmt(m.tick_size)},
                    {"filterType": "LOT_SIZE", "minQty": _fmt(m.step_size),
                     "maxQty": "9000.00000000", "stepSize": _fmt(m.step_size)},
                    {"filterType": "NOTIONAL", "minNotional": _fmt(m.min_notional),
                     "applyMinToMarket": True, "maxNotional": "9000000.00000000",
                     "applyMaxToMarket": False, "avgPriceMins": 5},
                ],
            }
            for m in self.markets.values()
        ]
        return web.json_response({"timezone": "UTC", "serverTime": self._server_ms(),
                                  "rateLimits": [], "exchangeFilters": [], "symbols": symbols})

    async def _ticker(self, params: dict[str, str]) -> web.StreamResponse:
        market = self._market(params)
        last = (market.bid + market.ask) / 2
        return web.json_response({
            "symbol": market.id, "priceChange": "0", "priceChangePercent": "0",
            "weightedAvgPrice": _fmt(last), "prevClosePrice": _fmt(last),
            "lastPrice": _fmt(last), "lastQty": "1", "bidPrice": _fmt(market.bid),
            "bidQty": "10", "askPrice": _fmt(market.ask), "askQty": "10",
            "openPrice": _fmt(last), "highPrice": _fmt(last), "lowPrice": _fmt(last),
            "volume": "0", "quoteVolume": "0", "openTime": self._server_ms() - 86_400_000,
            "closeTime": self._server_ms(), "firstId": 0, "lastId": 0, "count": 0,
        })

    async def _account(self, params: dict[str, str]) -> web.StreamResponse:
        return web.json_response({
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "accountType": "SPOT",
            "updateTime": self._server_ms(), "permissions": ["SPOT"],
            "balances": [{"asset": a, "free": _fmt(v), "locked": _fmt(self.locked.get(a, 0.0))}
                         for a, v in sorted(self.balances.items())],
        })

    def _market(self, params: dict[str, str]) -> Market:
        market = self.markets.get(params.get("symbol", ""))
        if market is None:
            raise _error(400, -1121, "Invalid symbol.")
        return market

    async def _create(self, params: dict[str, str]) -> web.StreamResponse:
        unread = set(params) - _ORDER_PARAMS
        if unread:
            raise _error(400, -1104, f"Not all sent parameters were read; read "
                         f"'{len(params) - len(unread)}' parameter(s) but was sent "
                         f"'{len(params)}'.")
        fault = self.create_faults.popleft() if self.create_faults else CreateFault()
        if fault.reject is not None:
            raise _error(*fault.reject)
        if fault.delay:
            await asyncio.sleep(fault.delay)
            self._check_window(params)  # the matching engine checks recvWindow again
        market = self._market(params)
        side, kind = params.get("side", ""), params.get("type", "")
        if side not in ("SELL", "BUY") or kind not in ("LIMIT", "MARKET"):
            raise _error(400, -1116, "Invalid orderType.")
        quantity = float(params.get("quantity", "nan"))
        steps = quantity / market.step_size
        if not math.isfinite(quantity) or quantity < market.step_size or abs(
                steps - round(steps)) > 1e-6:
            raise _error(400, -1013, "Filter failure: LOT_SIZE")
        price: float | None = None
        if kind == "LIMIT":
            price = float(params.get("price", "nan"))
            ticks = price / market.tick_size
            if not math.isfinite(price) or abs(ticks - round(ticks)) > 1e-6:
                raise _error(400, -1013, "Filter failure: PRICE_FILTER")
        if quantity * (price or market.bid) < market.min_notional:
            raise _error(400, -1013, "Filter failure: NOTIONAL")
        client_id = params.get("newClientOrderId", "")
        if any(o.client_order_id == client_id and o.open for o in self.orders):
            raise _error(400, -2010, "Duplicate order sent.")
        asset, need = ((market.base, quantity) if side == "SELL"
                       else (market.quote, quantity * (price or market.ask)))
        if self.balances.get(asset, 0.0) + 1e-12 < need:
            raise _error(400, -2010, "Account has insufficient balance for requested action.")
        self.balances[asset] -= need
        self.locked[asset] = self.locked.get(asset, 0.0) + need
        loop = asyncio.get_running_loop()
        now = loop.time()
        order = LoopbackOrder(
            order_id=next(self._ids), client_order_id=client_id, symbol=market.id, side=side,
            type=kind, quantity=quantity, price=price,
            time_in_force=params.get("timeInForce"), created_ms=self._server_ms(),
            accepted_at=now, visible_at=now + fault.invisible_for,
        )
        self.orders.append(order)
        if kind == "MARKET" or self._crosses(order):
            self._execute(order, quantity * fault.fill)
        if kind == "MARKET" and order.open:
            order.status = "EXPIRED"  # no more liquidity: Binance expires the rest
            order.ended_at = now
            self._release(order)
        elif order.open and fault.fill_later is not None:
            self._schedule(fault.fill_later, lambda: self.fill_resting(order))
        if fault.answer == "hang":
            await self._closing.wait()
            raise _error(503, -1001, "server closing")
        if fault.answer == "5xx":
            return web.Response(status=fault.status_5xx, text="Service Unavailable")
        return web.json_response(self._order_json(order, full=True))

    def _find(self, params: dict[str, str], code: int, msg: str) -> LoopbackOrder:
        market = self._market(params)
        now = asyncio.get_running_loop().time()
        client_id = params.get("origClientOrderId")
        order_id = params.get("orderId")
        for order in reversed(self.orders):
            if order.symbol != market.id or order.visible_at > now:
                continue
            if (client_id is not None and order.client_order_id == client_id) or (
                    client_id is None and order_id is not None
                    and str(order.order_id) == order_id):
                return order
        raise _error(400, code, msg)

    async def _query(self, params: dict[str, str]) -> web.StreamResponse:
        order = self._find(params, -2013, "Order does not exist.")
        return web.json_response(self._order_json(order))

    async def _cancel(self, params: dict[str, str]) -> web.StreamResponse:
        order = self._find(params, -2011, "Unknown order sent.")
        if not order.open:
            raise _error(400, -2011, "Unknown order sent.")
        order.status = "CANCELED"
        order.ended_at = asyncio.get_running_loop().time()
        self._release(order)
        answer = self._order_json(order)
        answer["origClientOrderId"] = order.client_order_id
        answer["clientOrderId"] = "cancel" + str(order.order_id)
        return web.json_response(answer)

    async def _open_orders(self, params: dict[str, str]) -> web.StreamResponse:
        market = self._market(params)
        now = asyncio.get_running_loop().time()
        return web.json_response([self._order_json(o) for o in self.orders
                                  if o.symbol == market.id and o.open and o.visible_at <= now])

    async def _all_orders(self, params: dict[str, str]) -> web.StreamResponse:
        market = self._market(params)
        now = asyncio.get_running_loop().time()
        since = int(params.get("startTime", "0"))
        return web.json_response([self._order_json(o) for o in self.orders
                                  if o.symbol == market.id and o.visible_at <= now
                                  and o.created_ms >= since])

    def _order_json(self, order: LoopbackOrder, *, full: bool = False) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "symbol": order.symbol, "orderId": order.order_id, "orderListId": -1,
            "clientOrderId": order.client_order_id,
            "price": _fmt(order.price or 0.0), "origQty": _fmt(order.quantity),
            "executedQty": _fmt(order.executed), "cummulativeQuoteQty": _fmt(order.quote_qty),
            "status": order.status, "timeInForce": order.time_in_force or "GTC",
            "type": order.type, "side": order.side, "workingTime": order.created_ms,
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }
        if full:
            answer["transactTime"] = order.created_ms
            answer["fills"] = [
                {"price": _fmt(p), "qty": _fmt(q), "commission": "0", "commissionAsset": "USDT",
                 "tradeId": index}
                for index, (p, q) in enumerate(order.fills)
            ]
        else:
            answer.update({"stopPrice": "0.00000000", "icebergQty": "0.00000000",
                           "time": order.created_ms, "updateTime": self._server_ms(),
                           "isWorking": True, "origQuoteOrderQty": "0.00000000"})
        return answer
