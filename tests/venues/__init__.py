"""Tests of the venue adapters in exitguard.venues, each against a real client and a local chain."""
