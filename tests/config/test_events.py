"""The event library: every shipped event validates and cites its figures; bad event files are
refused with the file and the field named (exit 2 on the command line)."""

import datetime as dt

import pytest
from typer.testing import CliRunner

from engine import cli
from engine.config import events as E
from engine.config.errors import ConfigError

GOOD = """
date = 2021-05-19
description = "a test event"

[pre_event.assets.BTC]
price = { value = 42900, units = "USD", source = "a report", source_date = 2021-05-19 }

[price_path.BTC]
fall = { low = 0.28, high = 0.30, units = "1", source = "a report", source_date = 2021-05-19 }

[outcomes]
liquidations_usd = { value = 8e9, units = "USD", source = "a report", source_date = 2021-05-19 }
"""


def write(tmp_path, text, name="ev.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_library_holds_the_issue_events_each_cited():
    lib = E.library()
    dates = [e.date for e in lib.values()]
    assert dates == sorted(dates) and len(set(dates)) == len(dates)
    assert dt.date(2025, 10, 10) in dates and dt.date(2026, 2, 5) in dates
    assert any(d.year == 2025 and d.month == 11 for d in dates)
    assert any(d.year < 2025 for d in dates)  # an earlier cascade
    for name, ev in lib.items():
        o = ev.outcomes
        assert o.liquidations_usd.central > 0 and o.liquidations_usd.source.strip(), name
        figures = [f for f in o.model_dump().values() if isinstance(f, dict) and "source" in f]
        assert all(f["source"].strip() and f["source_date"] for f in figures), name
        for move in ev.price_path.values():
            assert move.fall is None or 0 < move.fall.central < 1, name


def test_a_valid_file_reads_with_its_ranges(tmp_path):
    ev = E.load_event(write(tmp_path, GOOD))
    fall = ev.price_path["BTC"].fall
    assert (fall.low, fall.high, fall.central) == (0.28, 0.30, pytest.approx(0.29))
    assert ev.outcomes.liquidations_usd.central == 8e9 and ev.horizon_hours == 24


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (
            (
                'source = "a report", source_date = 2021-05-19 }\n\n[outcomes]',
                "source_date = 2021-05-19 }\n\n[outcomes]",
            ),
            "price_path.BTC.fall.source",
        ),
        (("low = 0.28, high = 0.30", "low = 0.30, high = 0.28"), "price_path.BTC.fall"),
        (("low = 0.28, high = 0.30", "value = 0.5, low = 0.28, high = 0.30"), "price_path.BTC.fall"),
        (("low = 0.28, high = 0.30", "low = 0.28"), "price_path.BTC.fall"),
        (("[price_path.BTC]", "[price_path.ETH]"), "price_path.ETH"),
        (("liquidations_usd", "liquidation_usd"), "liquidation_usd"),
        (("date = 2021-05-19\n", 'date = "yesterday"\n'), "date"),
    ],
)
def test_a_bad_event_names_the_file_and_the_field(tmp_path, edit, field):
    path = write(tmp_path, GOOD.replace(*edit, 1))
    with pytest.raises(ConfigError) as err:
        E.load_event(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_the_command_lists_the_library_and_refuses_a_bad_file(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(cli.app, ["events"])
    assert listed.exit_code == 0 and "oct10_2025" in listed.output and "feb05_2026" in listed.output
    bad = write(tmp_path, GOOD.replace("[outcomes]", "[outcome]"))
    refused = runner.invoke(cli.app, ["events", str(bad)])
    assert refused.exit_code == 2 and "ev.toml" in refused.output and "outcome" in refused.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.toml"]  # nothing written
    text = write(tmp_path, "\\x00\\x01 not toml", "binary.toml")
    assert runner.invoke(cli.app, ["events", str(text)]).exit_code == 2
