"""Venue adapters for real chains and exchanges, each behind its own optional extra.

Nothing here is imported by the core or by ``import exitguard``: import the adapter you
use, and install its extra:

- ``ccxt``: any ``ccxt.async_support`` exchange (Binance, Bybit, OKX, Kraken, ...),
  ``pip install 'exitguard[ccxt]'``.
- ``ccxt_testing``: a loopback exchange speaking Binance spot's REST dialect, with
  scripted faults, to run a real ccxt client offline (tests, examples, your own bot's tests).
- ``solana``: Jupiter swaps on Solana (``JupiterSwapVenue``), ``pip install 'exitguard[solana]'``
  (solana-py and solders).
"""
