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


def pre(line: str) -> tuple[str, str]:
    """An edit of GOOD adding `line` to BTC's pre-event figures."""
    price = 'price = { value = 42900, units = "USD", source = "a report", source_date = 2021-05-19 }\n'
    return price, price + line + "\n"


def figure(name: str, numbers: str, units: str = "1") -> str:
    return f'{name} = {{ {numbers}, units = "{units}", source = "a report", source_date = 2021-05-19 }}'


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            pre(figure("open_interest_growth", "value = 20")),
            "pre_event.assets.BTC: open_interest_growth: 20 outside (-1, 3); a fraction: write 0.2 for 20%",
        ),
        (
            pre(figure("price_return", "low = -25, high = -0.2")),
            "price_return: -25 outside (-1, 3); a fraction: write -0.25 for -25%",
        ),
        (
            pre(figure("funding_8h", "value = 0.01")),
            "funding_8h: 0.01 outside (-0.01, 0.01); a fraction: write 0.0001",
        ),
        (
            ("[outcomes]\n", "[outcomes]\n" + figure("open_interest_change", "value = -31") + "\n"),
            "outcomes: open_interest_change: -31 outside (-1, 1); a fraction: write -0.31 for -31%",
        ),
        (
            ("low = 0.28, high = 0.30", "value = 14.5"),
            "fall: 14.5 outside (0, 1); a fraction: write 0.145 for 14.5%",
        ),
        (
            (
                "[price_path.BTC]\n",
                "[price_path.BTC]\n"
                + figure("peak", "value = 40000", "USD")
                + "\n"
                + figure("trough", "low = 30000, high = 40000", "USD")
                + "\n",
            ),
            "price_path.BTC: trough: 40000 not below the peak (40000)",
        ),
        (("date = 2021-05-19\n", "date = 2999-01-01\n"), "date: in the future; allowed: a date up to today"),
        (
            (
                'source = "a report", source_date = 2021-05-19 }\n\n[outcomes]',
                'source = "r", source_date = 2999-01-01 }\n\n[outcomes]',
            ),
            "price_path.BTC.fall.source_date: in the future",
        ),
        (
            (
                'fall = { low = 0.28, high = 0.30, units = "1", source = "a report"',
                'fall = { low = 0.28, high = 0.30, units = "1", source = "  "',
            ),
            "price_path.BTC.fall.source: String should have at least 1 character",
        ),
        (
            (
                "[outcomes]\n",
                "[outcomes]\n" + figure("by_asset_usd.BTC", "low = 8.5e9, high = 9e9", "USD") + "\n",
            ),
            (
                "outcomes: by_asset_usd.BTC: add up to at least 8,500,000,000 USD, above liquidations_usd "
                "(at most 8,000,000,000 USD)"
            ),
        ),
        (
            (
                "[pre_event.assets.BTC]\n",
                "[pre_event]\n"
                + figure("aggregate_open_interest_usd", "value = 10e9", "USD")
                + "\n[pre_event.assets.BTC]\n"
                + figure("open_interest_usd", "low = 12e9, high = 13e9", "USD")
                + "\n",
            ),
            (
                "pre_event: assets.BTC.open_interest_usd: add up to at least 12,000,000,000 USD, above "
                "aggregate_open_interest_usd (at most 10,000,000,000 USD)"
            ),
        ),
    ],
)
def test_an_implausible_event_is_refused_with_the_fix(tmp_path, edit, message):
    assert edit[0] in GOOD
    path = write(tmp_path, GOOD.replace(*edit, 1))
    with pytest.raises(ConfigError) as err:
        E.load_event(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_plausible_edge_figures_pass(tmp_path):
    # a fall of 28-30% and liquidations per asset up to the total's high end are consistent
    text = GOOD.replace(
        "[outcomes]\n",
        "[outcomes]\n" + figure("by_asset_usd.BTC", "value = 8e9", "USD") + "\n",
    ).replace(*pre(figure("open_interest_growth", "low = -0.5, high = 2.5")))
    ev = E.load_event(write(tmp_path, text))
    assert ev.outcomes.by_asset_usd["BTC"].central == 8e9
    assert ev.pre_event.assets["BTC"].open_interest_growth.ends == (-0.5, 2.5)
