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
    "GUARD_DEADLINE_S",
    "PlotError",
    "check_plot_path",
    "demo_dict",
    "demo_heading",
    "demo_notes",
    "demo_table",
    "monte_carlo_figure",
    "plot_monte_carlo",
    "simulate_heading",
    "simulate_notes",
    "simulate_table",
]

#: The exit deadline of the simulated guard (``exitguard.sim.run.build_guard``; a test keeps
#: them equal). An exit time above it is a position that took several exits.
GUARD_DEADLINE_S = 30.0
#: Marks an exit time above the guard's deadline; :func:`simulate_notes` says why.
SEVERAL_EXITS = "†"
#: Variants whose exits are bounded by :data:`GUARD_DEADLINE_S` (not the naive retry, not the
#: guard without a deadline).
_BOUNDED = frozenset({"guarded", "no-escalation", "no-reconciliation", "no-breaker"})


def _loss(value: float) -> str:
    return f"{value:.2f} %"


def _time(value: float | None, horizon: float) -> str:
    if value is None or not math.isfinite(value):
        return f"> {horizon:g} s"
    return f"{value:.1f} s"


def demo_heading(result: DemoResult) -> str:
    """The line above the demo's table (printed on its own: a table title is padded)."""
    return f"exitguard demo: scenario '{result.scenario.name}', seed {result.seed}"


def demo_table(result: DemoResult) -> Table:
    """The side-by-side table of ``exitguard demo``."""
    scenario = result.scenario
    table = Table()
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


def simulate_heading(result: MonteCarloResult) -> str:
    """The line above the simulate table (printed on its own: a table title is padded)."""
    return f"exitguard simulate: {result.runs} runs, seed {result.seed}"


def _exit_time(variant: str, value: float, horizon: float) -> str:
    """An exit-time percentile; marked when a bounded guard's position took several exits."""
    text = _time(value, horizon)
    if variant in _BOUNDED and not value <= GUARD_DEADLINE_S:
        return f"{text} {SEVERAL_EXITS}"
    return text


def _marked(result: MonteCarloResult) -> bool:
    return any(
        variant in _BOUNDED and not value <= GUARD_DEADLINE_S
        for summary in result.summaries()
        for variant, value in ((summary.variant, summary.exit_p50),
                               (summary.variant, summary.exit_p95),
                               (summary.variant, summary.exit_p99))
    )


def simulate_table(result: MonteCarloResult) -> Table:
    """The percentile table of ``exitguard simulate``."""
    table = Table()
    table.add_column("executor")
    for name in ("loss p50", "loss p95", "loss p99", "exit p50", "exit p95", "exit p99",
                 "failed", "double-sold"):
        table.add_column(name, justify="right")
    for summary in result.summaries():
        style = "bold" if summary.variant in ("naive", "guarded") else ""
        table.add_row(
            Text(VARIANT_LABELS[summary.variant], style=style),
            _loss(summary.loss_p50), _loss(summary.loss_p95), _loss(summary.loss_p99),
            *(_exit_time(summary.variant, value, result.horizon)
              for value in (summary.exit_p50, summary.exit_p95, summary.exit_p99)),
            f"{summary.failure_rate:.1%}", f"{summary.double_sell_rate:.1%}",
        )
    return table


def simulate_notes(result: MonteCarloResult) -> str:
    """The lines printed under the simulate table."""
    horizon = f"{result.horizon:g} s"
    notes = (
        "loss: realized loss in % of the entry value (an unsold remainder is marked at the "
        f"price at {horizon});\n"
        f"exit: seconds until the position was really sold ('>' = not within {horizon}); "
        f"failed: not sold within {horizon};\n"
        "double-sold: runs that sold more than the position held. Same seed, same table."
    )
    if _marked(result):
        notes += (
            f"\n{SEVERAL_EXITS} above the guard's {GUARD_DEADLINE_S:g} s exit deadline: each exit"
            " ends within its deadline, but after a failed exit\n  the simulated bot signals"
            " again 1 s later, so selling the position took several exits."
        )
    return notes


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


#: Okabe & Ito's colour-blind-safe palette, one colour per variant; the two executors compared
#: first get the strongest pair (vermillion, blue), the ablations dashed lines.
_COLOURS: dict[str, str] = {
    "naive": "#D55E00",
    "guarded": "#0072B2",
    "no-deadline": "#E69F00",
    "no-escalation": "#009E73",
    "no-reconciliation": "#CC79A7",
    "no-breaker": "#000000",
}
_MAIN = ("naive", "guarded")
#: The percentiles marked on every curve (survival share 5 % and 1 %).
_PERCENTILES = ((95, 0.05), (99, 0.01))


def _survival(values: list[float], n: int) -> tuple[list[float], list[float]]:
    """Share of the ``n`` runs whose value is above each of ``values`` (a step function)."""
    ordered = sorted(values)
    return ordered, [(n - index - 1) / n for index in range(len(ordered))]


def _style(variant: str) -> dict[str, Any]:
    main = variant in _MAIN
    return {"color": _COLOURS.get(variant, "#999999"), "linewidth": 2.2 if main else 1.4,
            "linestyle": "-" if main else (0, (5, 2)), "label": VARIANT_LABELS[variant]}


def monte_carlo_figure(result: MonteCarloResult) -> Any:
    """The figure of :func:`plot_monte_carlo` (the caller closes it).

    Both panels plot, per variant, the share of runs *worse* than x on a log scale, so the
    tail where the variants differ (the worst 5 % and 1 %) gets most of the height rather than
    being squeezed under 1. Dotted lines at 5 % and 1 % with a marker where each curve
    crosses them: that variant's p95 and p99. The time panel has the guard's deadline.
    """
    plt = _pyplot()
    figure, (loss_ax, time_ax) = plt.subplots(1, 2, figsize=(13, 6))
    # Low enough for the p99 line whatever the number of runs.
    floor = min(0.5 / max(1, result.runs), 0.005)
    by_variant = {s.variant: s for s in result.summaries()}
    for variant in result.variants:
        runs = result.results[variant]
        style = _style(variant)
        summary = by_variant[variant]
        xs, ys = _survival([r.loss_pct for r in runs], len(runs))
        loss_ax.step(xs, [max(y, floor) for y in ys], where="post", **style)
        sold = [r.exit_time_s for r in runs if r.exit_time_s is not None]
        if sold:
            xs, ys = _survival(sold, len(runs))
            time_ax.step(xs, [max(y, floor) for y in ys], where="post", **style)
        for q, share in _PERCENTILES:
            loss_value = getattr(summary, f"loss_p{q}")
            time_value = getattr(summary, f"exit_p{q}")
            marker = {"color": style["color"], "zorder": 5, "s": 28,
                      "marker": "o" if q == 95 else "D"}
            loss_ax.scatter([loss_value], [share], **marker)
            if math.isfinite(time_value):
                time_ax.scatter([time_value], [share], **marker)
    for ax in (loss_ax, time_ax):
        ax.set_yscale("log")
        ax.set_ylim(floor, 1.05)
        ax.grid(True, which="both", alpha=0.25)
        for q, share in _PERCENTILES:
            ax.axhline(share, color="#555555", linestyle=":", linewidth=1)
            ax.annotate(f"p{q}", xy=(1.0, share), xycoords=("axes fraction", "data"),
                        xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize="small", color="#555555")
    loss_ax.set_xlabel("realized loss (% of entry value)")
    loss_ax.set_ylabel("share of runs with a larger loss (log)")
    loss_ax.set_title("Realized loss: the tail")
    time_ax.set_xscale("log")
    time_ax.axvline(GUARD_DEADLINE_S, color="#0072B2", linestyle="--", linewidth=1.2)
    time_ax.annotate(f"guard's exit deadline ({GUARD_DEADLINE_S:g} s)",
                     xy=(GUARD_DEADLINE_S, 1.0), xycoords=("data", "axes fraction"),
                     xytext=(-4, -12), textcoords="offset points", fontsize="small",
                     color="#0072B2", ha="right")
    time_ax.set_xlabel("time to exit (s, log scale)")
    time_ax.set_ylabel("share of runs not sold by then (log)")
    time_ax.set_title(f"Time to exit (runs not sold within {result.horizon:g} s stay up)")
    handles, labels = loss_ax.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False,
                  fontsize="small")
    figure.suptitle(f"exitguard simulate: {result.runs} runs, seed {result.seed}"
                    "  (markers: p95 ●, p99 ◆)")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return figure


def plot_monte_carlo(result: MonteCarloResult, path: Path) -> None:
    """Draw the loss and exit-time tails of every variant into ``path``."""
    plt = _pyplot()
    figure = monte_carlo_figure(result)
    try:
        try:
            figure.savefig(path)
        except (OSError, ValueError) as exc:
            raise PlotError(f"cannot write plot {str(path)!r}: {exc}") from None
    finally:
        plt.close(figure)
