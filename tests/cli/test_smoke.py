"""End-to-end: the small scenario runs and its numbers are sane."""

import numpy as np

from engine import simulate
from tests.helpers import F32_RTOL, assert_close


def test_small_run_has_cascade_and_consistent_totals(small):
    ds = simulate(small)
    p = ds.isel(point=0)
    total = float(p.liquidated_total_mean)
    by_parts = float(p.liquidated_notional_mean.sum())
    assert total > 0
    assert_close(total, by_parts, F32_RTOL)
    # quantiles are ordered
    q = p.liquidated_total.values
    assert np.all(np.diff(q) >= 0)
    assert 0.0 <= float(p.p_bad_debt) <= 1.0
    assert int(p.n_nonfinite) == 0
