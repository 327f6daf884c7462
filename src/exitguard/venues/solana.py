"""Solana exits through Jupiter: ``JupiterSwapVenue`` (``pip install 'exitguard[solana]'``).

Why this module exists: the incident behind exitguard was a Solana stop-loss whose
transaction timed out; the bot re-signed a new sell at once and a 5% loss became 17%.
Solana states exactly when resending is safe. A signed transaction can land until the
chain's block height passes the ``lastValidBlockHeight`` of its blockhash; before that a
second signature can sell twice, after it the first can never land. This venue follows
that rule and gives ``ExitGuard`` what it needs to follow it across restarts:

* ``prepare(order)`` quotes (``GET /quote``), asks Jupiter for the swap transaction
  (``POST /swap``), checks it pays from our wallet, signs it, and **sends nothing**. The
  returned ``Submission`` carries the real signature as ``tx_id`` and, in ``venue_data``
  (strings, for the pending store): ``blockhash``, ``last_valid_block_height``,
  ``signed_tx`` (base64 wire bytes), ``in_amount`` / ``out_amount`` / ``min_out`` (base
  units) and the mints.
* ``broadcast(submission)`` sends those exact bytes (``sendTransaction``); the guard may
  call it again: a rebroadcast never re-signs.
* ``lookup(submission)`` works from ``tx_id`` + ``venue_data`` alone (after a restart):
  it reads the block height first (``getEpochInfo``: height and slot from one node), then
  ``getSignatureStatuses`` (with ``searchTransactionHistory`` for a submission this process
  did not prepare, and before any "not found" becomes EXPIRED). LANDED only for a
  transaction that succeeded at the venue's commitment; FAILED for one that landed with
  ``err`` set (a failed swap: the fee was paid, nothing was sold); PENDING while the block
  height (at ``expiry_commitment``, finalized by default) is at most
  ``lastValidBlockHeight``; EXPIRED only after it, and only from a status answered at or
  after the slot of that height (behind a load balancer, a status node lagging the height
  node must not turn a landed sell into an expiry).
* ``confirm(submission)`` polls ``lookup`` and rebroadcasts the same bytes while pending.
* A second line of defence: ``prepare`` refuses (``DoubleSellRefused``, nothing sent) to
  sign a new sell of a position while this venue's earlier transaction for it may land
  or landed unseen; ``submit`` hands that earlier submission back instead of signing.

Escalation in Solana's terms: the ladder's ``max_slippage_bps`` is Jupiter's
``slippageBps``; its ``priority_fee`` is ``computeUnitPriceMicroLamports`` (default) or
``prioritizationFeeLamports`` (``priority_fee="lamports"``), capped by
``max_priority_fee``. ``solana_ladder()`` gives values in those units. A LIMIT step also
refuses (``SlippageExceeded``, nothing sent) a quote worse than the order's worst price.

Error mapping. "First broadcast" means the first send of a signature this venue instance
prepared; any later send (a rebroadcast, or any send after a restart) cannot prove that
no earlier copy went out, so it never raises a definite rejection. A refused connection
or a 429 proves "not sent" only with ``AsyncClient(..., max_transport_retries=0)``:
solana-py otherwise re-posts after a transport error, and the first post may have gone.
``skip_preflight=True`` sends even the first copy unsimulated (a failing swap then lands
failed and pays its fee).

================================  ===============================  ====================
What happened                     Raised / reported                Guard's action
================================  ===============================  ====================
quote/swap HTTP error, 429,       ``OrderNotSent`` (from           resend: nothing left
timeout (prepare sends nothing)   ``prepare``)                     the process
RPC timeout on send or status     ``RpcTimeout``                   reconcile (may land)
connection refused (first send)   ``OrderNotSent``                 resend
connection reset / 5xx on send    ``NetworkError``                 reconcile (may land)
429 on first send                 ``OrderNotSent`` (not processed) resend
429 on a rebroadcast / status     ``RateLimited`` (NetworkError)   reconcile, back off
preflight ``BlockhashNotFound``,  ``TxExpired`` (first send; else  fresh order, higher
height > lastValidBlockHeight     ``NetworkError``)                fee
preflight ``BlockhashNotFound``,  ``OrderNotSent`` (first send;    resend / reconcile
height <= lvbh (node behind)      else ``NodeBehind``)
node behind (-32005, -32016)      ``NodeBehind`` (NetworkError)    reconcile
preflight ``AlreadyProcessed``    success: it is on chain          lookup resolves it
insufficient SOL for fees         ``InsufficientBalance``          permanent: top up SOL
(``InsufficientFundsForFee``,
rent, fee payer not found)
Jupiter 6001 (``0x1771``)         preflight: ``SlippageExceeded``;  next ladder step
SlippageToleranceExceeded         landed: FAILED, ``confirm``
                                  raises ``SlippageExceeded``
Jupiter 6017 ExactOut not matched same as 6001                     next ladder step
Jupiter 6024 InsufficientFunds    ``InsufficientBalance``          permanent
Jupiter 6025 InvalidTokenAccount  ``InvalidAccount``               permanent
other preflight failure (first)   ``OrderNotSent``                 resend
landed with another ``err``       FAILED (``SwapFailed``)          fresh order
================================  ===============================  ====================

The fill is what the wallet really got: ``size`` is the quote's ``inAmount`` (ExactIn;
for a token input, what the wallet's token balance lost), ``price`` what the wallet's
``output_mint`` token accounts received per unit, read from ``getTransaction``'s
``preTokenBalances`` / ``postTokenBalances`` once the swap landed. When the node has not
indexed the transaction yet or shows no output-token balance (a native SOL output), the
quote's ``outAmount`` stands in, and the swap's real output is at least ``min_out``
(``otherAmountThreshold``). ``ExitOrder.valid_for`` is not used: the blockhash's
``lastValidBlockHeight`` (about 60-90 s on mainnet) decides when a transaction can no
longer land, so give the guard a ``deadline`` above that. Long positions only (selling
``input_mint`` for ``output_mint``); a short raises ``UnsupportedOrder``.

Why one module of about 900 lines: one venue, whose resend rule (the block height against
``lastValidBlockHeight``), error table and fill reading only make sense side by side; most of
the length is this docstring and the error mapping.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx2
from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment, Confirmed, Finalized, Processed
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.rpc.errors import SendTransactionPreflightFailureMessage
from solders.signature import Signature
from solders.transaction import VersionedTransaction
from solders.transaction_status import (
    InstructionErrorCustom,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
    TransactionErrorInsufficientFundsForRent,
    TransactionStatus,
    UiTransactionStatusMeta,
)

from ..errors import (
    ConfigError,
    ErrorClass,
    ExitError,
    InsufficientBalance,
    InvalidAccount,
    InvalidVenueResponse,
    NetworkError,
    OrderNotSent,
    RpcTimeout,
    SlippageExceeded,
    TxExpired,
)
from ..policy import EscalationLadder, EscalationStep
from ..redaction import get_logger
from ..venue import ExitOrder, Fill, Lookup, OrderMode, Position, Submission, TxStatus

# Redacting logger: errors quote RPC URLs (which often carry an API key in their path).
_log = get_logger("exitguard.venues.solana")
_T = TypeVar("_T")

#: Jupiter's public Swap API (no key). Pass ``jupiter_url="https://api.jup.ag/swap/v1"``
#: and ``jupiter_api_key`` for the keyed one.
DEFAULT_JUPITER_URL = "https://lite-api.jup.ag/swap/v1"

#: Jupiter program errors (https://dev.jup.ag/docs/swap/common-errors).
JUPITER_SLIPPAGE_EXCEEDED = 6001  # 0x1771 SlippageToleranceExceeded
JUPITER_EXACT_OUT_NOT_MATCHED = 6017  # 0x1781 ExactOutAmountNotMatched ("similar to slippage")
JUPITER_INSUFFICIENT_FUNDS = 6024  # 0x1788 swap amount, fees or rent
JUPITER_INVALID_TOKEN_ACCOUNT = 6025  # 0x1789

PriorityFeeMode = Literal["compute_unit_price", "lamports"]

_RANK = {Processed: 0, Confirmed: 1, Finalized: 2}


class RateLimited(NetworkError):
    """The RPC or Jupiter answered 429 Too Many Requests."""


class NodeBehind(NetworkError):
    """The RPC node is behind the cluster (-32005 unhealthy, -32016 min context slot, or a
    blockhash it does not know yet while the block height says it is valid)."""


class SwapFailed(ExitError):
    """The swap transaction landed with an error other than the mapped ones: its fee was
    paid, nothing was sold."""

    error_class = ErrorClass.TX_EXPIRED  # cannot land any more: a fresh order is safe


class DoubleSellRefused(OrderNotSent):
    """``prepare`` refused to sign a new sell of a position while this venue's earlier
    transaction for it may still land (nothing was sent)."""


class UnsupportedOrder(ExitError):
    """An order this venue cannot express (a short position, an amount below one base
    unit): permanent, nothing sent."""


def solana_ladder() -> EscalationLadder:
    """A ladder in this venue's units (slippage bps, compute-unit price in micro-lamports).

    Limit at 50 bps and 50 000 uL/CU, then market at 300 bps and 500 000 uL/CU; every
    resubmission after an expiry doubles the fee, capped at 5 000 000 uL/CU (about 0.001
    SOL at 200 000 CU) and 500 bps.
    """
    return EscalationLadder(
        steps=(
            EscalationStep(OrderMode.LIMIT, 50, priority_fee=50_000, attempts=1),
            EscalationStep(OrderMode.MARKET, 300, priority_fee=500_000, attempts=1),
        ),
        fee_multiplier=2.0,
        max_priority_fee=5_000_000,
        max_slippage_bps=500,
    )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What this process knows of a signature it signed."""

    position_id: str
    submission: Submission
    broadcasts: int = 0


def _positive(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ConfigError(owner, name, "must be a finite number > 0", value)
    return float(value)


def _pubkey(owner: str, name: str, value: object) -> Pubkey:
    if isinstance(value, Pubkey):
        return value
    try:
        return Pubkey.from_string(str(value))
    except ValueError:
        raise ConfigError(owner, name, "must be a base58 public key", value) from None


class JupiterSwapVenue:
    """Sell ``input_mint`` for ``output_mint`` through Jupiter, signed by ``keypair`` and
    sent through ``rpc`` (any RPC URL, as a ``solana.rpc.async_api.AsyncClient``).

    A ``TwoPhaseVenue``: see the module docstring for the contract, the error table and
    the units of the ladder. Intervals and timeouts are seconds of the running loop.

    - ``input_decimals`` / ``output_decimals``: the mints' decimals (position sizes are in
      UI units of ``input_mint``; prices in ``output_mint`` per unit).
    - ``jupiter_url``, ``jupiter_api_key`` (sent as ``x-api-key``, never logged).
    - ``priority_fee``: what the ladder's fee means, ``"compute_unit_price"``
      (micro-lamports per CU) or ``"lamports"`` (Jupiter's prioritizationFeeLamports);
      ``max_priority_fee`` caps it in the same unit.
    - ``commitment``: the level at which a landing counts (LANDED or FAILED);
      ``expiry_commitment``: the level of the block height that decides EXPIRED.
    - ``rpc_timeout`` bounds every RPC call, ``http_timeout`` every Jupiter call;
      ``confirm_interval`` / ``rebroadcast_interval`` pace ``confirm``.
    - ``max_retries``: sendTransaction's ``maxRetries`` (None: the node's default);
      ``skip_preflight``: send even the first copy unsimulated.
    - Pass ``AsyncClient(url, max_transport_retries=0)`` so that a refused connection or
      a 429 on the first send counts as "not sent" (else it is reconciled).
    """

    def __init__(
        self,
        rpc: AsyncClient,
        keypair: Keypair,
        *,
        input_mint: str | Pubkey,
        output_mint: str | Pubkey,
        input_decimals: int,
        output_decimals: int,
        jupiter_url: str = DEFAULT_JUPITER_URL,
        jupiter_api_key: str | None = None,
        priority_fee: PriorityFeeMode = "compute_unit_price",
        max_priority_fee: int = 5_000_000,
        commitment: Commitment = Confirmed,
        expiry_commitment: Commitment = Finalized,
        rpc_timeout: float = 5.0,
        http_timeout: float = 5.0,
        confirm_interval: float = 0.5,
        rebroadcast_interval: float = 2.0,
        max_retries: int | None = None,
        skip_preflight: bool = False,
        name: str = "jupiter",
        http: httpx2.AsyncClient | None = None,
    ) -> None:
        owner = "JupiterSwapVenue"
        if not isinstance(rpc, AsyncClient):
            raise ConfigError(owner, "rpc", "must be a solana AsyncClient", type(rpc).__name__)
        if not isinstance(keypair, Keypair):
            raise ConfigError(owner, "keypair", "must be a solders Keypair",
                              type(keypair).__name__)
        self.input_mint = _pubkey(owner, "input_mint", input_mint)
        self.output_mint = _pubkey(owner, "output_mint", output_mint)
        if self.input_mint == self.output_mint:
            raise ConfigError(owner, "output_mint", "must differ from input_mint",
                              str(output_mint))
        for field_name, decimals in (("input_decimals", input_decimals),
                                     ("output_decimals", output_decimals)):
            if isinstance(decimals, bool) or not isinstance(decimals, int) or not (
                0 <= decimals <= 18
            ):
                raise ConfigError(owner, field_name, "must be an int in 0..18", decimals)
        if not isinstance(jupiter_url, str) or not jupiter_url.startswith(("http://",
                                                                            "https://")):
            raise ConfigError(owner, "jupiter_url", "must be an http(s) URL", jupiter_url)
        if priority_fee not in ("compute_unit_price", "lamports"):
            raise ConfigError(owner, "priority_fee",
                              "must be 'compute_unit_price' or 'lamports'", priority_fee)
        if isinstance(max_priority_fee, bool) or not isinstance(max_priority_fee, int) or (
            max_priority_fee < 0
        ):
            raise ConfigError(owner, "max_priority_fee", "must be an int >= 0",
                              max_priority_fee)
        for field_name, level in (("commitment", commitment),
                                  ("expiry_commitment", expiry_commitment)):
            if level not in _RANK:
                raise ConfigError(owner, field_name,
                                  "must be processed, confirmed or finalized", level)
        if max_retries is not None and (
            isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0
        ):
            raise ConfigError(owner, "max_retries", "must be None or an int >= 0", max_retries)
        if not isinstance(name, str) or not name:
            raise ConfigError(owner, "name", "must be a non-empty string", name)
        self.rpc = rpc
        self._keypair = keypair
        self.wallet = keypair.pubkey()
        self.input_decimals = input_decimals
        self.output_decimals = output_decimals
        self.jupiter_url = jupiter_url.rstrip("/")
        self.priority_fee = priority_fee
        self.max_priority_fee = max_priority_fee
        self.commitment = commitment
        self.expiry_commitment = expiry_commitment
        self.rpc_timeout = _positive(owner, "rpc_timeout", rpc_timeout)
        self.http_timeout = _positive(owner, "http_timeout", http_timeout)
        self.confirm_interval = _positive(owner, "confirm_interval", confirm_interval)
        self.rebroadcast_interval = _positive(owner, "rebroadcast_interval",
                                              rebroadcast_interval)
        self.max_retries = max_retries
        self.skip_preflight = bool(skip_preflight)
        self.name = name
        # The key goes in a header only: never in a URL, a log line or an error message.
        self._headers = {"x-api-key": jupiter_api_key} if jupiter_api_key else {}
        self._http = http
        self._own_http = http is None
        self._prepared: dict[str, _Prepared] = {}  # signature -> what we signed
        self._by_client_id: dict[str, str] = {}  # client order id -> signature (submit)
        self._live: dict[str, Submission] = {}  # position id -> what may still land
        self._failures: dict[str, ExitError] = {}  # signature -> why it landed as failed

    def __repr__(self) -> str:  # never the keypair or the API key
        return (f"JupiterSwapVenue(name={self.name!r}, wallet={self.wallet}, "
                f"{self.input_mint} -> {self.output_mint}, jupiter={self.jupiter_url!r})")

    async def aclose(self) -> None:
        """Close the HTTP client this venue created (not ``rpc``: it is the caller's)."""
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- amounts ------------------------------------------------------------------------

    def _amount(self, size: float) -> int:
        """Base units to sell: the nearest, minus one if that is more than the order. (Not a
        bare floor: 0.57 * 1e9 is 569999999.99..., and one unit short would leave a
        remainder the guard would send a second transaction for.)"""
        scale: int = 10**self.input_decimals
        amount = round(size * scale)
        while amount > 0 and amount / scale > size * (1 + 1e-12):
            amount -= 1
        if amount <= 0:
            raise UnsupportedOrder(f"size {size!r} is below one base unit of {self.input_mint}")
        return amount

    def _ui_price(self, in_amount: int, out_amount: int) -> float:
        out_scale: int = 10**self.output_decimals
        in_scale: int = 10**self.input_decimals
        return (out_amount / out_scale) / (in_amount / in_scale)

    # -- Jupiter ------------------------------------------------------------------------

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = httpx2.AsyncClient(timeout=self.http_timeout)
        return self._http

    async def _jupiter(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One Jupiter call; every failure is ``OrderNotSent`` (``prepare`` sends nothing),
        ``RateLimited`` for a 429 (an ``OrderNotSent`` is raised from it)."""
        url = f"{self.jupiter_url}{path}"
        try:
            async with asyncio.timeout(self.http_timeout):
                response = await self._client().request(method, url, headers=self._headers,
                                                        **kwargs)
        except TimeoutError:
            raise OrderNotSent(f"jupiter {path} timed out after {self.http_timeout:g}s") from None
        except httpx2.HTTPError as exc:
            raise OrderNotSent(f"jupiter {path} failed: {type(exc).__name__}") from None
        if response.status_code == 429:
            raise OrderNotSent(f"jupiter {path} rate limited (429)") from RateLimited(
                "jupiter 429")
        if response.status_code != 200:
            raise OrderNotSent(f"jupiter {path} answered {response.status_code}: "
                               f"{response.text[:200]}")
        try:
            body = response.json()
        except ValueError:
            raise OrderNotSent(f"jupiter {path} answered non-JSON") from None
        if not isinstance(body, dict):
            raise OrderNotSent(f"jupiter {path} answered {type(body).__name__}, not an object")
        return body

    async def _quote(self, amount: int, slippage_bps: int) -> dict[str, Any]:
        quote = await self._jupiter("GET", "/quote", params={
            "inputMint": str(self.input_mint), "outputMint": str(self.output_mint),
            "amount": str(amount), "slippageBps": str(slippage_bps), "swapMode": "ExactIn",
        })
        try:
            in_amount = int(quote["inAmount"])
            out_amount = int(quote["outAmount"])
            int(quote["otherAmountThreshold"])
        except (KeyError, TypeError, ValueError):
            raise OrderNotSent("jupiter quote without inAmount/outAmount/otherAmountThreshold"
                               ) from None
        if in_amount != amount or out_amount <= 0:
            raise OrderNotSent(f"jupiter quoted inAmount {in_amount} / outAmount {out_amount}"
                               f" for an order of {amount}")
        return quote

    async def price(self, position: Position) -> float:
        """Jupiter's quoted price (``output`` per ``input``, UI units) for the whole size."""
        amount = self._amount(position.size)
        quote = await self._quote(amount, 50)
        return self._ui_price(int(quote["inAmount"]), int(quote["outAmount"]))

    # -- the two phases -----------------------------------------------------------------

    def _fee_field(self, fee: int | None) -> dict[str, int]:
        if fee is None:
            return {}
        capped = min(int(fee), self.max_priority_fee)
        if self.priority_fee == "lamports":
            return {"prioritizationFeeLamports": capped}
        return {"computeUnitPriceMicroLamports": capped}

    async def prepare(self, order: ExitOrder) -> Submission:
        """Quote, build, check and sign; send nothing. Raising means nothing was sent."""
        position = order.position
        if position.side != "long":
            raise UnsupportedOrder("JupiterSwapVenue exits long positions only (sells"
                                   f" {self.input_mint}); {position.id} is short")
        await self._refuse_second_sell(position.id)
        amount = self._amount(order.size)
        quote = await self._quote(amount, order.max_slippage_bps)
        out_amount = int(quote["outAmount"])
        min_out = int(quote["otherAmountThreshold"])
        if order.mode is OrderMode.LIMIT:
            worst_out = order.worst_price * (amount / 10 ** self.input_decimals)
            if out_amount / 10 ** self.output_decimals < worst_out:
                raise SlippageExceeded(
                    f"quote {self._ui_price(amount, out_amount):.10g} is worse than the"
                    f" limit {order.worst_price:.10g}; nothing signed")
        swap = await self._jupiter("POST", "/swap", json={
            "userPublicKey": str(self.wallet), "quoteResponse": quote,
            "wrapAndUnwrapSol": True, "dynamicComputeUnitLimit": True,
            **self._fee_field(order.priority_fee),
        })
        simulation = swap.get("simulationError")
        if simulation:
            raise _simulation_error(simulation)
        try:
            raw = base64.b64decode(swap["swapTransaction"], validate=True)
            unsigned = VersionedTransaction.from_bytes(raw)
            last_valid = int(swap["lastValidBlockHeight"])
        except (KeyError, TypeError, ValueError) as exc:
            raise OrderNotSent(f"jupiter swap response unusable: {type(exc).__name__}"
                               ) from None
        message = unsigned.message
        keys = message.account_keys
        if not keys or keys[0] != self.wallet:
            raise OrderNotSent("jupiter swap transaction is not paid by this wallet;"
                               " refusing to sign it")
        try:
            signed = VersionedTransaction(message, [self._keypair])
        except Exception as exc:  # solders raises its own SignerError types
            raise OrderNotSent(f"cannot sign the swap transaction: {exc}") from None
        signature = str(signed.signatures[0])
        submission = Submission(signature, order, None, {
            "blockhash": str(message.recent_blockhash),
            "last_valid_block_height": str(last_valid),
            "signed_tx": base64.b64encode(bytes(signed)).decode("ascii"),
            "in_amount": str(amount),
            "out_amount": str(out_amount),
            "min_out": str(min_out),
            "input_mint": str(self.input_mint),
            "output_mint": str(self.output_mint),
        })
        self._prepared[signature] = _Prepared(position.id, submission)
        return submission

    async def broadcast(self, submission: Submission) -> None:
        """Send the submission's signed bytes. Only a first send of a signature this
        instance prepared can raise a definite rejection; a rebroadcast raises nothing
        definite, and ``AlreadyProcessed`` is success."""
        raw = _signed_bytes(submission)
        prepared = self._prepared.get(submission.tx_id)
        first = prepared is not None and prepared.broadcasts == 0
        position_id = submission.order.position.id
        if prepared is not None:
            self._prepared[submission.tx_id] = _Prepared(
                prepared.position_id, prepared.submission, prepared.broadcasts + 1)
        self._live[position_id] = submission
        opts = TxOpts(skip_confirmation=True, skip_preflight=self.skip_preflight or not first,
                      preflight_commitment=self.commitment, max_retries=self.max_retries)
        try:
            answer = await self._call(self.rpc.send_raw_transaction(raw, opts),
                                      rpc_errors=True)
        except RPCException as exc:
            error = await self._send_rejection(exc, submission, first)
            if error is None:
                return  # AlreadyProcessed: on chain
            self._maybe_release(error, position_id, submission.tx_id)
            raise error from None
        except ExitError as error:
            if first and isinstance(error, _ConnectRefused | RateLimited) and (
                self._no_transport_retries()
            ):
                error = OrderNotSent(f"not sent: {error}")
            self._maybe_release(error, position_id, submission.tx_id)
            raise error from None
        if str(answer.value) != submission.tx_id:
            raise InvalidVenueResponse(f"sendTransaction answered signature {answer.value},"
                                       f" expected {submission.tx_id}")

    def _maybe_release(self, error: ExitError, position_id: str, signature: str) -> None:
        """A definite rejection proves the transaction went nowhere: the position is free."""
        if isinstance(error, OrderNotSent | SlippageExceeded | InsufficientBalance
                      | InvalidAccount | TxExpired):
            self._release(position_id, signature)

    async def submit(self, order: ExitOrder) -> Submission:
        """``prepare`` then ``broadcast`` (for callers outside the guard). If the broadcast
        is ambiguous, ``lookup`` of ``Submission(order.client_order_id, order)`` finds the
        signature while this process lives."""
        earlier = self._live.get(order.position.id)
        if earlier is not None:
            # A retry after an ambiguous send: that transaction may land (or did). Hand it
            # back at once (no RPC call that could hang) instead of signing a second sell:
            # confirming it gives its fill, or its expiry, which frees the position.
            _log.warning("submit: %s of position %s may still land; returning it instead of"
                         " signing a second sell", earlier.tx_id, order.position.id)
            return earlier
        submission = await self.prepare(order)
        self._by_client_id[order.client_order_id] = submission.tx_id
        await self.broadcast(submission)
        return submission

    # -- reconciliation -----------------------------------------------------------------

    async def lookup(self, submission: Submission) -> Lookup:
        return await self._lookup(submission, release=True)

    async def _lookup(self, submission: Submission, *, release: bool) -> Lookup:
        signature, data = self._resolve(submission)
        if signature is None:
            return Lookup(TxStatus.PENDING)  # an order we never signed here: cannot be sure
        last_valid = _int_or_none(data.get("last_valid_block_height"))
        restored = str(signature) not in self._prepared
        # Height first: once it is past lastValidBlockHeight the transaction can no longer
        # land, so a status read *after* it that finds nothing is final, provided the node
        # that answers the status has seen the slot of that height (behind a load
        # balancer, the two answers can come from different nodes).
        height = seen_slot = None
        if last_valid is not None:
            info = (await self._call(self.rpc.get_epoch_info(self.expiry_commitment))).value
            height, seen_slot = info.block_height, info.absolute_slot
        status, status_slot = await self._status(signature, search=restored)
        if status is None and not restored and (last_valid is None or (
                height is not None and height > last_valid)):
            status, status_slot = await self._status(signature, search=True)
        order = submission.order
        if status is not None:
            if not self._committed(status):
                return Lookup(TxStatus.PENDING)
            if release:
                self._release(order.position.id, signature)
            if status.err is None:
                return Lookup(TxStatus.LANDED,
                              await self._landed_fill(submission, signature, data))
            failure = _landed_failure(status.err, signature)
            self._failures[str(signature)] = failure
            _log.warning("landed as a failed transaction: %s", failure)
            return Lookup(TxStatus.FAILED)
        if last_valid is None or height is None or height <= last_valid:
            return Lookup(TxStatus.PENDING)
        if seen_slot is not None and status_slot < seen_slot:
            _log.debug("status of %s read at slot %d, before slot %d: not final", signature,
                       status_slot, seen_slot)
            return Lookup(TxStatus.PENDING)
        if release:
            self._release(order.position.id, signature)
        return Lookup(TxStatus.EXPIRED)

    def failure_of(self, tx_id: str) -> ExitError | None:
        """Why a transaction that lookup reported FAILED failed (``SlippageExceeded`` for
        Jupiter 6001, ...), if this process saw it."""
        signature = self._by_client_id.get(tx_id, tx_id)
        return self._failures.get(signature)

    async def confirm(self, submission: Submission) -> Fill:
        """Wait for the outcome, rebroadcasting the same bytes while it may land. Raises
        the landed failure (``SlippageExceeded`` for 6001...) or ``TxExpired``. It may
        wait until the blockhash expires: the guard bounds it."""
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        while True:
            try:
                lookup = await self.lookup(submission)
            except ExitError as exc:
                _log.debug("status of %s unknown for now: %s", submission.tx_id, exc)
                lookup = Lookup(TxStatus.PENDING)
            if lookup.status is TxStatus.LANDED and lookup.fill is not None:
                return lookup.fill
            if lookup.status is TxStatus.FAILED:
                raise self.failure_of(submission.tx_id) or SwapFailed(
                    f"{submission.tx_id} landed as a failed transaction")
            if lookup.status is TxStatus.EXPIRED:
                raise TxExpired(f"{submission.tx_id}: block height passed lastValidBlockHeight"
                                f" {submission.venue_data.get('last_valid_block_height')}")
            if loop.time() - last_sent >= self.rebroadcast_interval:
                last_sent = loop.time()
                try:
                    await self.broadcast(self._with_signature(submission))
                except ExitError as exc:
                    _log.debug("rebroadcast of %s failed: %s", submission.tx_id, exc)
            await asyncio.sleep(self.confirm_interval)

    # -- helpers ------------------------------------------------------------------------

    def _resolve(self, submission: Submission) -> tuple[Signature | None, Mapping[str, str]]:
        """The signature and venue data of a submission, also of one known only by its
        client order id (found while this process lives)."""
        tx_id = self._by_client_id.get(submission.tx_id, submission.tx_id)
        prepared = self._prepared.get(tx_id)
        data = submission.venue_data or (prepared.submission.venue_data if prepared else {})
        try:
            return Signature.from_string(tx_id), data
        except ValueError:
            return None, data

    def _with_signature(self, submission: Submission) -> Submission:
        tx_id = self._by_client_id.get(submission.tx_id)
        prepared = self._prepared.get(tx_id) if tx_id else None
        return prepared.submission if prepared is not None else submission

    def _release(self, position_id: str, signature: Signature | str) -> None:
        live = self._live.get(position_id)
        if live is not None and self._by_client_id.get(live.tx_id, live.tx_id) == str(
            signature
        ):
            del self._live[position_id]

    def _no_transport_retries(self) -> bool:
        """A refused connection or a 429 proves nothing left only if solana-py did not
        retry the POST after an earlier, ambiguous try (``AsyncClient(...,
        max_transport_retries=0)``)."""
        provider = getattr(self.rpc, "_provider", None)
        return getattr(provider, "_max_transport_retries", 1) == 0

    async def _earlier_sell(self, position_id: str) -> Submission | None:
        """This venue's earlier transaction for the position if it may still land or has
        landed without anyone looking it up since; None when the position is free."""
        live = self._live.get(position_id)
        if live is None:
            return None
        try:
            lookup = await self._lookup(live, release=False)
        except (ExitError, RPCException) as exc:
            _log.warning("status of %s unknown (%s): treating it as may-land", live.tx_id, exc)
            return live
        if lookup.status in (TxStatus.PENDING, TxStatus.LANDED):
            return live
        self._live.pop(position_id, None)
        return None

    async def _refuse_second_sell(self, position_id: str) -> None:
        live = await self._earlier_sell(position_id)
        if live is not None:
            raise DoubleSellRefused(
                f"{live.tx_id} of position {position_id} may still land (until block height"
                f" {live.venue_data.get('last_valid_block_height')}) or landed unseen:"
                " not signing a second sell; look it up first")

    def _committed(self, status: TransactionStatus) -> bool:
        level = status.confirmation_status
        if level is None:  # rooted long ago: the RPC gives no level (confirmations null)
            return status.confirmations is None
        return int(level) >= _RANK[self.commitment]  # Processed 0, Confirmed 1, Finalized 2

    async def _landed_fill(self, submission: Submission, signature: Signature,
                           data: Mapping[str, str]) -> Fill:
        """What a landed swap really did. ExactIn sells exactly the quote's ``inAmount``
        (or, for a token input, what the wallet's token balance lost); what it received is
        read from the transaction's token balances (``getTransaction``): a route can pay
        anything between ``min_out`` and more than the quote, and the slippage the guard
        reports must be the one the wallet got. When the node has not indexed the
        transaction yet, or its meta does not show the output, the quote stands in (logged):
        the swap's output is then at least ``min_out``."""
        order = submission.order
        in_amount = _int_or_none(data.get("in_amount"))
        out_amount = _int_or_none(data.get("out_amount"))
        try:
            response = await self._call(self.rpc.get_transaction(
                signature, encoding="base64", commitment=self.commitment,
                max_supported_transaction_version=0))
            meta = response.value.transaction.meta if response.value is not None else None
        except ExitError as exc:
            _log.info("transaction %s not readable (%s): its fill is the quote's", signature,
                      exc)
            meta = None
        if meta is not None:
            sold = _balance_change(meta, self.wallet, self.input_mint)
            received = _balance_change(meta, self.wallet, self.output_mint)
            if sold is not None and sold < 0:
                in_amount = -sold
            if received is not None and received > 0:
                out_amount = received
            else:
                _log.info("transaction %s shows no %s received by %s: its fill is the"
                          " quote's", signature, self.output_mint, self.wallet)
        if in_amount is None or out_amount is None or in_amount <= 0 or out_amount <= 0:
            # Restored without amounts: the order's size at its reference price.
            return Fill(submission.tx_id, order.size, order.reference_price)
        size = min(in_amount / 10 ** self.input_decimals, order.size)
        return Fill(submission.tx_id, size, self._ui_price(in_amount, out_amount))

    async def _status(self, signature: Signature, *,
                      search: bool) -> tuple[TransactionStatus | None, int]:
        """The status and the slot the node answered at."""
        response = await self._call(self.rpc.get_signature_statuses(
            [signature], search_transaction_history=search))
        values = response.value
        if len(values) != 1:
            raise InvalidVenueResponse(f"getSignatureStatuses answered {len(values)} values")
        return values[0], response.context.slot

    async def _call(self, awaitable: Awaitable[_T], *, rpc_errors: bool = False) -> _T:
        """One RPC call, bounded by ``rpc_timeout``; failures mapped to the exitguard
        types (with ``rpc_errors``, an ``RPCException`` other than "node behind" passes
        through for the caller to read)."""
        try:
            async with asyncio.timeout(self.rpc_timeout):
                return await awaitable
        except TimeoutError:
            raise RpcTimeout(f"solana rpc did not answer in {self.rpc_timeout:g}s") from None
        except SolanaRpcException as exc:
            raise _transport_error(exc) from None
        except RPCException as exc:
            node = _node_behind(exc)
            if node is not None:
                raise node from None
            if rpc_errors:
                raise
            detail = exc.args[0] if exc.args else exc
            raise NetworkError(f"solana rpc error: {getattr(detail, 'message', detail)}"
                               ) from None

    async def _send_rejection(self, exc: RPCException, submission: Submission,
                              first: bool) -> ExitError | None:
        """Map a JSON-RPC error of sendTransaction; None for AlreadyProcessed (landed)."""
        detail = exc.args[0] if exc.args else None
        if isinstance(detail, SendTransactionPreflightFailureMessage):
            err = detail.data.err
            if err == TransactionErrorFieldless.AlreadyProcessed:
                return None
            if err == TransactionErrorFieldless.BlockhashNotFound:
                last_valid = _int_or_none(submission.venue_data.get("last_valid_block_height"))
                try:
                    height = (await self._call(self.rpc.get_block_height(
                        self.expiry_commitment))).value
                except ExitError:
                    height = None
                if first and last_valid is not None and height is not None and (
                        height > last_valid):
                    return TxExpired(f"blockhash not found and block height {height} passed"
                                     f" lastValidBlockHeight {last_valid}")
                error: ExitError = NodeBehind(
                    "blockhash not found while lastValidBlockHeight has not passed: the RPC"
                    " node is behind")
                return OrderNotSent(f"preflight: {error}") if first else error
            mapped = _landed_failure(err, submission.tx_id) if err is not None else None
            if not first:
                return NetworkError(f"rebroadcast rejected by preflight: {detail.message}")
            if isinstance(mapped, SlippageExceeded | InsufficientBalance | InvalidAccount):
                return type(mapped)(f"preflight: {mapped}")
            return OrderNotSent(f"preflight failed, not forwarded: {detail.message}")
        message = getattr(detail, "message", str(detail))
        return NetworkError(f"sendTransaction error: {message}")


# -- module helpers ----------------------------------------------------------------------


def _signed_bytes(submission: Submission) -> bytes:
    encoded = submission.venue_data.get("signed_tx")
    if not encoded:
        raise InvalidVenueResponse(f"{submission.tx_id} has no signed_tx in venue_data:"
                                   " nothing to (re)broadcast")
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise InvalidVenueResponse(f"{submission.tx_id}: signed_tx is not base64") from None


def _balance_change(meta: UiTransactionStatusMeta, owner: Pubkey, mint: Pubkey) -> int | None:
    """How much of ``mint`` the token accounts ``owner`` holds gained (negative: lost) in
    one transaction, in base units; None when the meta lists no such account (a native
    SOL leg, or a node that omits token balances)."""
    def total(balances: object) -> int | None:
        if not isinstance(balances, list):
            return None
        amounts = [int(b.ui_token_amount.amount) for b in balances
                   if b.owner == owner and b.mint == mint]
        return sum(amounts) if amounts else None

    before = total(meta.pre_token_balances)
    after = total(meta.post_token_balances)
    if before is None and after is None:
        return None
    return (after or 0) - (before or 0)


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


def _transport_error(exc: SolanaRpcException) -> ExitError:
    """solana-py wraps httpx2 errors in SolanaRpcException; the cause says what happened."""
    cause = exc.__cause__
    if isinstance(cause, httpx2.HTTPStatusError):
        code = cause.response.status_code
        if code == 429:
            return RateLimited("solana rpc rate limited (429)")
        return NetworkError(f"solana rpc answered HTTP {code}")
    if isinstance(cause, httpx2.TimeoutException):
        return RpcTimeout(f"solana rpc timed out ({type(cause).__name__})")
    if isinstance(cause, httpx2.ConnectError):
        return _ConnectRefused(f"solana rpc unreachable ({type(cause).__name__})")
    return NetworkError(f"solana rpc transport failed ({type(cause).__name__})")


class _ConnectRefused(NetworkError):
    """Connecting failed: not one byte of the request left (definite on a first send)."""


def _node_behind(exc: RPCException) -> NodeBehind | None:
    detail = exc.args[0] if exc.args else None
    name = type(detail).__name__
    if name in ("NodeUnhealthyMessage", "MinContextSlotNotReachedMessage"):
        return NodeBehind(f"rpc node behind: {getattr(detail, 'message', name)}")
    return None


def _landed_failure(err: object, signature: object) -> ExitError:
    """The exitguard error for a transaction error (landed, or at preflight)."""
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        if isinstance(inner, InstructionErrorCustom):
            code = inner.code
            if code in (JUPITER_SLIPPAGE_EXCEEDED, JUPITER_EXACT_OUT_NOT_MATCHED):
                return SlippageExceeded(f"{signature}: custom program error {code}"
                                        f" ({code:#x}), slippage tolerance exceeded")
            if code == JUPITER_INSUFFICIENT_FUNDS:
                return InsufficientBalance(f"{signature}: custom program error {code}"
                                           f" ({code:#x}), insufficient funds")
            if code == JUPITER_INVALID_TOKEN_ACCOUNT:
                return InvalidAccount(f"{signature}: custom program error {code}"
                                      f" ({code:#x}), invalid token account")
            return SwapFailed(f"{signature}: instruction {err.index} custom program error"
                              f" {code} ({code:#x})")
        return SwapFailed(f"{signature}: instruction {err.index} failed: {inner}")
    if isinstance(err, TransactionErrorInsufficientFundsForRent):
        return InsufficientBalance(f"{signature}: insufficient SOL for rent")
    if err in (TransactionErrorFieldless.InsufficientFundsForFee,
               TransactionErrorFieldless.AccountNotFound,
               TransactionErrorFieldless.InvalidAccountForFee):
        return InsufficientBalance(f"{signature}: insufficient SOL for fees ({err})")
    return SwapFailed(f"{signature}: transaction error {err}")


def _simulation_error(simulation: object) -> ExitError:
    """Jupiter's ``simulationError`` ({errorCode, error}): the swap would fail; nothing
    was signed or sent."""
    text = str(simulation)
    lowered = text.lower()
    if any(s in lowered for s in ("slippage", "0x1771", "6001", "6017")):
        return SlippageExceeded(f"jupiter simulation: {text[:200]}")
    if any(s in lowered for s in ("insufficient", "6024")):
        return InsufficientBalance(f"jupiter simulation: {text[:200]}")
    return OrderNotSent(f"jupiter simulation failed: {text[:200]}")


__all__ = [
    "DEFAULT_JUPITER_URL",
    "JUPITER_EXACT_OUT_NOT_MATCHED",
    "JUPITER_INSUFFICIENT_FUNDS",
    "JUPITER_INVALID_TOKEN_ACCOUNT",
    "JUPITER_SLIPPAGE_EXCEEDED",
    "DoubleSellRefused",
    "JupiterSwapVenue",
    "NodeBehind",
    "RateLimited",
    "SwapFailed",
    "UnsupportedOrder",
    "solana_ladder",
]
