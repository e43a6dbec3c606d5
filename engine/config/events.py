"""The event library: past liquidation cascades as data (`engine/events/*.toml`, one file each).

An event holds what was public before it (prices, open interest, positioning), what the market
did (peak, trough, how long the fall took) and what was reported afterwards (liquidations in
total, per side and per asset, insurance-fund draws, ADL, the change in open interest, traders
liquidated). Every figure is a `Figure`: a value, or a range where sources disagree, with the
source and the date of the report it comes from. An event file is validated like a config
file: a mistake gives one `ConfigError` naming the file and the field (exit 2 on the command
line). Beyond each figure's range a file must be plausible: fractions written as fractions (a
percentage is refused with the fraction to write), a trough below the peak, no date after
today, per-asset figures within their total, no blank source (docs/events.md).

```toml
date = "2021-05-19"
description = "China ban headlines and a long squeeze"

[pre_event.assets.BTC]
price = { value = 42900, units = "USD", source = "...", source_date = "2021-05-19" }

[outcomes]
liquidations_usd = { low = 8.0e9, high = 8.6e9, units = "USD", source = "...", source_date = "2021-05-19" }
```
"""

from __future__ import annotations

import datetime as dt
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints, ValidationError, field_validator, model_validator

from engine.config.errors import ConfigError, describe
from engine.config.strict import Strict

# a source or a description of blanks says nothing
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
INF = float("inf")
# Figures that are fractions (0.2 = 20%): a value outside their bounds whose hundredth lies
# inside is a percentage written as a number, and the message says how to write it.
FRACTIONS = frozenset(
    {"funding_8h", "open_interest_growth", "price_return", "fall", "long_share", "open_interest_change"}
)


def not_future(day: dt.date) -> dt.date:
    """`day`, or a ValueError if it is after today (UTC): the library holds reports of the past."""
    today = dt.datetime.now(dt.UTC).date()
    if day > today:
        raise ValueError(f"in the future; allowed: a date up to today ({today} UTC)")
    return day


class Figure(Strict):
    """One reported figure: `value`, or `low` and `high` where sources disagree (the value, if
    given too, must lie between them); its units, its source and the date of that report."""

    value: float | None = None
    low: float | None = None
    high: float | None = None
    units: Text
    source: Text
    source_date: dt.date
    note: str = ""

    @model_validator(mode="after")
    def _value_or_range(self) -> Figure:
        if (self.low is None) != (self.high is None):
            raise ValueError("give both low and high, or neither")
        if self.value is None and self.low is None:
            raise ValueError("give a value, or a low and a high")
        if self.low is not None and not self.low <= self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        if self.value is not None and self.low is not None and not self.low <= self.value <= self.high:
            raise ValueError(f"value {self.value:g} lies outside [{self.low:g}, {self.high:g}]")
        return self

    _reported = field_validator("source_date")(not_future)

    @property
    def central(self) -> float:
        """The value, or the middle of the range."""
        return self.value if self.value is not None else 0.5 * (self.low + self.high)

    @property
    def ends(self) -> tuple[float, float]:
        """The lowest and highest number the figure admits: its range, or its value twice."""
        return (self.value, self.value) if self.low is None else (self.low, self.high)


def check_range(owner: Strict, bounds: dict[str, tuple[float, float]], figures: dict | None = None) -> None:
    """ValueError naming the first figure of `owner` (or of `figures` {name: Figure}) whose
    value or range leaves its open interval (lower, upper) of `bounds` {name: (lower, upper)};
    for a figure of `FRACTIONS` written as a percentage, the message gives the fraction."""
    for name, (lo, hi) in bounds.items():
        fig = figures[name] if figures is not None else getattr(owner, name)
        if fig is None:
            continue
        for x in (fig.value, fig.low, fig.high):
            if x is not None and not lo < x < hi:
                hint = ""
                if name in FRACTIONS and lo < x / 100 < hi:
                    hint = f"; a fraction: write {x / 100:g} for {x:g}%"
                raise ValueError(f"{name}: {x:g} outside ({lo:g}, {hi:g}){hint}")


class PreAsset(Strict):
    """One asset before the event: price, open interest and public positioning.

    `long_short_ratio`: accounts long over accounts short (1.5 = 60% of accounts long);
    `funding_8h`: the perpetual funding rate per 8 hours (0.0001 = 0.01%);
    `open_interest_growth` and `price_return`: the change of open interest and of the price
    over the `lookback_days` before the event, as fractions (0.2 = +20%; at most +300%);
    `daily_volume_usd`: perpetual trading volume in a normal day before the event.
    """

    price: Figure | None = None
    open_interest_usd: Figure | None = None
    long_short_ratio: Figure | None = None
    funding_8h: Figure | None = None
    open_interest_growth: Figure | None = None
    price_return: Figure | None = None
    daily_volume_usd: Figure | None = None

    @model_validator(mode="after")
    def _ranges(self) -> PreAsset:
        check_range(
            self,
            {
                "price": (0, INF),
                "open_interest_usd": (0, INF),
                "long_short_ratio": (0, INF),
                # a fraction per 8 h: 1% (0.01) is far above any recorded rate, so a larger
                # figure is a percentage written as a number
                "funding_8h": (-0.01, 0.01),
                # over a lookback of about a month no major's open interest or price has
                # quadrupled: a larger figure is a percentage (20 meant as 20%)
                "open_interest_growth": (-1, 3),
                "price_return": (-1, 3),
                "daily_volume_usd": (0, INF),
            },
        )
        return self


class PreEvent(Strict):
    """What was public before the event."""

    assets: dict[str, PreAsset]
    lookback_days: Annotated[float, Field(gt=0, le=365)] = 30.0
    aggregate_open_interest_usd: Figure | None = None
    estimated_leverage_ratio: Figure | None = None

    @model_validator(mode="after")
    def _parts_within_total(self) -> PreEvent:
        parts = {f"assets.{a}.open_interest_usd": p.open_interest_usd for a, p in self.assets.items()}
        within_total(parts, "aggregate_open_interest_usd", self.aggregate_open_interest_usd)
        return self


def within_total(parts: dict[str, Figure | None], total_name: str, total: Figure | None) -> None:
    """ValueError if the figures `parts` {name: Figure} (the per-asset share of a total) add up
    to more than the `total` admits even where sources disagree: the sum of their low ends
    above the total's high end."""
    given = {name: fig for name, fig in parts.items() if fig is not None}
    if total is None or not given:
        return
    least, most = sum(fig.ends[0] for fig in given.values()), total.ends[1]
    if least > most:
        raise ValueError(
            f"{', '.join(given)}: add up to at least {least:,.0f} {total.units}, above {total_name} "
            f"(at most {most:,.0f} {total.units}); allowed: parts that fit in the total"
        )


class Move(Strict):
    """What one asset's price did: peak and trough (USD), the fall as a fraction, its duration."""

    peak: Figure | None = None
    trough: Figure | None = None
    fall: Figure | None = None
    fall_hours: Figure | None = None

    @model_validator(mode="after")
    def _ranges(self) -> Move:
        check_range(self, {"peak": (0, INF), "trough": (0, INF), "fall": (0, 1), "fall_hours": (0, INF)})
        if self.peak is not None and self.trough is not None and not self.trough.ends[1] < self.peak.ends[0]:
            raise ValueError(
                f"trough: {self.trough.ends[1]:g} not below the peak ({self.peak.ends[0]:g}); "
                "allowed: every trough figure below every peak figure"
            )
        return self


class Outcomes(Strict):
    """What was reported afterwards (over `horizon_hours` of the event)."""

    liquidations_usd: Figure
    long_share: Figure | None = None
    by_asset_usd: dict[str, Figure] = Field(default_factory=dict)
    insurance_fund_draw_usd: Figure | None = None
    adl_usd: Figure | None = None
    open_interest_change: Figure | None = None
    traders_liquidated: Figure | None = None

    @model_validator(mode="after")
    def _ranges(self) -> Outcomes:
        check_range(
            self,
            {
                "liquidations_usd": (0, INF),
                "long_share": (-1e-12, 1 + 1e-12),
                "insurance_fund_draw_usd": (-1e-12, INF),
                "adl_usd": (-1e-12, INF),
                # over the horizon (a day or so) open interest has never doubled: a larger
                # figure is a percentage
                "open_interest_change": (-1, 1),
                "traders_liquidated": (-1e-12, INF),
            },
        )
        per_asset = {f"by_asset_usd.{a}": fig for a, fig in self.by_asset_usd.items()}
        check_range(self, dict.fromkeys(per_asset, (0, INF)), per_asset)
        within_total(per_asset, "liquidations_usd", self.liquidations_usd)
        return self


class Event(Strict):
    """One past event (see the module docstring)."""

    date: dt.date
    description: Text
    horizon_hours: Annotated[float, Field(gt=0, le=24 * 31)] = 24.0
    pre_event: PreEvent
    price_path: dict[str, Move]
    outcomes: Outcomes

    _happened = field_validator("date")(not_future)

    @model_validator(mode="after")
    def _assets_known(self) -> Event:
        known = list(self.pre_event.assets)
        for where, names in (
            ("price_path", self.price_path),
            ("outcomes.by_asset_usd", self.outcomes.by_asset_usd),
        ):
            for name in names:
                if name not in known:
                    raise ValueError(f"{where}.{name}: not an asset of pre_event.assets ({known})")
        return self


def events_dir() -> Path:
    """Where the shipped events live (`engine/events/`)."""
    return Path(str(resources.files("engine") / "events"))


def load_event(path: str | Path) -> Event:
    """The validated event of a TOML file; a `ConfigError` names the file and the field."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not a TOML file: {e}") from None
    try:
        return Event.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{p}:\n{describe(err)}") from None


def library() -> dict[str, Event]:
    """Every shipped event by file stem, in date order."""
    events = {p.stem: load_event(p) for p in sorted(events_dir().glob("*.toml"))}
    return dict(sorted(events.items(), key=lambda kv: kv[1].date))
