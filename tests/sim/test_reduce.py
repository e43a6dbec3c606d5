"""Streaming reductions (`engine.model.bins`, `engine.sim.reduce`) against exact statistics of the same
per-path values: quantiles within the resolution of the bins, ES99 within the width of the
boundary bin, means, standard errors and probabilities exact (rtol 1e-9, float64 sums)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from engine.config import build
from engine.config.schema import Config
from engine.model import bins as B
from engine.model.outputs import OUTPUTS
from engine.sim.reduce import (
    BAND_QUANTILES,
    CLIPPED,
    ES_LEVEL,
    ESTIMATED,
    IN_RANGE,
    QUANTILES,
    TOO_FEW_PATHS,
    PointAccumulator,
    _band,
    es_status,
    quantile_status,
)
from engine.sim.rollout import _advance, _begin, rollout
from tests.conftest import small_dict
from tests.helpers import assert_close
from tests.samples import accumulate, outputs_of, small_static

RUN = {"n_paths": 512, "seed": 5, "steps": 24, "cascade_rounds": 6, "max_window": 16, "fan_points": 6}
CHUNK = 256


@pytest.fixture(scope="module")
def streamed():
    """Two chunks of real per-path outputs, accumulated one after the other."""
    cfg = Config.model_validate(small_dict(run=RUN, policy={"insurance_fund_usd": 2e8}))
    params, static = build.build(cfg)
    acc = PointAccumulator(static)
    chunks = []
    for start in (0, CHUNK):
        out, fan = jax.device_get(rollout(params, 5, start, CHUNK, static=static, n_paths=CHUNK))
        acc.add(out, fan, CHUNK)
        chunks.append(out)
    values = {o.name: np.concatenate([np.asarray(c[o.name], np.float64) for c in chunks]) for o in OUTPUTS}
    return acc.result(np.asarray(params.market.price0, float)), values, acc


def bin_edges_of(bins: B.Bins, x: np.ndarray):
    lo, hi = bins.bounds()
    i = bins.index(x)
    return lo[i], hi[i]


def test_quantiles_within_bin_resolution(streamed):
    res, values, acc = streamed
    for o in OUTPUTS:
        x = values[o.name]
        est = res[o.name]  # [quantiles, ...]
        s = np.sort(x, axis=0)
        n = x.shape[0]
        for k, q in enumerate(QUANTILES):
            rank = q * (n - 1)
            below, above = s[int(np.floor(rank))], s[int(np.ceil(rank))]
            lo, _ = bin_edges_of(acc.bins[o.name], below)
            _, hi = bin_edges_of(acc.bins[o.name], above)
            exact = np.quantile(x, q, axis=0)
            assert np.all((lo <= exact) & (exact <= hi))
            ok = (lo - 1e-9 * np.abs(lo) <= est[k]) & (est[k] <= hi + 1e-9 * np.abs(hi))
            assert np.all(ok), (o.name, q, est[k], exact, lo, hi)


def test_es99_within_the_boundary_bin(streamed):
    res, values, acc = streamed
    for o in OUTPUTS:
        if not o.loss:
            continue
        x = np.sort(values[o.name], axis=0)[::-1]  # worst first
        n = x.shape[0]
        k = (1.0 - ES_LEVEL) * n
        whole = int(np.floor(k))
        exact = (x[:whole].sum(0) + (k - whole) * x[whole]) / k
        lo, hi = bin_edges_of(acc.bins[o.name], x[whole])
        assert np.all(np.abs(res[f"es99_{o.name}"] - exact) <= (hi - lo) + 1e-9 * np.abs(exact)), o.name


def test_mean_se_and_probability_exact(streamed):
    res, values, _ = streamed
    for o in OUTPUTS:
        x = values[o.name]
        n = x.shape[0]
        scale = float(np.abs(x).max()) or 1.0
        assert_close(res[f"{o.name}_mean"], x.mean(0), 1e-9, scale, o.name)
        assert_close(res[f"{o.name}_mc_se"], x.std(0, ddof=1) / np.sqrt(n), 1e-6, scale / np.sqrt(n), o.name)
        np.testing.assert_array_equal(res[f"p_{o.name}_positive"], (x > 0).mean(0))
    assert float(res["liquidated_total_mean"]) > 0


def _order_stat_checks(x: np.ndarray, bins: B.Bins, q: float):
    """numpy.quantile of x `[n]`, and the range the binned estimate must lie in: exactly that
    value when both order statistics it reads are exact in the bins (alone, their bin's
    smallest or largest member, or in a bin of equal values), else their bins' [min, max]."""
    s = np.sort(x)
    idx = bins.index(s)
    h = q * (len(x) - 1)
    ranks = (int(np.floor(h)), int(np.ceil(h)))
    exact = []
    for r in ranks:
        members = np.flatnonzero(idx == idx[r])
        exact.append(r in (members[0], members[-1]) or s[members[0]] == s[members[-1]])
    lo = s[np.flatnonzero(idx == idx[ranks[0]])[0]]
    hi = s[np.flatnonzero(idx == idx[ranks[1]])[-1]]
    return np.quantile(x, q), all(exact), lo, hi


@pytest.mark.parametrize("n", [1, 3, 10, 100, 1000, 5000])
def test_every_quantile_matches_numpy_on_heavy_tails(n):
    """Every output kind, every level of QUANTILES: numpy.quantile exactly (1e-12) where the
    order statistics it interpolates are exact in their bins, else within their bins."""
    rng = np.random.default_rng(n)
    _, static = small_static()
    values = outputs_of(static, n, rng)
    res = accumulate(static, values).result(np.ones(static.n_assets))
    n_exact = 0
    for o in OUTPUTS:
        x = values[o.name].reshape(n, -1)
        est = res[o.name].reshape(len(QUANTILES), -1)
        for col in range(x.shape[1]):
            for k, q in enumerate(QUANTILES):
                want, exact, lo, hi = _order_stat_checks(x[:, col], o.bins(static), q)
                tol = 1e-12 * max(abs(want), 1.0)
                if exact:
                    n_exact += 1
                    assert abs(est[k, col] - want) <= tol, (o.name, col, q, est[k, col], want)
                else:
                    assert lo - tol <= est[k, col] <= hi + tol, (o.name, col, q, est[k, col], lo, hi)
    assert n_exact > 0


def _exact_es(x: np.ndarray, level: float) -> float:
    """Mean of the worst (1 - level) n values: the largest floor(k) in full, the next with
    weight k - floor(k) (k = (1 - level) n; below one path: the largest value)."""
    s = np.sort(x)[::-1]
    k = max(B.tail_weight(len(x), level), 1e-300)
    whole = int(np.floor(k))
    part = (k - whole) * s[whole] if whole < len(s) else 0.0
    return (s[:whole].sum() + part) / k


def test_es99_never_below_q99_and_close_to_the_exact_tail_mean():
    """60 random samples of 1 to 3,000 paths, heavy-tailed or tightly clustered (many paths
    per bin), every loss output: ES99 >= q99 exactly, and within the spread [min, max] of the
    bin where the tail starts of the exact mean of the worst 1% (ES is exact but for that
    bin's members)."""
    rng = np.random.default_rng(99)
    _, static = small_static()
    for trial in range(60):
        n = int(rng.integers(1, 3000))
        values = outputs_of(static, n, rng, tight=trial % 2 == 1)
        res = accumulate(static, values).result(np.ones(static.n_assets))
        for o in OUTPUTS:
            if not o.loss:
                continue
            x = values[o.name].reshape(n, -1)
            es = np.atleast_1d(res[f"es99_{o.name}"]).reshape(-1)
            q99 = res[o.name][QUANTILES.index(ES_LEVEL)].reshape(-1)
            assert np.all(es >= q99), (trial, n, o.name, es, q99)
            bins = o.bins(static)
            for col in range(x.shape[1]):
                want = _exact_es(x[:, col], ES_LEVEL)
                s = np.sort(x[:, col])
                start = s[max(n - int(np.ceil(B.tail_weight(n, ES_LEVEL))), 0)]
                members = s[bins.index(s) == bins.index(start)]
                spread = members[-1] - members[0]
                assert abs(es[col] - want) <= spread + 1e-12 * max(abs(want), 1.0), (
                    trial,
                    n,
                    o.name,
                    es[col],
                    want,
                )


def test_reductions_are_bitwise_independent_of_chunking():
    """Chunks of 256, 512 and 768 paths of the same 1,700 heavy-tailed paths: identical
    statistics (the bin sums grow atom by atom in path order)."""
    _, static = small_static()
    values = outputs_of(static, 1700, np.random.default_rng(3))
    runs = [accumulate(static, values, chunk).result(np.ones(static.n_assets)) for chunk in (256, 512, 768)]
    for other in runs[1:]:
        for key, v in runs[0].items():
            np.testing.assert_array_equal(other[key], v, err_msg=key)


@pytest.mark.parametrize(
    ("n", "quantiles_estimated", "es_estimated"),
    [
        (1, (False,) * 5, False),
        (3, (True, False, False, False, False), False),
        (10, (True, True, False, False, False), False),
        (999, (True, True, True, True, False), False),
        (1000, (True,) * 5, False),
        (9999, (True,) * 5, False),
        (10_000, (True,) * 5, True),
    ],
)
def test_too_few_paths_are_flagged_per_quantile(n, quantiles_estimated, es_estimated):
    """q needs n min(q, 1 - q) >= 1 (q99.9: 1,000 paths); ES99 needs 100 tail paths."""
    assert QUANTILES == (0.5, 0.9, 0.95, 0.99, 0.999)
    flags = quantile_status(n, QUANTILES)
    assert flags.dtype == np.int8
    assert tuple(flags == ESTIMATED) == quantiles_estimated
    assert tuple(flags[~np.array(quantiles_estimated)]) == (TOO_FEW_PATHS,) * quantiles_estimated.count(False)
    assert (es_status(n) == ESTIMATED) == es_estimated
    assert tuple(quantile_status(n, (0.01, 0.5, 0.99)) == ESTIMATED) == (n >= 100, n >= 2, n >= 100)


def test_fan_bands_follow_moves_beyond_the_old_histogram_range():
    """SOL at 1,200% annual volatility for a day: its 1% and 99% log prices lie beyond the old
    fixed range [-1.2, 0.4]; every band at the last step matches numpy.quantile of the final
    log marks within the bins of the order statistics it reads, none clipped."""
    run = {"n_paths": 256, "seed": 3, "steps": 8, "dt_minutes": 180.0, "fan_points": 2, "cascade_rounds": 2}
    assets = small_dict()["market"]["assets"]
    cfg = Config.model_validate(
        small_dict(
            run=run,
            market={"assets": {**assets, "SOL": {**assets["SOL"], "vol_annual": 12.0}}},
            book={"leverage": [5, 50], "leverage_weights": [1, 1], "entry_points": 1},
        )
    )
    params, static = build.build(cfg)
    n = run["n_paths"]
    final = jax.jit(lambda p: _advance(_begin(p, static, n), p, 3, 0, n, 0, static, static.steps))(params)
    x = np.asarray(final.states.x_mark, np.float64)  # [paths, assets] log mark at the last step
    bands, status = _band(np.asarray(final.fan["price"], np.int64), B.FAN_PRICE)  # [time, asset, bq]
    sol = cfg.asset_names.index("SOL")
    assert np.quantile(x[:, sol], 0.99) > 0.4 and np.quantile(x[:, sol], 0.01) < -1.2
    assert np.all(status == IN_RANGE)
    lo_edge, hi_edge = B.FAN_PRICE.bounds()
    s = np.sort(x, axis=0)
    for a in range(static.n_assets):
        idx = B.FAN_PRICE.index(s[:, a])
        for k, q in enumerate(BAND_QUANTILES):
            h = q * (n - 1)
            lo, hi = lo_edge[idx[int(np.floor(h))]], hi_edge[idx[int(np.ceil(h))]]
            assert lo <= np.quantile(x[:, a], q) <= hi
            assert lo - 1e-12 <= bands[-1, a, k] <= hi + 1e-12, (a, q, bands[-1, a, k], lo, hi)


def test_fan_bands_in_an_end_bin_are_nan_and_flagged_clipped():
    """Half the paths beyond the low end of the range, half at 0: bands that read the end
    bin are NaN and CLIPPED, the others are estimates."""
    hist = np.zeros((1, 1, B.FAN_PRICE.n), np.int64)
    hist[0, 0, B.FAN_PRICE.index(-50.0)] = 50
    hist[0, 0, B.FAN_PRICE.index(0.0)] = 50
    bands, status = _band(hist, B.FAN_PRICE)
    low = np.array(BAND_QUANTILES) <= 0.5  # rank 49.5 at the median reads the end bin too
    np.testing.assert_array_equal(status[0, 0], np.where(low, CLIPPED, IN_RANGE))
    assert np.all(np.isnan(bands[0, 0, low])) and np.all(np.abs(bands[0, 0, ~low]) < 0.01)
