"""Validated configuration: scenario (market, book, exchange, shocks), policy and run settings.

Every model forbids unknown keys, so a typo is an error that names its dotted path. Values are
checked where they are declared (ranges) and across fields (a correlation matrix must be
positive semi-definite and match the assets, a tier table must be increasing, ...). The
validated objects are plain data: `engine.config.build` turns them into JAX pytrees.

Units: prices in USD, notionals in USD, volatilities annualised (fraction per sqrt(year)),
steps are simulation time steps of `run.dt_minutes` minutes.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from engine.config.book_schema import Book, Collateral, Depeg
from engine.config.strict import Finite, Fraction, NonNegFloat, PositiveFloat, Strict

__all__ = ["Book", "Collateral", "Config", "Strict"]


# -------- Exchange rules -----------------------------------------------------------


class Tier(Strict):
    """One maintenance-margin bracket: positions with notional up to `max_notional_usd`."""

    max_notional_usd: PositiveFloat
    max_leverage: Annotated[float, Field(ge=1, le=1000, allow_inf_nan=False)]
    mmr: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


# Binance USD(S)-M BTCUSDT brackets, 2021 snapshot (docs/data.md; they change over time).
BINANCE_BTC_TIERS: tuple[Tier, ...] = tuple(
    Tier(max_notional_usd=n, max_leverage=lev, mmr=m)
    for n, lev, m in [
        (50e3, 125, 0.004),
        (250e3, 100, 0.005),
        (1e6, 50, 0.010),
        (10e6, 20, 0.025),
        (20e6, 10, 0.050),
        (50e6, 5, 0.100),
        (100e6, 4, 0.125),
        (200e6, 3, 0.150),
        (300e6, 2, 0.250),
        (500e6, 1, 0.500),
    ]
)


class Exchange(Strict):
    """Margin rules shared by every asset of the venue."""

    tiers: tuple[Tier, ...] = BINANCE_BTC_TIERS
    # Clearance (liquidation) fee, fraction of notional, paid to the insurance fund;
    # about 0.3-0.5% publicly reported (docs/data.md).
    clearance_fee: Annotated[float, Field(ge=0, lt=0.1, allow_inf_nan=False)] = 0.005

    @field_validator("tiers")
    @classmethod
    def _tiers_increasing(cls, tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
        if not tiers:
            raise ValueError("the tier table is empty: give at least one bracket")
        for i in range(1, len(tiers)):
            lo, hi = tiers[i - 1], tiers[i]
            if not hi.max_notional_usd > lo.max_notional_usd:
                raise ValueError(
                    f"tier {i}: max_notional_usd must increase ({hi.max_notional_usd} after "
                    f"{lo.max_notional_usd})"
                )
            if not hi.mmr >= lo.mmr:
                raise ValueError(f"tier {i}: mmr must not decrease ({hi.mmr} after {lo.mmr})")
            if not hi.max_leverage <= lo.max_leverage:
                raise ValueError(
                    f"tier {i}: max_leverage must not increase ({hi.max_leverage} after {lo.max_leverage})"
                )
        return tiers


# -------- Market -------------------------------------------------------------------


class Asset(Strict):
    """One perpetual market: price process, liquidity and open interest."""

    price: PositiveFloat
    vol_annual: Annotated[float, Field(gt=0, le=20, allow_inf_nan=False)]
    # Volatility at t0 as a multiple of vol_annual (a stressed market starts hot).
    init_vol_mult: Annotated[float, Field(gt=0, le=50, allow_inf_nan=False)] = 1.0
    drift_annual: Finite = 0.0
    jump_mean: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] = 0.0
    jump_std: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0
    # Exposure of this asset to the scenario's headline shock (1 = the shock as stated).
    shock_beta: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 1.0
    impact_law: Literal["sqrt", "linear"] = "sqrt"
    # Square-root law: dx = Y * sigma_daily * sqrt(Q / V_daily).
    impact_y: NonNegFloat = 1.0
    daily_volume_usd: PositiveFloat = 50e9
    # Linear law: dx = Q / depth_usd (USD of flow per unit of log price).
    depth_usd: PositiveFloat = 20e9
    # Depth withdrawal: depth scales as (sigma0 / sigma_t) ** depth_kappa.
    depth_kappa: Annotated[float, Field(ge=0, le=5, allow_inf_nan=False)] = 1.0
    # Share of impact that is permanent; the rest decays with the resilience half-life.
    impact_permanent: Fraction = 0.5
    resilience_halflife_steps: PositiveFloat = 6.0
    open_interest_usd: NonNegFloat = 10e9
    long_share: Fraction = 0.5


class Derisk(Strict):
    """Voluntary closing: holders of isolated positions close a share of them as volatility
    rises and after losses (`docs/model.md`, "Voluntary closing"). Per asset, side s (+1 long,
    -1 short) and step of dt_days = run.dt_minutes / 1440 days, every open isolated cohort of
    the side closes the fraction 1 - exp(-dt_days * hazard) of its units, with

        hazard = vol_rate_per_day * max(0, sigma_t / sigma0 - 1)
               + loss_rate_per_day * max(0, -s * x_mark)

    (sigma_t / sigma0: the step's GARCH volatility over the long-run one; x_mark: the log mark
    relative to the starting price at the start of the step). Units: per day, per unit of
    excess volatility (vol) and per unit of log loss (loss). Both 0 (the default): off, and
    the kernel does no work for it."""

    # Closing rate per day per unit of excess volatility sigma_t / sigma0 - 1 (1/day).
    vol_rate_per_day: Annotated[float, Field(ge=0, le=1e4, allow_inf_nan=False)] = 0.0
    # Closing rate per day per unit of the side's log loss since t0 (1/day per log unit).
    loss_rate_per_day: Annotated[float, Field(ge=0, le=1e4, allow_inf_nan=False)] = 0.0

    @property
    def on(self) -> bool:
        """Whether holders close anything (some rate above 0)."""
        return self.vol_rate_per_day > 0 or self.loss_rate_per_day > 0


class Market(Strict):
    """Joint price dynamics of all assets."""

    assets: dict[str, Asset]
    # Correlation of the diffusive shocks (assets in the order of `assets`); identity if absent.
    correlation: tuple[tuple[Finite, ...], ...] | None = None
    # Student-t degrees of freedom of the shocks (multivariate t, unit variance); 0 = Gaussian.
    tail_dof: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 4.0
    garch_alpha: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.08
    garch_beta: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.90
    # Market-wide jump arrivals per day (compound Poisson; sizes per asset).
    jump_intensity_per_day: NonNegFloat = 0.0
    # Voluntary closing by the holders of isolated positions (off by default).
    derisk: Derisk = Derisk()

    @field_validator("assets")
    @classmethod
    def _some_assets(cls, assets: dict[str, Asset]) -> dict[str, Asset]:
        if not assets:
            raise ValueError("at least one asset is required")
        return assets

    @field_validator("tail_dof")
    @classmethod
    def _dof(cls, v: float) -> float:
        if 0 < v <= 2:
            raise ValueError("tail_dof must be 0 (Gaussian) or greater than 2 (finite variance)")
        return v

    @field_validator("correlation")
    @classmethod
    def _correlation(cls, corr: tuple[tuple[float, ...], ...] | None, info: ValidationInfo):
        assets = info.data.get("assets")
        if corr is None or assets is None:  # bad assets are reported on their own
            return corr
        n = len(assets)
        if len(corr) != n or any(len(row) != n for row in corr):
            rows = ", ".join(str(len(row)) for row in corr) or "none"
            raise ValueError(
                f"must be {n}x{n}: {n} rows of {n} numbers, one per asset in the order of "
                f"market.assets ({', '.join(assets)}); got rows of length {rows}"
            )
        c = np.asarray(corr, dtype=float)
        if not np.allclose(c, c.T, atol=1e-12):
            raise ValueError("must be symmetric")
        if not np.allclose(np.diag(c), 1.0, atol=1e-12) or np.any(np.abs(c) > 1):
            raise ValueError("must have ones on the diagonal and entries in [-1, 1]")
        lowest = float(np.linalg.eigvalsh(c).min())
        if lowest < -1e-10:
            raise ValueError(f"is not positive semi-definite (smallest eigenvalue {lowest:.3g})")
        return corr

    @model_validator(mode="after")
    def _check(self) -> Market:
        if self.garch_alpha + self.garch_beta >= 1:
            raise ValueError(
                f"garch_alpha + garch_beta must be < 1 for a stationary variance "
                f"(got {self.garch_alpha} + {self.garch_beta})"
            )
        return self

    def correlation_matrix(self) -> np.ndarray:
        """Correlation `[assets, assets]`; identity when none is given."""
        n = len(self.assets)
        return np.eye(n) if self.correlation is None else np.asarray(self.correlation, float)


# -------- Scenario: shocks and flows -----------------------------------------------


class Shock(Strict):
    """A scheduled log-price shock, spread evenly over `steps` steps from `start_step`.

    Each asset receives `size * shock_beta[asset]` unless `assets` restricts it.
    """

    size: Annotated[float, Field(ge=-3, le=3, allow_inf_nan=False)]
    start_step: Annotated[int, Field(ge=0)]
    steps: Annotated[int, Field(ge=1)] = 1
    assets: tuple[str, ...] | None = None


class Flow(Strict):
    """Scheduled exogenous flow in USD (positive sells, negative buys), spread over `steps`."""

    usd: Finite
    asset: str
    start_step: Annotated[int, Field(ge=0)]
    steps: Annotated[int, Field(ge=1)] = 1


class Scenario(Strict):
    """The headline shock plus optional extra shocks and flows."""

    # The headline shock, as a log return, spread over `shock_steps` from `shock_start`.
    shock: Annotated[float, Field(ge=-3, le=3, allow_inf_nan=False)] = 0.0
    shock_start: Annotated[int, Field(ge=0)] = 0
    shock_steps: Annotated[int, Field(ge=1)] = 1
    shocks: tuple[Shock, ...] = ()
    flows: tuple[Flow, ...] = ()
    depegs: tuple[Depeg, ...] = ()

    def all_shocks(self) -> tuple[Shock, ...]:
        head = (
            ()
            if self.shock == 0
            else (Shock(size=self.shock, start_step=self.shock_start, steps=self.shock_steps),)
        )
        return head + self.shocks


# -------- Policy -------------------------------------------------------------------


class Breaker(Strict):
    """Circuit breaker. `halt`: a move beyond `threshold` (log) against the mark of `window`
    steps ago halts trading for `duration` steps; liquidations queue while the underlying keeps
    moving. `band`: the mark moves at most `band` (log) per step; the rest carries over."""

    kind: Literal["none", "halt", "band"] = "none"
    threshold: Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)] = 0.05
    window: Annotated[int, Field(ge=1, le=1024)] = 12
    duration: Annotated[int, Field(ge=1, le=100_000)] = 3
    band: Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)] = 0.02


class Policy(Strict):
    """Exchange rules under test. Every field can be a sweep axis."""

    # Maximum leverage; cohorts above it are brought to it at t0.
    leverage_cap: Annotated[float, Field(ge=1, le=1000, allow_inf_nan=False)] = 125.0
    leverage_cap_mode: Literal["reduce_size", "add_margin"] = "reduce_size"
    breaker: Breaker = Breaker()
    # One venue's shared BTC/ETH/BNB fund was about $1.23 B before 10 Oct 2025 (docs/data.md).
    insurance_fund_usd: NonNegFloat = 1.23e9
    backstop_capacity_usd: NonNegFloat = 0.0
    # Price concession the backstop vault takes on what it absorbs (fraction of the mark).
    backstop_discount: Annotated[float, Field(ge=0, lt=0.5, allow_inf_nan=False)] = 0.01
    adl_rule: Literal["queue", "pro_rata", "off"] = "queue"
    # Fraction of a cohort closed per liquidation event (1 = full liquidation).
    partial_liquidation: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    # Maintenance margin multiplier: mmr * (1 + dynamic_margin * max(0, sigma/sigma0 - 1)).
    dynamic_margin: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.0


# -------- Run settings and the whole scenario --------------------------------------


class RunSettings(Strict):
    """Size and numerics of a simulation."""

    n_paths: Annotated[int, Field(ge=1, le=10**10)] = 10_000
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    steps: Annotated[int, Field(ge=1, le=10**7)] = 288
    dt_minutes: Annotated[float, Field(gt=0, le=10_080, allow_inf_nan=False)] = 5.0
    cascade_rounds: Annotated[int, Field(ge=1, le=256)] = 8
    # Longest breaker window the compiled kernel supports (the ring buffer of marks).
    max_window: Annotated[int, Field(ge=2, le=4096)] = 64
    # Paths per compiled call; 0 chooses it from memory_budget_mb.
    chunk_size: Annotated[int, Field(ge=0)] = 0
    memory_budget_mb: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 2048.0
    # Number of time points kept for fan charts (per-step quantile bands).
    fan_points: Annotated[int, Field(ge=1, le=100_000)] = 96
    dtype: Literal["float32", "float64"] = "float32"
    # The cascade's kernel form: "auto" (the ladder where the book and policy allow it and the
    # run is large, `engine.config.forms`), or "dense" / "ladder" to force one ("ladder" is
    # refused, naming the feature, where the book or policy needs the dense kernel).
    kernel: Literal["auto", "dense", "ladder"] = "auto"
    # Paths (the first ones) rerun with every random draw nudged by a rounding-sized amount to
    # measure the share of tipping paths (`engine.sim.tipping`); 0 turns the probe off.
    tipping_paths: Annotated[int, Field(ge=0, le=10**7)] = 256


# Longest config name: run directories are `<16-character timestamp>_<name>` (with `_<k>` when
# taken, `calibrate_`/`optimise_` before the name for fits) and file names have 255 bytes.
# A run directory is <16-char timestamp>_<name>[_k], built under a hidden sibling
# .<that>.<32-hex uuid>.new: 180 bytes of name keep both within the 255 bytes of a file name.
MAX_NAME = 180


class Config(Strict):
    """A complete simulation: what to simulate, under which policy, at what size."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")] = "scenario"
    description: str = ""
    run: RunSettings = RunSettings()
    market: Market
    book: Book = Book()
    exchange: Exchange = Exchange()
    scenario: Scenario = Scenario()
    policy: Policy = Policy()
    # Collateral assets cross-margin accounts may hold, by name (`USD` is cash and needs none).
    collateral: dict[str, Collateral] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        names = list(self.market.assets)
        for i, s in enumerate(self.scenario.shocks):
            for a in s.assets or ():
                if a not in names:
                    raise ValueError(f"scenario.shocks.{i}.assets: unknown asset {a!r}; assets are {names}")
        for i, f in enumerate(self.scenario.flows):
            if f.asset not in names:
                raise ValueError(f"scenario.flows.{i}.asset: unknown asset {f.asset!r}; assets are {names}")
        self._check_book_refs(names)
        n = self.run.steps
        for where, start, steps in self._schedule():
            if start + steps > n:
                allowed = f"0 to {n - steps}" if steps <= n else f"none: its {steps} steps exceed run.steps"
                raise ValueError(
                    f"{where} = {start}: it covers steps {start} to {start + steps - 1}, past the last "
                    f"step {n - 1} (run.steps = {n}); allowed start steps for its {steps} step(s): {allowed}"
                )
        if self.policy.breaker.window >= self.run.max_window:
            raise ValueError(
                f"policy.breaker.window ({self.policy.breaker.window}) must be below "
                f"run.max_window ({self.run.max_window})"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name_fits_a_file_name(cls, name: str) -> str:
        if len(name.encode()) > MAX_NAME:
            raise ValueError(
                f"at most {MAX_NAME} bytes (got {len(name.encode())}): run directories are named "
                "<timestamp>_<name>, and file names are limited to 255 bytes"
            )
        return name

    def _check_book_refs(self, names: list[str]) -> None:
        """Stops, collateral and depegs name assets and collateral that exist."""
        for i, o in enumerate(self.book.stops):
            if o.asset not in names:
                raise ValueError(f"book.stops.{i}.asset: unknown asset {o.asset!r}; assets are {names}")
        held = list(self.collateral)
        if "USD" in held:
            raise ValueError("collateral: 'USD' is cash (a price of 1, no haircut) and needs no entry")
        for name, c in self.collateral.items():
            if c.tracks is not None and c.tracks not in names:
                raise ValueError(f"collateral.{name}.tracks: unknown asset {c.tracks!r}; assets are {names}")
        for i, d in enumerate(self.scenario.depegs):
            if d.collateral not in held:
                raise ValueError(
                    f"scenario.depegs.{i}.collateral: unknown collateral {d.collateral!r}; collateral is {held}"
                )

    def _schedule(self) -> list[tuple[str, int, int]]:
        """(field, first step, steps) of every scheduled shock and flow."""
        sc = self.scenario
        out = [("scenario.shock_start", sc.shock_start, sc.shock_steps)] if sc.shock != 0 else []
        out += [(f"scenario.shocks.{i}.start_step", s.start_step, s.steps) for i, s in enumerate(sc.shocks)]
        out += [(f"scenario.flows.{i}.start_step", f.start_step, f.steps) for i, f in enumerate(sc.flows)]
        out += [(f"scenario.depegs.{i}.start_step", d.start_step, d.steps) for i, d in enumerate(sc.depegs)]
        return out

    @property
    def asset_names(self) -> list[str]:
        return list(self.market.assets)

    @property
    def steps_per_year(self) -> float:
        return 365.0 * 24.0 * 60.0 / self.run.dt_minutes

    @property
    def steps_per_day(self) -> float:
        return 24.0 * 60.0 / self.run.dt_minutes
