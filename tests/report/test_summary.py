"""Too few paths: the cube flags quantiles and ES99 it cannot estimate, the terminal summary
and the report tables show them as n/e, and very small runs are warned about."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from engine.report import compare as R
from engine.report import results as pol
from engine.report.summary import NOT_ESTIMABLE, summary_table
from engine.report.units import usd
from engine.sim.dataset import to_dataset
from engine.sim.reduce import ESTIMATED, QUANTILES, TOO_FEW_PATHS
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
    cells = _row(text, "Bad debt (USD)")
    median = np.quantile(values["bad_debt"], 0.5)
    assert cells[1] == usd(median) and cells[2:4] == [NOT_ESTIMABLE, NOT_ESTIMABLE]
    assert "Warning: only 3 paths" in " ".join(text.split())
    assert "q99 needs 100" in " ".join(text.split())


def test_summary_of_a_thousand_paths_shows_q99_but_not_es99():
    ds, values = cube_of(1000)
    text = summary_table(ds)
    cells = _row(text, "Bad debt (USD)")
    assert cells[2] == usd(np.quantile(values["bad_debt"], 0.99)) and cells[3] == NOT_ESTIMABLE
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
