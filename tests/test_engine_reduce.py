"""Streaming reductions (`engine.bins`, `engine.reduce`) against exact statistics of the same
per-path values: quantiles within the resolution of the bins, ES99 within the width of the
boundary bin, means, standard errors and probabilities exact (rtol 1e-9, float64 sums)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from engine import bins as B
from engine import params as P
from engine.config import Config
from engine.outputs import OUTPUTS
from engine.reduce import ES_LEVEL, QUANTILES, PointAccumulator
from engine.rollout import rollout
from tests.conftest import small_dict
from tests.helpers import assert_close

RUN = {"n_paths": 512, "seed": 5, "steps": 24, "cascade_rounds": 6, "max_window": 16, "fan_points": 6}
CHUNK = 256


@pytest.fixture(scope="module")
def streamed():
    """Two chunks of real per-path outputs, accumulated one after the other."""
    cfg = Config.model_validate(small_dict(run=RUN, policy={"insurance_fund_usd": 2e8}))
    params, static = P.build(cfg)
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


def test_quantiles_of_known_samples():
    """Bins alone, on lognormal losses with zeros and on fractions: within one bin."""
    rng = np.random.default_rng(0)
    usd = np.where(rng.random(20_000) < 0.3, 0.0, np.exp(rng.normal(18, 2, 20_000)))
    frac = rng.beta(2, 5, 20_000)
    for bins, x in ((B.usd(), usd), (B.fraction(), frac), (B.ratio(), 2 * frac - 1)):
        counts = np.bincount(bins.index(x), minlength=bins.n)
        est = B.quantiles_from_counts(counts, bins, QUANTILES)
        lo, hi = bins.bounds()
        for q, e in zip(QUANTILES, est):
            b = bins.index(np.quantile(x, q))
            assert lo[b] - 1e-12 <= e <= hi[b] + 1e-12 or abs(e - np.quantile(x, q)) <= hi[b] - lo[b], (
                bins.kind,
                q,
            )
