"""Comparison arithmetic: paired differences come from the cube, unpaired ones combine errors."""

import numpy as np
import xarray as xr

from engine.report import results as pol
from engine.report.units import usd
from tests.helpers import EXACT_RTOL, assert_close


def _point(mean: float, se: float, diff: float, diff_se: float) -> xr.Dataset:
    v = {}
    for name in pol.DIFFS:
        lead = name == "max_drawdown"

        def val(x, lead=lead):
            return (("asset",), np.full((2,), x)) if lead else ((), x)

        v[f"{name}_mean"], v[f"{name}_mc_se"] = val(mean), val(se)
        v[f"{name}_diff_mean"], v[f"{name}_diff_se"] = val(diff), val(diff_se)
    return xr.Dataset(v, coords={"asset": ["BTC", "ETH"]}, attrs={"n_paths": 100})


def test_paired_difference_uses_the_cube_and_unpaired_combines_errors():
    ref = pol.PolicyResult("base", _point(10.0, 3.0, 0.0, 0.0), "a", True, True)
    same_run = pol.PolicyResult("p", _point(7.0, 3.0, -3.0, 0.5), "a", False, True)
    other_run = pol.PolicyResult("q", _point(7.0, 4.0, 99.0, 99.0), "b", False, False)
    assert pol.difference(same_run, ref, "bad_debt") == (-3.0, 0.5, True)
    d, se, paired = pol.difference(other_run, ref, "bad_debt")
    assert (d, paired) == (-3.0, False)
    assert_close(se, 5.0, EXACT_RTOL)
    assert pol.difference(same_run, ref, "max_drawdown")[0] == -3.0  # the lead asset


def test_usd_formatting():
    assert (
        usd(1.5e9) == "1.50 B" and usd(-2e6, signed=True) == "-2.00 M" and usd(3e3, signed=True) == "+3.00 k"
    )
