"""Tables and plots of simulator results (rich for tables, matplotlib optional for plots)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from .run import VARIANT_LABELS, DemoResult, MonteCarloResult, RunResult

__all__ = [
    "PlotError",
    "check_plot_path",
    "demo_dict",
    "demo_notes",
    "demo_table",
    "plot_monte_carlo",
    "simulate_notes",
    "simulate_table",
]


def _loss(value: float) -> str:
    return f"{value:.2f} %"


def _time(value: float | None, horizon: float) -> str:
    if value is None or not math.isfinite(value):
        return f"> {horizon:g} s"
    return f"{value:.1f} s"


def demo_table(result: DemoResult) -> Table:
    """The side-by-side table of ``exitguard demo``."""
    scenario = result.scenario
    table = Table(
        title=f"exitguard demo: scenario '{scenario.name}', seed {result.seed}",
        title_justify="left",
    )
    table.add_column("")
    table.add_column(VARIANT_LABELS["naive"], justify="right")
    table.add_column(VARIANT_LABELS["guarded"], justify="right")
    naive, guarded = result.naive, result.guarded

    def row(label: str, fmt: Any) -> None:
        table.add_row(label, fmt(naive), fmt(guarded))

    row("realized loss", lambda r: _loss(r.loss_pct))
    row("time to exit", lambda r: _time(r.exit_time_s, scenario.horizon))
    row("attempts", lambda r: str(r.attempts))
    row("transactions sent", lambda r: str(r.sent))
    row("double-sells", lambda r: _double(r))
    row("average exit price", lambda r: "-" if r.avg_price is None else f"{r.avg_price:.2f}")
    row("loss vs the stop", lambda r: f"{r.loss_pct / scenario.stop_loss_pct:.2f}x")
    return table


def demo_notes(result: DemoResult) -> str:
    """The lines printed under the demo's table."""
    scenario = result.scenario
    return (
        f"Entry {scenario.entry_price:.2f}, stop-loss at -{scenario.stop_loss_pct:g} % (exit "
        f"signalled at {scenario.signal_price:.2f}), {scenario.size:g} {scenario.symbol}. Both "
        "ran on the same price path and faults;\n"
        f"{scenario.horizon:g} s of market replayed in virtual time in {result.wall_s:.2f} s. "
        "Time to exit: until the position was really sold\n"
        "(the venue's ground truth); double-sells: landings that sold more than the position."
    )


def _double(result: RunResult) -> str:
    if not result.double_sells:
        return "0"
    return f"{result.double_sells} ({result.oversold:g} sold too many)"


def demo_dict(result: DemoResult) -> dict[str, object]:
    """``exitguard demo --json``."""
    scenario = result.scenario

    def one(r: RunResult) -> dict[str, object]:
        return {
            "realized_loss_pct": round(r.loss_pct, 6),
            "time_to_exit_s": None if r.exit_time_s is None else round(r.exit_time_s, 6),
            "known_closed_at_s": None if r.known_at_s is None else round(r.known_at_s, 6),
            "attempts": r.attempts,
            "transactions_sent": r.sent,
            "double_sells": r.double_sells,
            "oversold_size": round(r.oversold, 9),
            "average_exit_price": None if r.avg_price is None else round(r.avg_price, 6),
            "exits": r.exits,
            "outcomes": list(r.statuses),
        }

    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": result.seed,
        "entry_price": scenario.entry_price,
        "stop_loss_pct": scenario.stop_loss_pct,
        "signal_price": round(scenario.signal_price, 6),
        "size": scenario.size,
        "horizon_s": scenario.horizon,
        "naive": one(result.naive),
        "guarded": one(result.guarded),
    }


def simulate_table(result: MonteCarloResult) -> Table:
    """The percentile table of ``exitguard simulate``."""
    table = Table(
        title=f"exitguard simulate: {result.runs} runs, seed {result.seed}",
        title_justify="left",
    )
    table.add_column("executor")
    for name in ("loss p50", "loss p95", "loss p99", "exit p50", "exit p95", "exit p99",
                 "failed", "double-sold"):
        table.add_column(name, justify="right")
    for summary in result.summaries():
        style = "bold" if summary.variant in ("naive", "guarded") else ""
        table.add_row(
            Text(VARIANT_LABELS[summary.variant], style=style),
            _loss(summary.loss_p50), _loss(summary.loss_p95), _loss(summary.loss_p99),
            _time(summary.exit_p50, result.horizon), _time(summary.exit_p95, result.horizon),
            _time(summary.exit_p99, result.horizon),
            f"{summary.failure_rate:.1%}", f"{summary.double_sell_rate:.1%}",
        )
    return table


def simulate_notes(result: MonteCarloResult) -> str:
    """The lines printed under the simulate table."""
    horizon = f"{result.horizon:g} s"
    return (
        "loss: realized loss in % of the entry value (an unsold remainder is marked at the "
        f"price at {horizon});\n"
        f"exit: seconds until the position was really sold ('>' = not within {horizon}); "
        f"failed: not sold within {horizon};\n"
        "double-sold: runs that sold more than the position held. Same seed, same table."
    )


class PlotError(Exception):
    """The plot cannot be drawn (matplotlib missing, a bad path or format)."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(
            "--plot needs matplotlib, which is not installed: pip install 'exitguard[plot]'"
        ) from None
    return plt


def check_plot_path(path: Path) -> None:
    """Fail before a long run if ``path`` cannot be written or has an unknown format."""
    plt = _pyplot()
    if path.is_dir():
        raise PlotError(f"cannot write plot {str(path)!r}: it is a directory")
    suffix = path.suffix.lower().lstrip(".")
    figure = plt.figure()
    try:
        supported = figure.canvas.get_supported_filetypes()
    finally:
        plt.close(figure)
    if suffix not in supported:
        raise PlotError(
            f"cannot write plot {str(path)!r}: unknown image format {path.suffix or '(none)'!r}"
            f" (use one of: {', '.join('.' + s for s in sorted(supported))})"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PlotError(
            f"cannot write plot {str(path)!r}: directory {str(parent)!r} does not exist"
        )
    writable = os.access(path, os.W_OK) if path.exists() else os.access(parent, os.W_OK)
    if not writable:
        raise PlotError(f"cannot write plot {str(path)!r}: permission denied")


def _ecdf(values: list[float]) -> tuple[list[float], list[float]]:
    ordered = sorted(values)
    n = len(ordered)
    return ordered, [(index + 1) / n for index in range(n)]


def plot_monte_carlo(result: MonteCarloResult, path: Path) -> None:
    """Draw the loss and exit-time distributions (empirical CDFs) of every variant."""
    plt = _pyplot()
    figure, (loss_ax, time_ax) = plt.subplots(1, 2, figsize=(13, 5.5))
    try:
        for variant in result.variants:
            runs = result.results[variant]
            label = VARIANT_LABELS[variant]
            width = 2.2 if variant in ("naive", "guarded") else 1.2
            xs, ys = _ecdf([r.loss_pct for r in runs])
            loss_ax.step(xs, ys, where="post", label=label, linewidth=width)
            sold = [r.exit_time_s for r in runs if r.exit_time_s is not None]
            if sold:
                xs, ys = _ecdf(sold)
                share = len(sold) / len(runs)
                time_ax.step(xs, [y * share for y in ys], where="post", label=label,
                             linewidth=width)
        loss_ax.set_xlabel("realized loss (% of entry value)")
        loss_ax.set_ylabel("share of runs at or below")
        loss_ax.set_title("Realized loss")
        time_ax.set_xscale("log")
        time_ax.set_xlabel("time to exit (s, log scale)")
        time_ax.set_ylabel("share of runs sold by then")
        time_ax.set_title(f"Time to exit (within {result.horizon:g} s)")
        for ax in (loss_ax, time_ax):
            ax.grid(True, alpha=0.3)
            ax.set_ylim(0, 1.01)
        loss_ax.legend(loc="lower right", fontsize="small")
        figure.suptitle(f"exitguard simulate: {result.runs} runs, seed {result.seed}")
        figure.tight_layout()
        try:
            figure.savefig(path)
        except (OSError, ValueError) as exc:
            raise PlotError(f"cannot write plot {str(path)!r}: {exc}") from None
    finally:
        plt.close(figure)
