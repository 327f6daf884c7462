"""The simulator: a market, a flaky venue, the seed's naive exit, scenarios and runners.

Everything runs in virtual time (``exitguard.vtime``) from seeded ``random.Random``
generators: the same seed replays the same runs.
"""

from .market import MarketPath, MarketSpec, Regime
from .naive import NaiveConfig, NaiveResult, naive_exit
from .run import (
    ABLATIONS,
    VARIANT_LABELS,
    VARIANTS,
    BlindVenue,
    DemoResult,
    MonteCarloResult,
    RunResult,
    Summary,
    build_guard,
    guarded_exit,
    percentile,
    run_demo,
    run_monte_carlo,
    run_variant,
)
from .scenarios import SCENARIOS, Scenario, get_scenario, random_scenario, scenario_names
from .venue import Conditions, Ledger, PositionTruth, SimTx, SimVenue, VenueSpec, Window

__all__ = [
    "ABLATIONS",
    "SCENARIOS",
    "VARIANTS",
    "VARIANT_LABELS",
    "BlindVenue",
    "Conditions",
    "DemoResult",
    "Ledger",
    "MarketPath",
    "MarketSpec",
    "MonteCarloResult",
    "NaiveConfig",
    "NaiveResult",
    "PositionTruth",
    "Regime",
    "RunResult",
    "Scenario",
    "SimTx",
    "SimVenue",
    "Summary",
    "VenueSpec",
    "Window",
    "build_guard",
    "get_scenario",
    "guarded_exit",
    "naive_exit",
    "percentile",
    "random_scenario",
    "run_demo",
    "run_monte_carlo",
    "run_variant",
    "scenario_names",
]
