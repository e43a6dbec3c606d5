"""The report's figures and explanations, on small made-up cubes (no simulation): plot layout,
tick labels, the baseline's 0 ± 0, the fund-draw note, unpaired runs, diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.report import compare as R
from engine.report import plots
from engine.report import results as pol
from engine.report.ticks import Amounts, plain_log_axis
from engine.report.units import usd
from engine.sim.reduce import BAND_QUANTILES, QUANTILES
from tests.helpers import EXACT_RTOL, F32_RTOL, assert_close

CONFIG = """name = "made_up"
[run]
n_paths = 256
[market.assets.BTC]
price = 100000.0
[scenario]
shock = -0.1
[policy]
insurance_fund_usd = 1e6
"""


def made_up_cube(scale: float = 1.0, seed: int = 7, config: str = CONFIG, **counts: int) -> xr.Dataset:
    """A one-point cube with every variable the report reads: the loss quantiles of point k are
    `scale * (1, 2, 3, 4, 5) * 1e6` (bad debt all zero); `counts` sets diagnostic counts."""
    q = np.asarray(QUANTILES)
    amounts = scale * np.arange(1, len(q) + 1) * 1e6
    v: dict = {"time": ("time", [60.0, 120.0])}
    for name in pol.DIFFS:
        lead = name == "max_drawdown"
        vals = amounts * 1e-8 if lead else (0 * amounts if name == "bad_debt" else amounts)
        v[name] = (("quantile", "asset"), np.stack([vals] * 2, -1)) if lead else (("quantile",), vals)
        for stat, x in (
            ("mean", vals[0]),
            ("mc_se", 0.1 * vals[0]),
            ("diff_mean", np.nan),
            ("diff_se", np.nan),
        ):
            v[f"{name}_{stat}"] = (("asset",), [x, x]) if lead else ((), x)
        v[f"es99_{name}"] = ((), 1.1 * vals[-1])
    v["liquidated_total_mean"] = ((), amounts[0])
    v["bad_debt_mean"], v["p_bad_debt"] = ((), 0.0), ((), 0.0)
    band = np.linspace(1, 2, 7)[None, None, :] * np.ones((2, 2, 1))
    v["mark_price_band"] = (("time", "asset", "band_quantile"), band)
    v["cum_liquidations_band"] = (("time", "asset", "band_quantile"), band * 1e6)
    for name, n in counts.items():
        v[name] = ((), np.int32(n))
    coords = {"quantile": q, "asset": ["BTC", "ETH"], "band_quantile": list(BAND_QUANTILES)}
    attrs = {"n_paths": 256, "seed": seed, "steps": 24, "dt_minutes": 5.0, "config": config, "sweep_dims": ""}
    return xr.Dataset(v, coords=coords, attrs={**attrs, "title": "liqstress loss distributions: made_up"})


def drawn(fig: Figure) -> FigureCanvasAgg:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas


@pytest.fixture
def loss_figure(tmp_path):
    pols = pol.policies([("a", made_up_cube()), ("b", made_up_cube(scale=3.0))])
    fig = plots.plot_loss_distributions(pols, tmp_path / "loss.png")
    drawn(fig)
    return fig, pols


def test_loss_legend_sits_outside_every_panel(loss_figure):
    fig, _ = loss_figure
    legend = fig.legends[0].get_window_extent()
    renderer = fig.canvas.get_renderer()
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_tightbbox(renderer)), ax.get_title()


def test_loss_panels_hold_every_marker_with_a_margin(loss_figure):
    fig, pols = loss_figure
    for ax, (name, _) in zip(fig.axes, pol.LOSSES):
        if name == "bad_debt":
            continue
        values = [float(x) for p in pols for x in (*p.ds[name].values, p.ds[f"es99_{name}"])]
        lo, hi = ax.get_xlim()
        span = max(values) - min(values)
        assert lo <= min(values) - 0.04 * span and hi >= max(values) + 0.04 * span, name


def test_all_zero_panel_has_one_tick_at_zero_not_a_fractional_symmetric_axis(loss_figure):
    fig, _ = loss_figure
    ax = fig.axes[[n for n, _ in pol.LOSSES].index("bad_debt")]
    lo, hi = ax.get_xlim()
    assert -0.1 < lo < 0 < hi and hi >= 1 and abs(lo) < 0.1 * hi
    assert list(ax.get_xticks()) == [0.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0"]
    assert any("0 on every path" in t.get_text() for t in ax.texts)


def test_amount_ticks_keep_neighbours_apart():
    f = Amounts()
    locs = [3.2200e9, 3.2225e9, 3.2250e9, 3.2275e9]
    labels = f.format_ticks(locs)
    assert labels == ["3.2200 B", "3.2225 B", "3.2250 B", "3.2275 B"]
    assert f.format_ticks([12.5e9, 15e9, 17.5e9]) == ["12.5 B", "15.0 B", "17.5 B"]
    assert f.format_ticks([0, 5e7, 1e8, 1.5e8]) == ["0", "50 M", "100 M", "150 M"]
    assert f.format_ticks([0, 5e8, 1e9, 1.5e9]) == ["0", "0.5 B", "1.0 B", "1.5 B"]  # one suffix
    assert f(0.3) == "0.3" and f.format_ticks([2.17e20, 2.18e20]) == ["2.17e+20", "2.18e+20"]


def test_log_axis_ticks_are_plain_numbers():
    fig = Figure()
    ax = fig.subplots()
    ax.plot([0.25, 0.9], [1.5e6, 4e7])
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis)
    plain_log_axis(ax.yaxis)
    drawn(fig)
    x = [t.get_text() for t in ax.get_xticklabels(minor=True) + ax.get_xticklabels() if t.get_text()]
    y = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()]
    assert "0.3" in x and "0.5" in x
    assert "10 M" in y and "2 M" in y
    assert not any("10^" in s or "times" in s or "e-" in s for s in x + y)


def test_single_run_report_is_titled_report_and_a_comparison_comparison(tmp_path):
    one = R.write_report([("a", made_up_cube())], tmp_path / "one").read_text()
    two = R.write_report([("a", made_up_cube()), ("b", made_up_cube())], tmp_path / "two").read_text()
    assert one.startswith("# liqstress report: a\n") and "comparison" not in one.splitlines()[0]
    assert two.startswith("# liqstress comparison: a, b\n")


def test_baseline_differences_are_zero_plus_minus_zero_even_when_the_cube_says_nan(tmp_path):
    pols = pol.policies([("a", made_up_cube()), ("b", made_up_cube(scale=2.0))])
    _, _, _, drows = R.tables(pols, "BTC")
    assert drows[0][1:6] == ["0 ± 0"] * 5 and "nan" not in " ".join(drows[0]).lower()
    text = R.write_report([("a", made_up_cube()), ("b", made_up_cube(scale=2.0))], tmp_path).read_text()
    assert "| a | 0 ± 0 | 0 ± 0 | 0 ± 0 | 0 ± 0 | 0 ± 0 | the baseline itself |" in text
    assert "nan" not in text.lower()


def test_fund_draw_above_the_fund_is_explained_only_when_shown():
    over = pol.policies([("a", made_up_cube(scale=1.0))])  # draws 1..5 M, ES99 5.5 M; fund 1 M
    note = R.fund_note(over)
    assert note and "fees flow into the fund" in note and "5.50 M against 1.00 M" in note
    under = pol.policies([("a", made_up_cube(scale=0.1))])  # draws up to 0.55 M
    assert R.fund_note(under) is None
    assert_close(over[0].fund_usd, 1e6, EXACT_RTOL)
    many = pol.policies([(f"run{k}", made_up_cube()) for k in range(R.MAX_LISTED + 2)])
    assert R.fund_note(many).endswith("; and 2 more policies.")


def test_runs_with_other_paths_or_scenarios_are_called_unpaired_plainly():
    base = ("a", made_up_cube())
    other_seed = R.pairing_notes([base, ("b", made_up_cube(seed=8))])
    assert len(other_seed) == 1 and "**unpaired**" in other_seed[0] and "seed 8 vs 7" in other_seed[0]
    other_scenario = R.pairing_notes([base, ("c", made_up_cube(config=CONFIG.replace("-0.1", "-0.3")))])
    assert "other scenario" in other_scenario[0] and "mix the change of scenario" in other_scenario[0]
    same = R.pairing_notes([base, ("d", made_up_cube())])
    assert "unpaired" in same[0] and "same seed" in same[0]
    assert R.pairing_notes([base]) == []


def test_diagnostics_name_the_paths_and_the_fix():
    pols = pol.policies([("a", made_up_cube(n_cascade_unconverged=3, n_jump_truncated=0))])
    lines = R.diagnostics(pols)
    assert len(lines) == 1
    assert lines[0].startswith("3 paths ran out of cascade rounds") and "3 of 256" in lines[0]
    assert "raise `run.cascade_rounds`" in lines[0]
    jumps = R.diagnostics(pol.policies([("a", made_up_cube(n_jump_truncated=5))]))
    assert "5 of 256" in jumps[0] and "jump_intensity_per_day" in jumps[0]
    assert R.diagnostics(pol.policies([("a", made_up_cube(n_cascade_unconverged=0))])) == []


# --------------------------------------------------------------------------------------
# Statistics with too few paths behind them (`engine.report.summary.estimate` says NaN) are drawn,
# where they lie, in a style that says they are not estimates.
# --------------------------------------------------------------------------------------


def at_paths(cube: xr.Dataset, n_paths: int) -> xr.Dataset:
    """`cube` as if it came from `n_paths` paths: the status flags follow from the count."""
    return cube.assign_attrs(n_paths=n_paths)


def hollow(line) -> bool:
    return line.get_markerfacecolor() == "none"


def markers_of(ax, marker: str) -> list:
    return [ln for ln in ax.lines if ln.get_marker() == marker]


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


@pytest.mark.parametrize(
    ("n_paths", "flagged"),
    [(512, {"^", "X"}), (1024, {"X"}), (20_000, set())],  # q99.9 needs 1,000 paths, ES99 10,000
)
def test_loss_markers_with_too_few_paths_are_hollow_grey_and_keyed(tmp_path, n_paths, flagged):
    cubes = [("a", at_paths(made_up_cube(), n_paths)), ("b", at_paths(made_up_cube(scale=3.0), n_paths))]
    pols = pol.policies(cubes)
    fig = plots.plot_loss_distributions(pols, tmp_path / "loss.png")
    ax = fig.axes[[n for n, _ in pol.LOSSES].index("liquidated_total")]
    for marker in ("o", "|", "D", "^", "X"):
        lines = markers_of(ax, marker)
        assert len(lines) == len(pols), marker
        is_flagged = marker in flagged
        assert all(hollow(ln) == is_flagged for ln in lines), marker
        assert all((ln.get_color() == plots.FLAG_COLOR) == is_flagged for ln in lines), marker
    # drawn where the cube's values lie: q99.9 of policy b is 3 * 5 M, its ES99 1.1 times that
    assert_close(sorted(float(ln.get_xdata()[0]) for ln in markers_of(ax, "X")), [5.5e6, 16.5e6], F32_RTOL)
    # the policy's line spans its estimates only: median to q99.9, or to q99 when q99.9 is flagged
    ranges = sorted(x for ln in ax.lines if ln.get_marker() == "None" for x in ln.get_xdata())
    top = 4 if "^" in flagged else 5
    assert_close(ranges, sorted([1e6, top * 1e6, 3e6, 3 * top * 1e6]), F32_RTOL)
    assert (plots.FLAGGED in legend_texts(fig)) == bool(flagged)


def swept(es99_status: list[list[int]]) -> xr.Dataset:
    """A 2 x 2 sweep of `made_up_cube` whose ES99 of liquidations is 10, 20, 30, 40 M over
    (leverage_cap, breaker_kind), with the given ES99 flags."""
    cube = made_up_cube().expand_dims(leverage_cap=[20.0, 125.0], breaker_kind=["none", "halt"])
    cube["es99_liquidated_total"] = (("leverage_cap", "breaker_kind"), [[10e6, 20e6], [30e6, 40e6]])
    cube["es99_status"] = (("leverage_cap", "breaker_kind"), np.int8(es99_status))
    return cube.assign_attrs(sweep_dims="leverage_cap breaker_kind", baseline_point=0)


@pytest.mark.parametrize("status", [[[0, 1], [1, 0]], [[0, 0], [0, 0]]])
def test_heatmap_marks_and_hatches_es99_cells_with_too_few_paths(tmp_path, status):
    fig = plots.plot_heatmap(swept(status), ("leverage_cap", "breaker_kind"), tmp_path / "heat.png")
    es_ax, p_ax = fig.axes[0], fig.axes[2]  # each panel is followed by its colour bar
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in es_ax.texts}
    for (i, lev), (j, kind) in (
        (a, b) for a in enumerate([20.0, 125.0]) for b in enumerate(["none", "halt"])
    ):
        value = usd(10e6 * (1 + 2 * i + j))
        assert texts[(i, j)] == value + plots.FLAG_MARK * status[i][j], (lev, kind)  # x: leverage, y: kind
    hatched = [(p.get_x() + 0.5, p.get_y() + 0.5) for p in es_ax.patches if p.get_hatch() == "//"]
    assert sorted(hatched) == sorted((i, j) for i in range(2) for j in range(2) if status[i][j])
    assert not p_ax.patches and not any(plots.FLAG_MARK in t.get_text() for t in p_ax.texts)
    title = fig._suptitle.get_text()
    assert (plots.FLAGGED in title and "10,000 paths" in title) == any(map(any, status))


@pytest.mark.parametrize("status", [[0, 1], [1, 1], [0, 0]])
def test_sweep_line_draws_es99_with_too_few_paths_dotted_hollow_and_keyed(tmp_path, status):
    cube = swept([[s, s] for s in status]).isel(breaker_kind=0).assign_attrs(sweep_dims="leverage_cap")
    ax = plots.plot_sweep_line(cube, "leverage_cap", tmp_path / "sweep.png").axes[0]
    by_label = dict(zip(*reversed(ax.get_legend_handles_labels())))
    flagged_label = f"ES99: {plots.FLAGGED}"
    es = np.array([10e6, 30e6])
    if all(status):
        assert "ES99" not in by_label
    else:
        np.testing.assert_array_equal(by_label["ES99"].get_ydata(), np.where(status, np.nan, es))
        assert not hollow(by_label["ES99"])
    if any(status):
        line = by_label[flagged_label]
        np.testing.assert_array_equal(line.get_ydata(), np.where(status, es, np.nan))
        assert hollow(line) and line.get_linestyle() == ":" and line.get_color() == plots.FLAG_COLOR
    else:
        assert flagged_label not in by_label


def test_fan_chart_draws_clipped_bands_as_gaps_and_says_why(tmp_path):
    plain = plots.plot_fan_charts(pol.policies([("a", made_up_cube())]), tmp_path / "plain.png")
    assert "clipped" not in plain._suptitle.get_text()
    cube = made_up_cube()
    cube["mark_price_band"][0, 0, -1] = np.nan  # BTC's 99% band at the first time: beyond the bins
    status = np.zeros(cube["mark_price_band"].shape, np.int8)
    status[0, 0, -1] = 1
    cube["mark_price_band_status"] = (cube["mark_price_band"].dims, status)
    fig = plots.plot_fan_charts(pol.policies([("a", cube)]), tmp_path / "fan.png")
    drawn(fig)
    assert "clipped" in fig._suptitle.get_text()
    outer = fig.axes[0].collections[0]  # the 1%-99% band of BTC's price
    xs = np.concatenate([path.vertices[:, 0] for path in outer.get_paths()])
    assert np.isfinite(np.concatenate([path.vertices for path in outer.get_paths()])).all()
    assert set(np.round(xs, 6)) == {2.0}  # only the second time (hours) has both edges


@pytest.mark.parametrize(("n_paths", "n_bands"), [(15, 1), (50, 2), (100, 3)])  # 1%-99%: 100, 5%-95%: 20
def test_fan_chart_leaves_out_bands_with_too_few_paths_and_says_so(tmp_path, n_paths, n_bands):
    pols = pol.policies([("a", at_paths(made_up_cube(), n_paths))])
    fig = plots.plot_fan_charts(pols, tmp_path / "fan.png")
    assert all(len(ax.collections) == n_bands for ax in fig.axes)
    title = fig._suptitle.get_text()
    assert ("1%-99% band not drawn" in title and "it needs 100 paths" in title) == (n_bands < 3)
    assert ("5%-95% band not drawn" in title) == (n_bands < 2)
