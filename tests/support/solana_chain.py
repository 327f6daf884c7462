"""An offline Solana for the venue tests: solders' in-process validator (LiteSVM) behind a
loopback JSON-RPC server, and a loopback Jupiter quote/swap server.

What is real: every transaction is signed by the venue, sent by solana-py's
``AsyncClient`` over HTTP, and executed by LiteSVM, which rejects a blockhash that is not
its latest (``BlockhashNotFound``), a signature it has already processed
(``AlreadyProcessed``), and runs a real on-chain program (hand-assembled below) that fails
with Jupiter's custom error 6001. Responses are built with solders' own types, so the
client parses exactly what it would parse from a node.

What is modelled here (LiteSVM has no notion of it):

* **Block height and lastValidBlockHeight.** LiteSVM keeps one valid blockhash (its
  latest) and has no block height. ``Chain`` counts a block height, gives each blockhash a
  ``lastValidBlockHeight`` of issue height + ``validity`` (150 on mainnet; small here),
  and calls ``LiteSVM.expire_blockhash()`` when the height passes it. So only one
  blockhash is valid at a time, unlike mainnet's ~150; the guard never needs two (it never
  signs a second sell while the first may land).
* **Late landing.** LiteSVM executes a transaction at once; "in flight" is a queue held
  by the server (``send`` fault ``queue``) and executed later (``land_queued``): a
  transaction whose blockhash expired meanwhile is rejected by LiteSVM and never lands.
* **The status cache.** Without ``searchTransactionHistory`` a status is visible only
  while the landing is younger than ``status_cache`` blocks (a node's recent status cache).
* **The swap.** The stand-in "swap" transfers ``inAmount`` lamports from the wallet to a
  pool account (so the pool's balance is the ground truth of what was sold). The output
  leg is modelled: a landed swap credits the wallet's output-token balance (kept here,
  not in LiteSVM) with what it sold at ``Chain.execution_price`` (by default the price
  Jupiter quotes; set it lower for a fill worse than the quote), and ``getTransaction``
  reports it in ``preTokenBalances`` / ``postTokenBalances`` as a node does. A scripted
  slippage failure adds an instruction of a tiny on-chain program returning custom error
  6001 (``0x1771``), so the transaction lands failed and the transfer is rolled back, as a
  Jupiter swap would be.

Faults are scripted per JSON-RPC method (``Chain.fault(method, *actions)``, one action per
request, then ``ok``): ``429``, ``500``, ``hang`` (until released or torn down), ``null``
(statuses answered by a node far behind, which has not seen the landing: "confirmations
stop answering"), ``queue`` (send accepted, lands
later), ``drop`` (this copy is accepted and never lands; ``Chain.lose`` loses every copy of the
next signatures), ``land_then_hang`` (the transaction lands,
the answer never comes), ``behind`` (-32005 node unhealthy).
Servers bind 127.0.0.1 on a free port and are torn down when their context exits.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx2
from solana.rpc.async_api import AsyncClient
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.epoch_info import EpochInfo
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.rpc.responses import (
    GetBalanceResp,
    GetBlockHeightResp,
    GetEpochInfoResp,
    GetLatestBlockhashResp,
    GetSignatureStatusesResp,
    RpcBlockhash,
    RpcResponseContext,
    SendTransactionResp,
)
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata
from solders.transaction_status import (
    TransactionConfirmationStatus,
    TransactionErrorType,
    TransactionStatus,
)

INPUT_MINT = "So11111111111111111111111111111111111111112"  # wrapped SOL
OUTPUT_MINT = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"  # USDC
INPUT_DECIMALS = 9
OUTPUT_DECIMALS = 6


def failing_program(code: int) -> bytes:
    """A minimal SBF program (ELF, two instructions: ``mov64 r0, code; exit``) that fails
    every call with custom program error ``code``. Assembled here rather than shipped as
    a binary; LiteSVM loads and runs it like any deployed program."""

    def insn(op: int, imm: int = 0) -> bytes:
        return struct.pack("<BBhi", op, 0, 0, imm)

    text = insn(0xB7, code) + insn(0x95)  # mov64 r0, imm ; exit
    names = b"\x00.text\x00.shstrtab\x00"
    text_off = 0x40
    names_off = text_off + len(text)
    sh_off = (names_off + len(names) + 7) & ~7
    header = struct.pack(
        "<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9),
        3, 247, 1, text_off, 0, sh_off, 0, 64, 56, 0, 64, 3, 2,  # ET_DYN, EM_BPF
    )

    def section(name: int, kind: int, flags: int, addr: int, off: int, size: int,
                align: int = 1) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, kind, flags, addr, off, size, 0, 0, align, 0)

    body = header + text + names
    body += bytes(sh_off - len(body))
    return (body + section(0, 0, 0, 0, 0, 0) + section(1, 1, 6, text_off, text_off,
                                                       len(text), 8)
            + section(7, 3, 0, 0, names_off, len(names)))


@dataclass
class Sent:
    """A signature as the RPC first saw it: the ground truth of "when was it signed"."""

    signature: str
    blockhash: str
    last_valid: int
    first_seen_height: int
    lamports: int  # what it would sell


@dataclass
class Landed:
    signature: str
    height: int
    err: TransactionErrorType | None
    wire: bytes = b""  # the transaction as sent (getTransaction returns it)
    lamports: tuple[int, int] = (0, 0)  # the wallet's balance before and after
    output: tuple[int, int] = (0, 0)  # the wallet's output-token balance before and after


@dataclass
class Chain:
    """LiteSVM plus the block height, blockhash validity, in-flight queue and faults."""

    validity: int = 20
    status_cache: int = 60
    svm: LiteSVM = field(default_factory=LiteSVM)
    height: int = 1_000
    wallet: Keypair = field(default_factory=Keypair)
    pool: Pubkey = field(default_factory=lambda: Keypair().pubkey())
    slippage_program: Pubkey = field(default_factory=lambda: Keypair().pubkey())
    lock: threading.RLock = field(default_factory=threading.RLock)
    released: threading.Event = field(default_factory=threading.Event)
    sent: dict[str, Sent] = field(default_factory=dict)
    landed: dict[str, Landed] = field(default_factory=dict)
    queued: dict[str, VersionedTransaction] = field(default_factory=dict)
    faults: dict[str, list[str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    pool_start: int = 0
    deliver_at: int | None = None  # the block height at which the queue lands
    builds: list[int] = field(default_factory=list)  # heights of swap builds (then signing)
    hidden_landings: int = 0  # "null" status answers given for a transaction that landed
    statuses_hidden_until: int = 0  # below this height every status answer is "null"
    hide_landings: int = 0  # this many status answers that would show a landing say "null"
    lose: int = 0  # how many more new signatures to lose, every copy of them
    lost: set[str] = field(default_factory=set)
    rejected: set[str] = field(default_factory=set)  # refused at preflight, never forwarded
    accepted: set[str] = field(default_factory=set)  # forwarded at least once
    execution_price: float = 100.0  # output per input (UI units) a landed swap pays
    output_balance: int = 0  # the wallet's output-token balance (base units)

    def __post_init__(self) -> None:
        self.svm.airdrop(self.wallet.pubkey(), 100 * 10**9)
        self.svm.airdrop(self.pool, 10**9)  # rent-exempt, so small transfers land
        self.svm.add_program(self.slippage_program, failing_program(6001))
        self.pool_start = self.svm.get_balance(self.pool) or 0
        self.last_valid = self.height + self.validity

    # -- chain --------------------------------------------------------------------------

    def blockhash(self) -> tuple[Hash, int]:
        with self.lock:
            return self.svm.latest_blockhash(), self.last_valid

    def fresh_blockhash(self) -> tuple[Hash, int]:
        """For a new transaction: a node gives a blockhash with (nearly) its full validity.
        LiteSVM has only one valid blockhash, so a new one is issued only when nothing that
        could still land depends on the current one (never cutting a live transaction's
        life short); otherwise the current one, with what is left of its validity."""
        with self.lock:
            current = str(self.svm.latest_blockhash())
            used = any(sent.blockhash == current and sig not in self.landed
                       and sig not in self.lost and sig not in self.rejected
                       for sig, sent in self.sent.items())
            if not used and self.last_valid - self.height < self.validity:
                self.svm.expire_blockhash()
                self.last_valid = self.height + self.validity
            return self.svm.latest_blockhash(), self.last_valid

    def advance(self, blocks: int = 1) -> None:
        """Produce ``blocks`` blocks: the height grows, and past lastValidBlockHeight the
        blockhash expires in LiteSVM (a queued transaction using it can never land)."""
        with self.lock:
            self.height += blocks
            slot = self.svm.get_clock().slot
            self.svm.warp_to_slot(slot + blocks)
            if self.height > self.last_valid:
                self.svm.expire_blockhash()
                self.last_valid = self.height + self.validity

    def execute(self, tx: VersionedTransaction) -> Landed | None:
        """Run ``tx`` in LiteSVM; None if it cannot land (expired blockhash, duplicate)."""
        with self.lock:
            signature = str(tx.signatures[0])
            wallet_before = self.svm.get_balance(self.wallet.pubkey()) or 0
            pool_before = self.svm.get_balance(self.pool) or 0
            output_before = self.output_balance
            result = self.svm.send_transaction(tx)
            if isinstance(result, FailedTransactionMetadata):
                name = str(result.err())
                if "BlockhashNotFound" in name or "AlreadyProcessed" in name:
                    return None
                err: TransactionErrorType | None = result.err()
            else:
                err = None
                sold = (self.svm.get_balance(self.pool) or 0) - pool_before
                self.output_balance += int(sold / 10**INPUT_DECIMALS * self.execution_price
                                           * 10**OUTPUT_DECIMALS)
            landed = Landed(signature, self.height, err, bytes(tx),
                            (wallet_before, self.svm.get_balance(self.wallet.pubkey()) or 0),
                            (output_before, self.output_balance))
            self.landed[signature] = landed
            return landed

    def land_queued(self) -> list[str]:
        """Deliver the in-flight transactions (late); returns those that landed."""
        with self.lock:
            queued, self.queued = self.queued, {}
            return [sig for sig, tx in queued.items() if self.execute(tx) is not None]

    def deliver_after(self, blocks: int) -> None:
        """Land whatever is in flight once ``blocks`` more blocks are produced
        (``produce``)."""
        with self.lock:
            self.deliver_at = self.height + blocks

    def produce(self, blocks: int = 1) -> None:
        """``advance``, then a scheduled late delivery if its height came."""
        with self.lock:
            self.advance(blocks)
            if self.deliver_at is not None and self.height >= self.deliver_at:
                self.deliver_at = None
                self.land_queued()

    def fault(self, method: str, *actions: str) -> None:
        with self.lock:
            self.faults.setdefault(method, []).extend(actions)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _next_fault(self, method: str) -> str:
        with self.lock:
            self.requests.append(method)
            queue = self.faults.get(method)
            return queue.pop(0) if queue else "ok"

    # -- ground truth -------------------------------------------------------------------

    @property
    def sold_lamports(self) -> int:
        with self.lock:
            return (self.svm.get_balance(self.pool) or 0) - self.pool_start

    def succeeded(self) -> list[str]:
        with self.lock:
            return [s for s, landed in self.landed.items() if landed.err is None]

    def assert_no_early_resign(self) -> None:
        """No new sell was built (asked of Jupiter, then signed) or first sent while an
        earlier one could still land: by then every earlier signature had landed or its
        blockhash had expired."""
        with self.lock:
            sends = sorted(self.sent.values(), key=lambda s: s.first_seen_height)
            for i, later in enumerate(sends):
                for earlier in sends[:i]:
                    self._resolved_by(earlier, later.first_seen_height, later.signature)
            for height in self.builds:
                for earlier in sends:
                    if earlier.first_seen_height < height:
                        self._resolved_by(earlier, height, "a new swap")

    def _resolved_by(self, earlier: Sent, height: int, what: str) -> None:
        if earlier.signature in self.rejected:
            return  # refused at preflight: it never left the RPC node
        landed = self.landed.get(earlier.signature)
        resolved = landed is not None and landed.height <= height
        assert resolved or height > earlier.last_valid, (
            f"{what[:8]} at height {height} while {earlier.signature[:8]} could land until"
            f" {earlier.last_valid}")


# -- the JSON-RPC server ---------------------------------------------------------------------


def _error(request_id: object, code: int, message: str, data: Any = None) -> str:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return json.dumps({"jsonrpc": "2.0", "error": error, "id": request_id})


def _err_json(err: TransactionErrorType) -> Any:
    """A transaction error as a node writes it (solders' own serialisation)."""
    return json.loads(TransactionStatus(0, None, None, err, None).to_json())["err"]


def _preflight_failure(request_id: object, err: TransactionErrorType, message: str,
                       logs: list[str]) -> str:
    # -32002 must carry `data` (an RpcSimulateTransactionResult) or solders' parser fails.
    return _error(request_id, -32002, f"Transaction simulation failed: {message}", {
        "err": _err_json(err), "logs": logs, "accounts": None, "unitsConsumed": 0,
        "returnData": None,
    })


class _Rpc:
    def __init__(self, chain: Chain) -> None:
        self.chain = chain

    def handle(self, body: dict[str, Any]) -> tuple[int, str]:
        chain = self.chain
        method = body.get("method", "")
        request_id = body.get("id", 0)
        params = body.get("params") or []
        action = chain._next_fault(method)
        if action == "429":
            return 429, "Too Many Requests"
        if action == "500":
            return 500, "Internal Server Error"
        if action == "land_then_hang" and method == "sendTransaction":
            with chain.lock:  # the node got it to the leader, then the answer is lost
                self._answer(method, request_id, [params[0], {"skipPreflight": True}], "ok")
            action = "hang"
        if action == "hang":
            chain.released.wait(30)
            return 503, "released"
        if action == "behind":
            return 200, _error(request_id, -32005, "Node is behind by 42 slots",
                               {"numSlotsBehind": 42})
        with chain.lock:
            return self._answer(method, request_id, params, action)

    def _answer(self, method: str, request_id: object, params: list[Any],
                action: str) -> tuple[int, str]:
        chain = self.chain
        ctx = RpcResponseContext(chain.svm.get_clock().slot)
        if method == "getLatestBlockhash":
            blockhash, last_valid = chain.blockhash()
            return 200, GetLatestBlockhashResp(RpcBlockhash(blockhash, last_valid), ctx).to_json()
        if method == "getEpochInfo":
            slot = chain.svm.get_clock().slot
            return 200, GetEpochInfoResp(EpochInfo(
                epoch=0, slot_index=slot % 432_000, slots_in_epoch=432_000,
                absolute_slot=slot, block_height=chain.height, transaction_count=None,
            )).to_json()
        if method == "getBlockHeight":
            return 200, GetBlockHeightResp(chain.height).to_json()
        if method == "getBalance":
            balance = chain.svm.get_balance(Pubkey.from_string(params[0])) or 0
            return 200, GetBalanceResp(balance, ctx).to_json()
        if method == "getSignatureStatuses":
            if chain.height < chain.statuses_hidden_until:
                action = "null"
            elif chain.hide_landings > 0 and any(sig in chain.landed for sig in params[0]):
                chain.hide_landings -= 1
                action = "null"
            if action == "null":  # a node behind: it has not seen the landing yet
                ctx = RpcResponseContext(chain.svm.get_clock().slot - chain.validity * 5)
            return 200, self._statuses(params, ctx, action)
        if method == "sendTransaction":
            return 200, self._send(request_id, params, action)
        if method == "getTransaction":
            return 200, self._transaction(request_id, params[0], action)
        return 200, _error(request_id, -32601, f"Method not found: {method}")

    def _statuses(self, params: list[Any], ctx: RpcResponseContext, action: str) -> str:
        chain = self.chain
        config = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        search = bool(config.get("searchTransactionHistory"))
        values: list[TransactionStatus | None] = []
        with chain.lock:
            for sig in params[0]:
                landed = chain.landed.get(sig)
                if landed is not None and action == "null":
                    chain.hidden_landings += 1
                visible = landed is not None and action != "null" and (
                    search or chain.height - landed.height <= chain.status_cache)
                if not visible or landed is None:
                    values.append(None)
                    continue
                depth = chain.height - landed.height
                level = (TransactionConfirmationStatus.Finalized if depth >= 2
                         else TransactionConfirmationStatus.Confirmed)
                values.append(TransactionStatus(landed.height, None if depth >= 2 else depth,
                                                None, landed.err, level))
        return GetSignatureStatusesResp(values, ctx).to_json()

    def _transaction(self, request_id: object, signature: str, action: str) -> str:
        """``getTransaction`` (base64) as a node answers it: null until the transaction
        landed (or when the fault is ``null``: a node that has not indexed it yet), else
        the transaction with its meta, whose token balances carry the swap's output."""
        chain = self.chain
        landed = chain.landed.get(signature)
        if landed is None or action == "null":
            return json.dumps({"jsonrpc": "2.0", "result": None, "id": request_id})
        wallet = str(chain.wallet.pubkey())

        def balance(amount: int) -> dict[str, Any]:
            ui = amount / 10**OUTPUT_DECIMALS
            return {"accountIndex": 3, "mint": OUTPUT_MINT, "owner": wallet,
                    "programId": "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
                    "uiTokenAmount": {"amount": str(amount), "decimals": OUTPUT_DECIMALS,
                                      "uiAmount": ui, "uiAmountString": str(ui)}}

        status = {"Ok": None} if landed.err is None else {"Err": _err_json(landed.err)}
        meta: dict[str, Any] = {
            "err": None if landed.err is None else _err_json(landed.err), "status": status,
            "fee": 5_000, "preBalances": [landed.lamports[0]],
            "postBalances": [landed.lamports[1]], "innerInstructions": [], "logMessages": [],
            "preTokenBalances": [balance(landed.output[0])],
            "postTokenBalances": [balance(landed.output[1])], "rewards": [],
            "loadedAddresses": {"writable": [], "readonly": []},
        }
        result = {"slot": landed.height, "blockTime": None, "version": 0, "meta": meta,
                  "transaction": [base64.b64encode(landed.wire).decode(), "base64"]}
        return json.dumps({"jsonrpc": "2.0", "result": result, "id": request_id})

    def _send(self, request_id: object, params: list[Any], action: str) -> str:
        chain = self.chain
        config = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        tx = VersionedTransaction.from_bytes(base64.b64decode(params[0]))
        signature = str(tx.signatures[0])
        with chain.lock:
            if signature not in chain.sent:
                blockhash = str(tx.message.recent_blockhash)
                current, last_valid = chain.blockhash()
                lamports = 0
                for ix in tx.message.instructions:
                    program = tx.message.account_keys[ix.program_id_index]
                    if str(program) == "11111111111111111111111111111111":
                        lamports += struct.unpack_from("<Q", bytes(ix.data), 4)[0]
                chain.sent[signature] = Sent(
                    signature, blockhash,
                    last_valid if blockhash == str(current) else chain.height - 1,
                    chain.height, lamports)
            if not config.get("skipPreflight"):
                simulated = chain.svm.simulate_transaction(tx)
                if isinstance(simulated, FailedTransactionMetadata):
                    if signature not in chain.accepted:
                        chain.rejected.add(signature)
                    text = {"BlockhashNotFound": "Blockhash not found",
                            "AlreadyProcessed": "This transaction has already been processed",
                            }.get(str(simulated.err()).split(".")[-1], str(simulated.err()))
                    return _preflight_failure(request_id, simulated.err(), text,
                                              list(simulated.meta().logs()))
            chain.accepted.add(signature)
            chain.rejected.discard(signature)
            if signature not in chain.landed and signature not in chain.lost and chain.lose > 0:
                chain.lose -= 1
                chain.lost.add(signature)
            if signature in chain.lost:
                pass  # never reaches a leader, however often it is sent
            elif action == "queue":
                chain.queued[signature] = tx
            elif action != "drop":
                chain.execute(tx)
        return SendTransactionResp(Signature.from_string(signature)).to_json()


# -- the Jupiter server -------------------------------------------------------------------


@dataclass
class Market:
    """The price Jupiter quotes (output per input, UI units) and scripted swap faults."""

    price: float = 100.0
    fail_next_swaps: int = 0  # swaps built to fail on chain with 6001
    fail_http: list[int] = field(default_factory=list)  # statuses for the next requests
    quotes: list[dict[str, str]] = field(default_factory=list)
    swaps: list[dict[str, Any]] = field(default_factory=list)


class _Jupiter:
    def __init__(self, chain: Chain, market: Market) -> None:
        self.chain = chain
        self.market = market

    def quote(self, query: dict[str, str]) -> dict[str, Any]:
        amount = int(query["amount"])
        slippage = int(query.get("slippageBps", "50"))
        out = int(amount / 10**INPUT_DECIMALS * self.market.price * 10**OUTPUT_DECIMALS)
        self.market.quotes.append(query)
        return {
            "inputMint": query["inputMint"], "inAmount": str(amount),
            "outputMint": query["outputMint"], "outAmount": str(out),
            "otherAmountThreshold": str(out * (10_000 - slippage) // 10_000),
            "swapMode": "ExactIn", "slippageBps": slippage, "platformFee": None,
            "priceImpactPct": "0", "routePlan": [], "contextSlot": 1, "timeTaken": 0.001,
        }

    def swap(self, request: dict[str, Any]) -> dict[str, Any]:
        chain, market = self.chain, self.market
        market.swaps.append(request)
        user = Pubkey.from_string(request["userPublicKey"])
        amount = int(request["quoteResponse"]["inAmount"])
        price = int(request.get("computeUnitPriceMicroLamports") or 0)
        fee_lamports = int(request.get("prioritizationFeeLamports") or 0)
        limit = 200_000
        if fee_lamports and not price:
            price = fee_lamports * 1_000_000 // limit
        instructions = [set_compute_unit_limit(limit)]
        if price:
            instructions.append(set_compute_unit_price(price))
        instructions.append(transfer(TransferParams(from_pubkey=user, to_pubkey=chain.pool,
                                                    lamports=amount)))
        if market.fail_next_swaps > 0:
            market.fail_next_swaps -= 1
            instructions.append(Instruction(chain.slippage_program, b"", []))
        blockhash, last_valid = chain.fresh_blockhash()
        chain.builds.append(chain.height)
        message = MessageV0.try_compile(user, instructions, [], blockhash)
        unsigned = VersionedTransaction.populate(message, [Signature.default()])
        return {
            "swapTransaction": base64.b64encode(bytes(unsigned)).decode(),
            "lastValidBlockHeight": last_valid,
            "prioritizationFeeLamports": price * limit // 1_000_000,
            "computeUnitLimit": limit,
            "prioritizationType": {"computeBudget": {"microLamports": price,
                                                     "estimatedMicroLamports": price}},
            "dynamicSlippageReport": None, "simulationError": None,
        }


def _handler(chain: Chain, rpc: _Rpc, jupiter: _Jupiter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _jupiter_fault(self) -> bool:
            market = jupiter.market
            if market.fail_http:
                status = market.fail_http.pop(0)
                if status == 0:  # hang
                    chain.released.wait(30)
                    status = 503
                self._reply(status, json.dumps({"error": f"scripted {status}"}))
                return True
            return False

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path != "/quote":
                self._reply(404, "{}")
                return
            if self._jupiter_fault():
                return
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            self._reply(200, json.dumps(jupiter.quote(query)))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/swap":
                if not self._jupiter_fault():
                    self._reply(200, json.dumps(jupiter.swap(body)))
                return
            status, text = rpc.handle(body)
            self._reply(status, text)

    return Handler


@dataclass
class Cluster:
    chain: Chain
    market: Market
    rpc_url: str
    jupiter_url: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A hung answer written after the client gave up: expected, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def loopback_client(url: str) -> AsyncClient:
    """solana-py's AsyncClient for the loopback server, with no transport retries (so a
    refused send proves "not sent"). Its HTTP session is swapped for one without a TLS
    context: the servers speak plain HTTP, and building the default context costs about
    0.2 s per client on a busy machine."""
    client = AsyncClient(url, timeout=5, max_transport_retries=0)
    client._provider.session = httpx2.AsyncClient(timeout=5, verify=False)
    return client


@contextlib.contextmanager
def cluster(validity: int = 20, status_cache: int = 60) -> Iterator[Cluster]:
    """The validator's RPC and Jupiter on one loopback server (paths ``/`` and
    ``/quote`` ``/swap``), torn down on exit even when the test failed."""
    chain = Chain(validity=validity, status_cache=status_cache)
    market = Market()
    server = _Server(("127.0.0.1", 0), _handler(chain, _Rpc(chain), _Jupiter(chain, market)))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="solana-rpc",
                              daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    base = f"http://{host!s}:{port}"
    try:
        yield Cluster(chain, market, base, base)
    finally:
        chain.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
