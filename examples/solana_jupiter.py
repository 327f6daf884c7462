"""A stop-loss exit of SOL into USDC through Jupiter, guarded, and safe across a restart.

Needs ``pip install 'exitguard[solana]'``. Without ``EXITGUARD_SOLANA_KEYPAIR`` it sends
nothing: it prints what each ladder step would ask Jupiter for, and stops.

Real run (this SELLS real tokens; try a tiny size first)::

    EXITGUARD_SOLANA_KEYPAIR=~/.config/solana/id.json \\
    EXITGUARD_SOLANA_RPC=https://your-rpc.example \\
    python examples/solana_jupiter.py --size 0.05 --entry 180

Other settings: ``EXITGUARD_JUPITER_URL`` (default: Jupiter's public Swap API),
``EXITGUARD_PENDING`` (the pending-transaction file, default ``./exitguard-pending.json``).
Kill it mid-exit and run it again: the restarted guard reconciles the transaction the killed
process signed (``resume_pending``) before anything else is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from exitguard import ExitGuard, Position, RetryPolicy
from exitguard.pending import FilePendingStore
from exitguard.venues.solana import DEFAULT_JUPITER_URL, JupiterSwapVenue, solana_ladder

SOL = "So11111111111111111111111111111111111111112"  # wrapped SOL, 9 decimals
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"  # 6 decimals


def describe_ladder() -> None:
    ladder = solana_ladder()
    print("dry run (set EXITGUARD_SOLANA_KEYPAIR to trade); each step asks Jupiter for:")
    for index, step in enumerate(ladder.steps):
        print(f"  step {index + 1}: {step.mode} slippageBps={step.max_slippage_bps}"
              f" computeUnitPriceMicroLamports={step.priority_fee}")
    print(f"  after each expiry: fee x{ladder.fee_multiplier:g}, capped at"
          f" {ladder.max_priority_fee} uL/CU; a new transaction only once the previous one's"
          " blockhash has expired")


async def main(secret: bytes, size: float, entry: float) -> None:
    from solana.rpc.async_api import AsyncClient
    from solders.keypair import Keypair

    keypair = Keypair.from_bytes(secret)
    rpc = AsyncClient(os.environ.get("EXITGUARD_SOLANA_RPC",
                                     "https://api.mainnet-beta.solana.com"),
                      max_transport_retries=0)  # a refused send then proves "not sent"
    venue = JupiterSwapVenue(
        rpc, keypair, input_mint=SOL, output_mint=USDC, input_decimals=9, output_decimals=6,
        jupiter_url=os.environ.get("EXITGUARD_JUPITER_URL", DEFAULT_JUPITER_URL),
        confirm_interval=float(os.environ.get("EXITGUARD_CONFIRM_INTERVAL", "0.5")),
    )
    guard = ExitGuard(
        venue,
        policy=RetryPolicy(max_attempts=4, total_timeout=90.0, attempt_timeout=20.0),
        deadline=120.0,  # > one blockhash lifetime (~60-90 s): an expiry can be waited out
        ladder=solana_ladder(),
        pending_store=FilePendingStore(os.environ.get("EXITGUARD_PENDING",
                                                      "exitguard-pending.json")),
        name="sol-stop",
    )
    try:
        resumed = await guard.resume_pending()  # what a killed run left: reconciled first
        if resumed:
            print(f"reconciling {resumed} submission(s) left by a previous run")
            await guard.drain(120.0)
        position = Position("sol-stop-1", "SOL", size, entry)
        signal = await venue.price(position)
        outcome = await guard.exit(position, signal_price=signal, reason="stop_loss")
        print(f"status={outcome.status} sold={outcome.filled_size:g} SOL"
              f" attempts={outcome.attempts} elapsed={outcome.elapsed_s:.1f}s")
        for fill in outcome.fills:
            print(f"  {fill.tx_id}: {fill.size:g} @ {fill.price:.4f}")
        if outcome.pending_tx_ids:
            print(f"  may still land: {', '.join(outcome.pending_tx_ids)}")
            await guard.drain(120.0)
    finally:
        await guard.aclose()
        await venue.aclose()
        await rpc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=0.05, help="SOL to sell")
    parser.add_argument("--entry", type=float, default=180.0, help="entry price in USDC")
    args = parser.parse_args()
    if "EXITGUARD_SOLANA_KEYPAIR" not in os.environ:
        describe_ladder()
    else:
        keyfile = Path(os.environ["EXITGUARD_SOLANA_KEYPAIR"]).expanduser()
        secret = bytes(json.loads(keyfile.read_text()))  # the Solana CLI's id.json: 64 numbers
        asyncio.run(main(secret, args.size, args.entry))
