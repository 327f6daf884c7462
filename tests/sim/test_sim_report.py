"""What ``exitguard simulate`` and ``demo`` print and draw (issue 15): a title without padding,
an exit time above the guard's deadline explained where it is shown, a plot whose tail is
readable, with one legend, colour-blind-safe colours, the deadline and p95/p99 markers."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from exitguard.cli.app import main
from exitguard.sim import report
from exitguard.sim.run import VARIANT_LABELS, VARIANTS, MonteCarloResult, RunResult, build_guard
from exitguard.sim.venue import Conditions, SimVenue, VenueSpec


def _run(variant: str, loss: float, exit_time: float | None) -> RunResult:
    return RunResult(variant=variant, loss_pct=loss, exit_time_s=exit_time, known_at_s=exit_time,
                     attempts=2, sent=2, double_sells=0, oversold=0.0, avg_price=95.0, exits=1,
                     statuses=("closed",))


def _result(guard_tail: float | None = 75.0, runs: int = 100) -> MonteCarloResult:
    """Synthetic runs: every guard variant closes in 1-20 s except its slowest run."""
    rng = random.Random(3)
    results: dict[str, list[RunResult]] = {}
    for variant in VARIANTS:
        rows = [_run(variant, rng.uniform(4, 9), rng.uniform(1, 20)) for _ in range(runs - 2)]
        rows += [_run(variant, 12.0, guard_tail), _run(variant, 14.0, guard_tail)]
        results[variant] = rows
    return MonteCarloResult(runs=runs, seed=1, horizon=300.0, variants=VARIANTS,
                            results=results, wall_s=0.1)


def _text(renderable: object) -> str:
    from rich.console import Console

    console = Console(width=160, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_guard_deadline_of_the_report_is_the_simulated_guards() -> None:
    venue = SimVenue(VenueSpec(name="sim-dex", base=Conditions()), rng=random.Random(1))
    for variant in ("guarded", "no-escalation", "no-reconciliation", "no-breaker"):
        assert build_guard(variant, venue).deadline == report.GUARD_DEADLINE_S, variant
    assert build_guard("no-deadline", venue).deadline > report.GUARD_DEADLINE_S


def test_an_exit_time_above_the_deadline_says_the_bot_signalled_again() -> None:
    result = _result(guard_tail=75.0)
    table = _text(report.simulate_table(result))
    guarded = next(line for line in table.splitlines() if "│ exitguard " in line)
    assert f"75.0 s {report.SEVERAL_EXITS}" in guarded, guarded
    naive = next(line for line in table.splitlines() if "naive (seed)" in line)
    assert report.SEVERAL_EXITS not in naive, "the naive retry has no deadline to explain"
    no_deadline = next(line for line in table.splitlines() if "no deadline" in line)
    assert report.SEVERAL_EXITS not in no_deadline
    notes = report.simulate_notes(result)
    assert f"{report.SEVERAL_EXITS} above the guard's 30 s exit deadline" in notes
    assert "signals again" in notes
    assert "several exits" in notes

    never = _text(report.simulate_table(_result(guard_tail=None)))
    assert f"> 300 s {report.SEVERAL_EXITS}" in next(
        line for line in never.splitlines() if "│ exitguard " in line)

    quick = _result(guard_tail=25.0)
    assert report.SEVERAL_EXITS not in _text(report.simulate_table(quick))
    assert report.SEVERAL_EXITS not in report.simulate_notes(quick)


@pytest.mark.parametrize("argv", [["simulate", "--runs", "2", "--no-progress"], ["demo"]])
def test_no_padded_title_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    padded = [line for line in out.splitlines() if line != line.rstrip()]
    assert padded == [], padded
    assert out.count(f"exitguard {argv[0]}: ") == 1


def test_the_plot_shows_the_tails_with_one_legend_the_deadline_and_percentiles(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    result = _result()
    figure = report.monte_carlo_figure(result)
    try:
        loss_ax, time_ax = figure.axes
        # One shared legend naming every variant; none squeezed into a panel.
        assert len(figure.legends) == 1
        assert [t.get_text() for t in figure.legends[0].get_texts()] == [
            VARIANT_LABELS[v] for v in VARIANTS]
        assert loss_ax.get_legend() is None
        assert time_ax.get_legend() is None
        # The tail gets the height: log scale of the share of runs worse than x.
        for ax in (loss_ax, time_ax):
            assert ax.get_yscale() == "log"
            assert ax.get_ylim()[0] <= 0.01
            levels = {round(line.get_ydata()[0], 4) for line in ax.get_lines()
                      if line.get_linestyle() == ":"}
            assert levels == {0.05, 0.01}, "p95 and p99 lines"
            # A p95 and a p99 marker per variant.
            assert len(ax.collections) == 2 * len(VARIANTS)
        # Distinct colours from Okabe & Ito's colour-blind-safe palette.
        colours = [to_hex(line.get_color()).upper() for line in loss_ax.get_lines()
                   if line.get_label() in VARIANT_LABELS.values()]
        assert len(colours) == len(VARIANTS)
        assert len(set(colours)) == len(colours)
        okabe_ito = {"#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00",
                     "#CC79A7", "#000000"}
        assert set(colours) <= okabe_ito
        # The guard's deadline on the time panel.
        deadline = [line for line in time_ax.get_lines()
                    if list(line.get_xdata()) == [report.GUARD_DEADLINE_S] * 2]
        assert deadline, "no deadline line on the time panel"
    finally:
        plt.close(figure)
    target = tmp_path / "tails.png"
    report.plot_monte_carlo(result, target)
    assert target.read_bytes()[:4] == b"\x89PNG"
