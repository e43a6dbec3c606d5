"""The book of cohorts (`engine.config.book`): its layout, on the host."""

from __future__ import annotations

import pytest

from engine.config import book
from engine.config.schema import Config
from tests.conftest import SMALL


def test_every_asset_holds_longs_then_as_many_shorts(monkeypatch):
    """The per-side sums (`engine.model.cascade.side_matrix`) read the layout of the first asset;
    `build_cohorts` checks that all assets share it."""
    checked = []
    monkeypatch.setattr(book, "check_layout", lambda side: checked.append(side.copy()))
    side = book.build_cohorts(Config.model_validate(SMALL)).side
    assert len(checked) == 1 and (checked[0] == side).all()
    monkeypatch.undo()
    half = side.shape[1] // 2
    assert side.shape[0] == 2 and (side[:, :half] == 1).all() and (side[:, half:] == -1).all()
    book.check_layout(side)
    swapped = side.copy()
    swapped[1] = swapped[1, ::-1]
    for bad in (swapped, side[:, 1:]):
        with pytest.raises(ValueError, match="longs"):
            book.check_layout(bad)
