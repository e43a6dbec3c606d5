"""A joint calibration's config (`JointConfig`) and what it makes of each event: its scenario
(`event_config`: the template with the event's assets, prices and open interest), its
coverage and its targets (`event_targets`: the reported outcomes the simulation is held
against). The fit itself is `engine.fit.joint`; each event's differentiable problem is
`engine.fit.event_problem`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import Field, model_validator

from engine.config.errors import ConfigError
from engine.config.events import Event, library, load_event
from engine.config.schema import Config
from engine.config.strict import Strict
from engine.fit import book_map
from engine.fit.book_map import BookMap
from engine.fit.calibrate import CalibrationSettings, FreeParam
from engine.fit.common import load_fit_config, sized

MARKET_FIELDS = ("impact_y", "depth_kappa", "resilience_halflife_steps")
# Voluntary closing rates (`market.derisk.<field>`, shared by all assets), by their name in
# `engine.model.params.MarketParams`.
DERISK_FIELDS = {"vol_rate_per_day": "derisk_vol", "loss_rate_per_day": "derisk_loss"}
TARGET_KINDS = ("liquidations", "long_share", "by_asset", "fall", "open_interest")
LOG_KINDS = ("liquidations", "by_asset")


class ShockBounds(Strict):
    """Bounds and start of every event's headline shock (log return, `scenario.shock`)."""

    lower: float = Field(default=-0.5, ge=-2, lt=0)
    upper: float = Field(default=-0.001, lt=0)
    init: float = Field(default=-0.05, lt=0)

    @model_validator(mode="after")
    def _order(self) -> ShockBounds:
        if not self.lower < self.init < self.upper:
            raise ValueError(f"need lower < init < upper (got {self.lower}, {self.init}, {self.upper})")
        return self


class Tolerances(Strict):
    """Each target's tolerance in the fit, and the goal a held-out prediction must meet
    (`engine.fit.backtest`): liquidations within a factor, the long share within a difference,
    per-asset liquidations within a factor, each asset's fall and the open-interest decline
    within a difference (fractions)."""

    liquidations_factor: float = Field(default=1.5, gt=1, le=100)
    long_share: float = Field(default=0.1, gt=0, le=1)
    by_asset_factor: float = Field(default=2.0, gt=1, le=100)
    fall: float = Field(default=0.03, gt=0, le=1)
    open_interest: float = Field(default=0.15, gt=0, le=1)


class Weights(Strict):
    """Weight of each kind of target in the loss (0 leaves it out)."""

    liquidations: float = Field(default=1.0, ge=0)
    long_share: float = Field(default=1.0, ge=0)
    by_asset: float = Field(default=0.5, ge=0)
    fall: float = Field(default=1.0, ge=0)
    open_interest: float = Field(default=0.25, ge=0)


class BacktestSettings(Strict):
    """`liqstress backtest`: exact-kernel paths per held-out prediction (and per step of the
    held-out shock's search), their seed (fresh: not one of the fit's), the seeds of each
    fold's fit, the band (central probability) reported around the median."""

    n_paths: Annotated[int, Field(ge=8, le=1_000_000)] = 512
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 7
    # Seeds of each fold's joint fit (default: `calibration.seeds`).
    seeds: tuple[Annotated[int, Field(ge=0, lt=2**63)], ...] | None = Field(default=None, min_length=1)
    band: Annotated[float, Field(gt=0, lt=1)] = 0.9


class JointConfig(Strict):
    """A joint calibration: the template `scenario`, the `events` (names in the library or
    event files relative to this one), the shared free `[[params]]` (`market.<field>`,
    `market.assets.<ASSET>.<field>` with field in MARKET_FIELDS, `market.derisk.<field>` with
    field in DERISK_FIELDS, or `book_map.<field>`), the
    per-event `[shock]`, the map's fixed values `[book_map]`, `[tolerances]`, `[weights]`, and
    the `[backtest]` settings."""

    kind: Literal["joint_calibration"]
    scenario: Config
    events: tuple[str, ...] = Field(min_length=2)
    calibration: CalibrationSettings = CalibrationSettings()
    params: tuple[FreeParam, ...]
    shock: ShockBounds = ShockBounds()
    book_map: BookMap = BookMap()
    tolerances: Tolerances = Tolerances()
    weights: Weights = Weights()
    backtest: BacktestSettings = BacktestSettings()

    @model_validator(mode="after")
    def _check(self) -> JointConfig:
        if not self.params:
            raise ValueError("params: give at least one free parameter")
        for i, p in enumerate(self.params):
            param_slot(p.path, list(self.scenario.market.assets), f"params.{i}.path")
        if len(set(self.events)) != len(self.events):
            raise ValueError("events: an event is named twice")
        book = self.scenario.book
        if book.positions or book.liquidation_map:
            raise ValueError(
                "scenario.book: the joint calibration builds the book from each event; allowed: the parametric book"
            )
        if book.entry_log_mean != 0.0:
            raise ValueError(
                f"scenario.book.entry_log_mean: must be 0 (the book map places the entries; got {book.entry_log_mean})"
            )
        if self.scenario.policy.partial_liquidation != 1.0:
            raise ValueError(
                "scenario.policy.partial_liquidation must be 1 (the relaxed kernel liquidates fully)"
            )
        return self


def param_slot(path: str, assets: list[str], where: str) -> tuple[str, str, str | None]:
    """(group, field, asset or None) of a free parameter's path; ValueError if unknown."""
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == "book_map" and parts[1] in book_map.FIELDS:
        return "book_map", parts[1], None
    if len(parts) == 2 and parts[0] == "market" and parts[1] in MARKET_FIELDS:
        return "market", parts[1], None
    if len(parts) == 3 and parts[:2] == ["market", "derisk"] and parts[2] in DERISK_FIELDS:
        return "market", f"derisk.{parts[2]}", None
    if len(parts) == 4 and parts[:2] == ["market", "assets"] and parts[3] in MARKET_FIELDS:
        if parts[2] not in assets:
            raise ValueError(f"{where}: unknown asset {parts[2]!r}; the template's assets are {assets}")
        return "market", parts[3], parts[2]
    allowed = (
        [f"book_map.{f}" for f in book_map.FIELDS]
        + [f"market[.assets.<ASSET>].{f}" for f in MARKET_FIELDS]
        + [f"market.derisk.{f}" for f in DERISK_FIELDS]
    )
    raise ValueError(f"{where}: unknown free parameter {path!r}; allowed: {allowed}")


def load_joint(path: str | Path) -> tuple[JointConfig, dict[str, Event]]:
    """A validated joint calibration and its events by name (library events by their name,
    files by their stem); ConfigError naming the file and the field if not."""
    jc, p = load_fit_config(path, JointConfig)
    shipped = None
    events = {}
    for name in jc.events:
        f = p.parent / name
        if name.endswith(".toml") or f.is_file():
            events[Path(name).stem] = load_event(f)
            continue
        shipped = shipped if shipped is not None else library()
        if name not in shipped:
            raise ConfigError(
                f"{p}: events: unknown event {name!r}; the library has {list(shipped)} (or give a file)"
            )
        events[name] = shipped[name]
    for name, ev in events.items():
        # every event must make a scenario the relaxed kernel runs, at the fit's size
        sized(event_config(jc.scenario, ev, name), jc.calibration.n_paths, jc.calibration.steps)
    return jc, events


# ----------------------------------------------------------------------------------------
# One event's scenario and targets
# ----------------------------------------------------------------------------------------


def simulated_assets(event: Event) -> list[str]:
    """The event's assets with a price and an open interest: those the simulation holds."""
    return [
        a
        for a, x in event.pre_event.assets.items()
        if x.price is not None and x.open_interest_usd is not None
    ]


def event_config(template: Config, event: Event, name: str) -> Config:
    """The template scenario with the event's assets, prices and open interest. An asset's
    daily volume is the event's figure, else the template's scaled by the ratio of open
    interests (the same turnover). Correlations are the template's for those assets."""
    assets = simulated_assets(event)
    if not assets:
        raise ConfigError(
            f"event {name}: pre_event.assets: no asset has both a price and an open_interest_usd"
        )
    known = list(template.market.assets)
    for a in assets:
        if a not in known:
            raise ConfigError(
                f"event {name}: pre_event.assets.{a}: not an asset of the template; allowed: {known}"
            )
    data = template.model_dump(mode="json")
    out = {}
    for a in assets:
        t, pre = data["market"]["assets"][a], event.pre_event.assets[a]
        oi = pre.open_interest_usd.central
        volume = (
            pre.daily_volume_usd.central
            if pre.daily_volume_usd is not None
            else t["daily_volume_usd"] * oi / max(t["open_interest_usd"], 1.0)
        )
        out[a] = {**t, "price": pre.price.central, "open_interest_usd": oi, "daily_volume_usd": volume}
    data["market"]["assets"] = out
    corr = template.market.correlation
    if corr is not None:
        idx = [known.index(a) for a in assets]
        data["market"]["correlation"] = [[corr[i][j] for j in idx] for i in idx]
    data["name"], data["description"] = name, event.description
    try:
        return Config.model_validate(data)
    except ValueError as e:
        raise ConfigError(
            f"event {name}: the template with its figures is not a valid scenario: {e}"
        ) from None


def coverage(event: Event) -> float:
    """Aggregate open interest over the simulated assets' (at least 1; 1 without a figure)."""
    agg = event.pre_event.aggregate_open_interest_usd
    modelled = sum(event.pre_event.assets[a].open_interest_usd.central for a in simulated_assets(event))
    return max(1.0, agg.central / modelled) if agg is not None and modelled > 0 else 1.0


class Target(NamedTuple):
    """One reported outcome of an event: `kind` in TARGET_KINDS, the asset's index for
    `by_asset` and `fall`, the reported range (low = high for a value) and its central value."""

    kind: str
    asset: int | None
    label: str
    value: float
    low: float
    high: float


def event_targets(event: Event, assets: list[str]) -> list[Target]:
    """The event's reported outcomes that the simulation can be held against."""
    o = event.outcomes

    def target(kind, asset, label, fig, sign=1.0):
        lo, hi = (fig.low, fig.high) if fig.low is not None else (fig.value, fig.value)
        lo, hi = sorted((sign * lo, sign * hi))
        return Target(kind, asset, label, sign * fig.central, lo, hi)

    out = [target("liquidations", None, "liquidations_usd", o.liquidations_usd)]
    if o.long_share is not None:
        out.append(target("long_share", None, "long_share", o.long_share))
    for a, fig in o.by_asset_usd.items():
        if a in assets:
            out.append(target("by_asset", assets.index(a), f"liquidations_usd.{a}", fig))
    for a, move in event.price_path.items():
        if a not in assets:
            continue
        if move.fall is not None:
            out.append(target("fall", assets.index(a), f"fall.{a}", move.fall))
        elif move.peak is not None and move.trough is not None:
            fall = 1.0 - move.trough.central / move.peak.central
            out.append(Target("fall", assets.index(a), f"fall.{a}", fall, fall, fall))
    if o.open_interest_change is not None:
        out.append(target("open_interest", None, "open_interest_decline", o.open_interest_change, -1.0))
    return out
