"""The policies of result cubes: one grid point of one run each, with its key figures and its
differences against the reference.

Within one run every point saw the same paths (common random numbers), and the cube's
`<name>_diff_mean` / `<name>_diff_se` are the paired differences against the run's baseline
point: their 95% intervals are `mean ± 1.96 se` and far narrower than the spread of either
point. Points of *other* runs are compared with the first run's baseline by the difference of
their means with the unpaired standard error `sqrt(se_a² + se_b²)` (conservative when the runs
share seed and paths; correct otherwise): the per-path outputs needed for a paired error are
not kept.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass

import xarray as xr

from engine.report.summary import estimate, mc_error

Z95 = 1.959963984540054
LOSSES = (
    ("liquidated_total", "Liquidated notional"),
    ("bad_debt", "Bad debt"),
    ("insurance_fund_draw", "Insurance-fund draw"),
    ("trader_loss", "Trader losses"),
)
DIFFS = ("liquidated_total", "bad_debt", "insurance_fund_draw", "trader_loss", "max_drawdown")
FUND_PATH = "policy.insurance_fund_usd"


@dataclass(frozen=True)
class PolicyResult:
    """One grid point of one run: its statistics (no sweep dims) and how to compare it."""

    label: str
    ds: xr.Dataset
    run: str
    baseline: bool  # the reference of the comparison
    paired: bool  # its differences to the reference are paired (same run)
    fund_usd: float = math.nan  # the insurance fund at t0 (USD)


def value_text(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    return f"{v:g}" if isinstance(v, float) else str(v)


def cube_config(cube: xr.Dataset) -> dict:
    """The run's resolved config (the cube's `config` attribute), or {} for a cube without one."""
    return tomllib.loads(str(cube.attrs.get("config", "")))


def policies(cubes: list[tuple[str, xr.Dataset]]) -> list[PolicyResult]:
    """The policies of one or more cubes, the first cube's baseline marked as the reference."""
    out = []
    for k, (run, cube) in enumerate(cubes):
        dims = [d for d in str(cube.attrs.get("sweep_dims", "")).split() if d in cube.dims]
        prefix = f"{run}: " if len(cubes) > 1 else ""
        base = int(cube.attrs.get("baseline_point", 0))
        fund = float(cube_config(cube).get("policy", {}).get("insurance_fund_usd", math.nan))
        fund_dim = next((d for d in dims if cube[d].attrs.get("sweep_path") == FUND_PATH), None)
        if not dims:
            name = str(cube.attrs.get("title", run)).removeprefix("liqstress loss distributions: ")
            out.append(PolicyResult(run if len(cubes) > 1 else name, cube, run, k == 0, k == 0, fund))
            continue
        stacked = cube.stack(point=dims)
        for i in range(stacked.sizes["point"]):
            p = stacked.isel(point=i)
            label = ", ".join(f"{d}={value_text(p[d].values)}" for d in dims)
            fund_here = float(p[fund_dim]) if fund_dim else fund
            p = p.drop_vars(["point", *dims])
            out.append(PolicyResult(prefix + label, p, run, k == 0 and i == base, k == 0, fund_here))
    return out


def lead(da: xr.DataArray) -> xr.DataArray:
    return da.isel(asset=0) if "asset" in da.dims else da


def metrics(p: PolicyResult) -> dict[str, float]:
    """The key figures of a policy (USD, drawdown as a fraction of the lead asset's price);
    NaN for a quantile or ES99 with too few paths to estimate it."""
    ds = p.ds
    q = lambda name, level: float(lead(estimate(ds, name, level)))
    return {
        "liq_median": q("liquidated_total", 0.5),
        "liq_q99": q("liquidated_total", 0.99),
        "liq_es99": q("liquidated_total", None),
        "bad_debt_mean": float(ds["bad_debt_mean"]),
        "p_bad_debt": float(ds["p_bad_debt"]),
        "fund_mean": float(ds["insurance_fund_draw_mean"]),
        "fund_q99": q("insurance_fund_draw", 0.99),
        "dd_median": q("max_drawdown", 0.5),
        "dd_q99": q("max_drawdown", 0.99),
    }


def difference(p: PolicyResult, ref: PolicyResult, name: str) -> tuple[float, float, bool]:
    """Mean difference of `name` against the reference, its standard error (NaN where a run
    has too few paths for one, `engine.report.summary.mc_error`), and whether paired."""
    err = lambda r, key: mc_error(int(r.ds.attrs["n_paths"]), float(lead(r.ds[key])))
    if p.paired:
        return float(lead(p.ds[f"{name}_diff_mean"])), err(p, f"{name}_diff_se"), True
    d = float(lead(p.ds[f"{name}_mean"])) - float(lead(ref.ds[f"{name}_mean"]))
    return d, math.hypot(err(p, f"{name}_mc_se"), err(ref, f"{name}_mc_se")), False


def lead_asset(cube: xr.Dataset) -> str:
    return str(cube.asset.values[0])
