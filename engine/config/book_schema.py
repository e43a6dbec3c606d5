"""The book's configuration: the parametric book, or a positions file or liquidation map, its
resting stop orders, and the collateral assets that cross-margin accounts hold.

Units: prices and notionals in USD, steps of `run.dt_minutes` minutes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from engine.config.strict import NonNegFloat, PositiveFloat, Strict


class StopOrder(Strict):
    """Resting stop-market orders of one asset, side and trigger price: traders outside the
    book (spot holders, other venues) whose stop-losses turn into market orders when the
    mark crosses `price`. A `long` stop protects a long holding and sells when the mark falls
    to `price`; a `short` stop buys when it rises to it."""

    asset: str
    side: Literal["long", "short"]
    price: PositiveFloat
    notional_usd: PositiveFloat


class Collateral(Strict):
    """A collateral asset that cross-margin accounts may hold (`engine.model.collateral`).

    Its price is `price * (1 - gap)`, times the mark of the perp it `tracks` relative to that
    perp's starting price (a liquid-staking token tracks its coin). The depeg gap (fraction below
    par) jumps to at least `depeg_size` at random depegs (`depeg_per_day` of them on average),
    is held at least at a scheduled depeg's gap (`scenario.depegs`), and otherwise recovers
    with a half-life of `recovery_halflife_steps`. Margin counts the value less `haircut`.
    """

    price: PositiveFloat = 1.0
    haircut: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.0
    tracks: str | None = None
    depeg_per_day: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.0
    depeg_size: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.1
    recovery_halflife_steps: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 12.0


class Depeg(Strict):
    """A scheduled depeg: collateral `collateral` trades `gap` below par (0.35: $1 -> $0.65) from
    `start_step` for `steps` steps, then recovers with its half-life."""

    collateral: str
    gap: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
    start_step: Annotated[int, Field(ge=0)]
    steps: Annotated[int, Field(ge=1)] = 1


class Book(Strict):
    """How open interest splits into cohorts: leverage x entry price x position size x side,
    `2 * len(leverage) * entry_points * len(position_sizes_usd)` per asset (or `positions`)."""

    leverage: tuple[Annotated[float, Field(ge=1, le=1000, allow_inf_nan=False)], ...] = (
        2,
        3,
        5,
        10,
        20,
        25,
        50,
        75,
        100,
        125,
    )
    # Share of open interest at each leverage level (normalised); need not sum to one.
    leverage_weights: tuple[NonNegFloat, ...] = (4, 5, 10, 18, 20, 12, 16, 6, 6, 3)
    # Entry prices: log(entry / price) ~ Normal(entry_log_mean, entry_log_std), taken at
    # `entry_points` equal-probability quantiles.
    entry_log_mean: Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False)] = 0.0
    entry_log_std: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] = 0.03
    entry_points: Annotated[int, Field(ge=1, le=256)] = 5
    # Surviving positions thin out towards their liquidation price, as the density of a
    # diffusion does near an absorbing barrier: a cohort's weight is scaled by
    # min(1, distance / barrier_ramp), distance = |log(price / liquidation price)|.
    barrier_ramp: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.05
    # Representative position sizes (USD notional): they decide each cohort's tier.
    position_sizes_usd: tuple[PositiveFloat, ...] = (5e3, 100e3, 800e3, 5e6)
    size_weights: tuple[NonNegFloat, ...] = (30, 30, 25, 15)
    # Positions file (CSV/Parquet, `engine.config.positions`, relative to the config file) that
    # replaces the fields above and the assets' open interest and long share; `entry_bin`:
    # log-width of its entry buckets (0: exact groups), `engine.config.book_file`.
    positions: str | None = None
    entry_bin: Annotated[float, Field(ge=0, le=0.1, allow_inf_nan=False)] = 0.001
    # Share of the positions file's notional (at the starting prices) allowed to start at or
    # beyond its liquidation price (cross accounts: equity at or below maintenance), which the
    # first step liquidates before any market move: above it the file is refused, at or below
    # it a warning names the rows (`engine.config.book_checks`). Raise it for a stale snapshot.
    max_underwater_share: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.01
    # Cross-margin accounts of the positions file are summed into account cohorts by their legs,
    # collateral and account leverage in buckets `account_bin` wide in log leverage (0: one
    # cohort per account), `engine.config.accounts`.
    account_bin: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.05
    # A liquidation-level map (CSV/Parquet: asset, side, price, notional_usd), the form of public
    # liquidation heatmaps, instead of `positions` (`engine.config.liquidation_map`); its
    # cohorts hold `map_leverage` x leverage at tier 0.
    liquidation_map: str | None = None
    map_leverage: Annotated[float, Field(ge=1, le=1000, allow_inf_nan=False)] = 20.0
    # Resting stop-market orders beside the positions (`StopOrder`).
    stops: tuple[StopOrder, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Book:
        if len(self.leverage) == 0:
            raise ValueError("leverage needs at least one level")
        if len(self.leverage_weights) != len(self.leverage):
            raise ValueError(
                f"leverage_weights has {len(self.leverage_weights)} entries for "
                f"{len(self.leverage)} leverage levels"
            )
        if len(self.size_weights) != len(self.position_sizes_usd) or not self.size_weights:
            raise ValueError(
                f"size_weights has {len(self.size_weights)} entries for "
                f"{len(self.position_sizes_usd)} position sizes"
            )
        if sum(self.leverage_weights) <= 0 or sum(self.size_weights) <= 0:
            raise ValueError("leverage_weights and size_weights must not all be zero")
        if self.positions and self.liquidation_map:
            raise ValueError("give either positions or liquidation_map, not both")
        return self

    @property
    def cohorts_per_asset(self) -> int:
        return 2 * len(self.leverage) * self.entry_points * len(self.position_sizes_usd)
