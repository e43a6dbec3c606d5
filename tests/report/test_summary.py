"""Too few paths: the cube flags quantiles and ES99 it cannot estimate, the terminal summary
and the report tables show them as n/e, and very small runs are warned about. The terminal's
tables fit 80 columns and say what their rows are (unpaired, tipping) in plain words."""

from __future__ import annotations

import io

import numpy as np
import pytest
import xarray as xr
from rich.console import Console

from engine.report import compare as R
from engine.report import results as pol
from engine.report.summary import NOT_ESTIMABLE, WIDTH, summary_table
from engine.report.units import usd
from engine.sim.dataset import to_dataset
from engine.sim.reduce import ESTIMATED, QUANTILES, TOO_FEW_PATHS
from engine.sim.tipping import summary_line
from tests.samples import accumulate, outputs_of, small_static


def cube_of(n: int, seed: int = 0) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    """The one-point Dataset `simulate` would return for n synthetic heavy-tailed paths."""
    cfg, static = small_static(n)
    values = outputs_of(static, n, np.random.default_rng(seed))
    result = accumulate(static, values).result(np.ones(static.n_assets))
    return to_dataset(cfg, [result], static), values


@pytest.mark.parametrize(("n", "estimated"), [(3, (0.5,)), (1000, QUANTILES)])
def test_cube_flags_each_quantile_and_es99_as_cf_int8(tmp_path, n, estimated):
    ds, _ = cube_of(n)
    path = tmp_path / "cube.nc"
    ds.to_netcdf(path, engine="netcdf4")
    with xr.open_dataset(path, engine="netcdf4") as back:
        flags = back["quantile_status"].isel(point=0)
        assert flags.dtype == np.int8 and back["es99_status"].dtype == np.int8
        np.testing.assert_array_equal(flags.attrs["flag_values"], [ESTIMATED, TOO_FEW_PATHS])
        assert flags.attrs["flag_meanings"] == "estimated too_few_paths"
        want = [ESTIMATED if q in estimated else TOO_FEW_PATHS for q in QUANTILES]
        np.testing.assert_array_equal(flags.values, want)
        assert int(back["es99_status"].isel(point=0)) == TOO_FEW_PATHS  # 100 tail paths: 10,000
        assert back["liquidated_total"].attrs["ancillary_variables"] == "quantile_status"
        assert back["es99_bad_debt"].attrs["ancillary_variables"] == "es99_status"


def _row(text: str, label: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(label) or f" {label} " in ln)
    return [c.strip() for c in line.split("│")[1:-1]] if "│" in line else line.split()


def test_summary_shows_n_e_and_warns_for_three_paths():
    ds, values = cube_of(3)
    text = summary_table(ds)
    cells = _row(text, "Bad debt")
    median = np.quantile(values["bad_debt"], 0.5)
    assert cells[1] == usd(median, short=True) and cells[2:4] == [NOT_ESTIMABLE, NOT_ESTIMABLE]
    assert "Warning: only 3 paths" in " ".join(text.split())
    assert "q99 needs 100" in " ".join(text.split())


def test_summary_of_a_thousand_paths_shows_q99_but_not_es99():
    ds, values = cube_of(1000)
    text = summary_table(ds)
    cells = _row(text, "Bad debt")
    assert cells[2] == usd(np.quantile(values["bad_debt"], 0.99), short=True) and cells[3] == NOT_ESTIMABLE
    flat = " ".join(text.split())
    assert "Warning" not in flat and "ES99 needs 10,000" in flat and "q99.9" not in flat


def test_report_tables_show_n_e_where_the_cube_flags_too_few_paths():
    ds, values = cube_of(3)
    pols = pol.policies([("tiny", ds.isel(point=0))])
    head, rows, _, _ = R.tables(pols, "BTC")
    row = dict(zip(head, rows[0]))
    assert row["liq. median"] == usd(np.quantile(values["liquidated_total"], 0.5))
    assert (
        row["liq. q99"]
        == row["liq. ES99"]
        == row["fund draw q99"]
        == row["BTC drawdown q99"]
        == NOT_ESTIMABLE
    )
    assert any("only 3 paths" in note for note in R.few_paths_notes(pols))


def _lines_fit(text: str) -> list[str]:
    lines = text.splitlines()
    assert max(map(len, lines)) <= WIDTH and "…" not in text
    return lines


def test_summary_fits_80_columns_with_every_number_whole():
    ds, values = cube_of(1000)
    text = summary_table(ds)
    _lines_fit(text)  # was 88 columns
    cells = _row(text, "Liquidated, all assets")
    liq = values["liquidated_total"]
    assert cells[1:3] == [usd(np.quantile(liq, q), short=True) for q in (0.5, 0.99)]
    assert cells[4] == usd(float(ds["liquidated_total_mean"][0]), short=True) == usd(liq.mean(), short=True)
    assert cells[5] == usd(float(ds["liquidated_total_mc_se"][0]), short=True)


def _sweep(n: int, runs: int = 1) -> list[pol.PolicyResult]:
    """Four policies of a 2 x 2 sweep per run, labelled as a long sweep labels them."""
    ds, _ = cube_of(n)
    point = ds.isel(point=0)
    out = []
    for r in range(runs):
        for k, (cap, kind) in enumerate([(20, "none"), (20, "halt"), (125, "none"), (125, "halt")]):
            label = f"run{r}: leverage_cap={cap}, breaker_kind={kind}, adl_rule=pro_rata"
            out.append(pol.PolicyResult(label, point, f"run{r}", r == 0 and k == 2, r == 0))
    return out


def _rendered(pols: list[pol.PolicyResult]) -> str:
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    console.print(R.rich_table(pols, "BTC", "liqstress compare"))
    return console.export_text()


def test_sweep_table_fits_80_columns_and_marks_unpaired_rows():
    pols = _sweep(1000, runs=2)
    text = _rendered(pols)
    _lines_fit(text)  # every number was "…" at 80 columns
    m = pol.metrics(pols[0])
    for key in ("liq_median", "liq_q99", "bad_debt_mean", "fund_mean", "fund_q99"):
        assert usd(m[key], short=True) in text, key
    d, se, _ = pol.difference(pols[4], pols[2], "liquidated_total")
    assert f"{usd(d, signed=True, short=True)} ± {usd(pol.Z95 * se, short=True)}" in text
    flat = " ".join(text.split())
    assert flat.count("(unpaired)") == 2 * 4  # the second run's rows, in both tables
    assert "(baseline)" in flat and "unpaired rows (run1: other paths than the baseline's)" in flat
    one_run = " ".join(_rendered(pols[:4]).split())
    assert "(unpaired)" not in one_run and "(paired: the same paths)" in one_run


def test_one_path_has_no_standard_error():
    ds, values = cube_of(1)
    text = summary_table(ds)
    cells = _row(text, "Bad debt")
    assert cells[4] == usd(values["bad_debt"][0], short=True) and cells[5] == NOT_ESTIMABLE  # was "0"
    assert _row(text, "Max drawdown BTC")[5] == NOT_ESTIMABLE
    assert "a standard error needs 2" in " ".join(text.split())
    pols = _sweep(1)
    _, _, dhead, drows = R.tables(pols, "BTC")
    assert dict(zip(dhead, drows[0]))["Δ bad debt"].endswith(f"± {NOT_ESTIMABLE}")  # was "± 0"
    assert dict(zip(dhead, drows[0]))["Δ BTC drawdown"].endswith(f"± {NOT_ESTIMABLE}")
    assert _rendered(pols).count(f"0 ± {NOT_ESTIMABLE}") == 3  # every policy but the baseline (0 ± 0)


def test_tipping_line_says_what_a_tipping_point_is_in_plain_words():
    cube = xr.Dataset({"tipping_share": ("point", [0.0, 0.025]), "tipping_sampled": ("point", [200, 200])})
    line = summary_line(cube)
    assert line.startswith("Paths at a tipping point (a rounding-sized change of their random draws")
    assert "moves their liquidations by more than 0.1%" in line and "ulps" not in line
    assert line.endswith("0.0% to 2.5% of 200 sampled, highest at point=1")
