"""Venue adapters for real chains and exchanges, each behind its own optional extra.

Nothing is imported here: ``import exitguard.venues.solana`` needs ``exitguard[solana]``
(solana-py and solders), and the core never imports this package.
"""
