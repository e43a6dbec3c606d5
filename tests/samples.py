"""Heavy-tailed (or tightly clustered) synthetic per-path outputs for the reductions, without running the kernel.

Each output gets values of its bins' kind: USD amounts from a Student-t with 1.5 degrees of
freedom (infinite variance), a third of them exactly zero and some negative; fractions in
[0, 1] with zeros; ratios from a Pareto tail on both sides; integer counts.
"""

from __future__ import annotations

import numpy as np

from engine.config.build import static_of
from engine.config.schema import Config
from engine.model import bins as B
from engine.model.outputs import OUTPUTS
from engine.model.params import LEVERAGE_BUCKETS, MARGIN_MODES, Static
from engine.sim.reduce import ATOM, PointAccumulator
from tests.conftest import small_dict


def small_static(n_paths: int = 512) -> tuple[Config, Static]:
    cfg = Config.model_validate(small_dict(run={**small_dict()["run"], "n_paths": n_paths, "steps": 12}))
    return cfg, static_of(cfg)


def heavy_values(
    kind: str, shape: tuple[int, ...], rng: np.random.Generator, max_count: int = 12, tight: bool = False
) -> np.ndarray:
    """Heavy-tailed values of a bins kind, `shape` (paths first); `tight`: a cluster a few bins
    wide (many paths per bin, where a binned estimate must interpolate inside bins)."""
    if tight and kind != "count":
        centre = {"usd": 1e10, "fraction": 0.3, "ratio": 0.5}[kind]
        return centre * np.exp(0.01 * rng.standard_t(3.0, shape))
    if kind == "usd":
        x = rng.standard_t(1.5, shape) * 1e8
        return np.where(rng.random(shape) < 0.3, 0.0, x)
    if kind == "fraction":
        return np.where(rng.random(shape) < 0.2, 0.0, np.minimum(rng.pareto(3.0, shape) * 0.05, 1.0))
    if kind == "ratio":
        return rng.choice([-1.0, 1.0], shape) * rng.pareto(2.5, shape) * 0.1
    return np.minimum(rng.geometric(0.4, shape) - 1, max_count).astype(float)


def outputs_of(
    static: Static, n: int, rng: np.random.Generator, tight: bool = False
) -> dict[str, np.ndarray]:
    """Per-path values `{name: [n, ...]}` of every output, of its bins' kind (see `heavy_values`)."""
    sizes = {
        "asset": static.n_assets,
        "side": 2,
        "leverage": len(LEVERAGE_BUCKETS),
        "margin_mode": len(MARGIN_MODES),
    }
    out = {}
    for o in OUTPUTS:
        bins = o.bins(static)
        out[o.name] = heavy_values(bins.kind, (n,) + tuple(sizes[d] for d in o.dims), rng, bins.n - 1, tight)
    out["nonfinite"] = np.zeros(n, np.int32)
    out["jump_truncated"] = np.zeros(n, np.int32)
    return out


def empty_fan(static: Static, n: int) -> dict[str, np.ndarray]:
    """Fan histograms with every path at the starting price and no liquidations."""
    price = np.zeros((static.fan_points, static.n_assets, B.FAN_PRICE.n), np.int64)
    price[..., B.FAN_PRICE.index(0.0)] = n
    liq = np.zeros((static.fan_points, static.n_assets, B.FAN_USD.n), np.int64)
    liq[..., B.FAN_USD.index(0.0)] = n
    return {"price": price, "liquidated": liq}


def accumulate(static: Static, values: dict[str, np.ndarray], chunk: int = ATOM) -> PointAccumulator:
    """A PointAccumulator fed `values` `{name: [n, ...]}` in chunks of `chunk` paths."""
    acc = PointAccumulator(static)
    n = len(values["nonfinite"])
    for start in range(0, n, chunk):
        part = {k: v[start : start + chunk] for k, v in values.items()}
        valid = len(part["nonfinite"])
        acc.add(part, empty_fan(static, valid), valid)
    return acc
