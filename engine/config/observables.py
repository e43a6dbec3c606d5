"""What the book map (`engine.fit.book_map`) reads of an event: per asset, the pre-event
figures as observables, a figure the event lacks taking its neutral value. Plain NumPy, so that
`liqstress events` lists the neutral ones without loading JAX."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine.config.events import Event

# The funding rate per 8 h that counts as neutral (the common baseline), fraction.
BASE_FUNDING_8H = 1e-4


class Observables(NamedTuple):
    """Per-asset observables `[assets]` (see the module docstring)."""

    funding: np.ndarray  # excess funding, units of 0.01% per 8 h
    growth: np.ndarray  # open-interest growth over the lookback, fraction
    log_return: np.ndarray  # log price return over the lookback
    log_ratio: np.ndarray  # log accounts long / short


def observables(event: Event, assets: list[str]) -> tuple[Observables, tuple[str, ...]]:
    """The observables of `assets` from the event's pre-event figures (their central values),
    and "ASSET.field" of each figure the event does not have (it took its neutral value)."""
    missing: list[str] = []

    def get(asset: str, name: str, neutral: float, transform) -> float:
        fig = getattr(event.pre_event.assets[asset], name)
        if fig is None:
            missing.append(f"{asset}.{name}")
            return neutral
        return float(transform(fig.central))

    cols = {
        "funding": [get(a, "funding_8h", 0.0, lambda x: x / BASE_FUNDING_8H - 1.0) for a in assets],
        "growth": [get(a, "open_interest_growth", 0.0, float) for a in assets],
        "log_return": [get(a, "price_return", 0.0, np.log1p) for a in assets],
        "log_ratio": [get(a, "long_short_ratio", 0.0, np.log) for a in assets],
    }
    return Observables(**{k: np.asarray(v, float) for k, v in cols.items()}), tuple(missing)
