"""`liqstress events` and `liqstress make-book` on the command line: implausible event files and
make-book requests exit 2 with one message and write nothing; options that cannot change the
book are warnings; `events` lists the figures the book map takes as neutral."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engine import cli
from tests.cli.test_bad_configs import QUICK
from tests.config.test_events import GOOD

COLLATERAL = str(Path(QUICK).parent / "oct10_2025_collateral.toml")


def invoke(argv):
    return CliRunner().invoke(cli.app, argv)


def test_events_lists_the_observables_the_book_map_takes_as_neutral(tmp_path):
    path = tmp_path / "ev.toml"
    path.write_text(GOOD)
    result = invoke(["events", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        f"{path}: the book map takes as neutral: funding_8h (BTC); open_interest_growth (BTC); "
        "price_return (BTC); long_short_ratio (BTC)"
    ) in result.stdout
    listed = invoke(["events"]).stdout
    # 10 Oct 2025 has BTC's funding, growth and return, and XRP's funding
    assert (
        "oct10_2025: the book map takes as neutral: funding_8h (ETH, SOL); open_interest_growth "
        "(ETH, SOL, XRP); price_return (ETH, SOL, XRP); long_short_ratio (BTC, ETH, SOL, XRP)"
    ) in listed


def test_events_refuses_a_percentage_with_the_fraction_to_write(tmp_path):
    price = 'price = { value = 42900, units = "USD", source = "a report", source_date = 2021-05-19 }\n'
    growth = 'open_interest_growth = { value = 20, units = "1", source = "r", source_date = 2021-05-19 }\n'
    path = tmp_path / "ev.toml"
    path.write_text(GOOD.replace(price, price + growth))
    result = invoke(["events", str(path)])
    assert result.exit_code == 2
    assert "ev.toml" in result.output and "open_interest_growth: 20 outside (-1, 3)" in result.output
    assert "write 0.2 for 20%" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**64)], "--seed"),  # run.seed's range
        (["--collateral-share", "-0.1"], "--collateral-share -0.1: allowed 0 to 1"),
        (["--positions", "0"], "--positions 0: allowed at least 2 per asset (4)"),
        (["--stop-share", "20"], "--stop-share 20: allowed 0 to 1"),
        (
            ["--cross-share", "0.1", "--positions", "100", "--accounts", "1000000000"],
            "--accounts 1000000000: allowed 1 to 10, the cross positions (--cross-share 0.1 of --positions 100)",
        ),
        (["--cross-share", "0.5"], "--accounts 0: allowed 1 to 50,000"),
        # 10^12 positions: refused at once with the estimate, nothing allocated
        (["--positions", "1000000000000"], "--positions 1,000,000,000,000: needs about 156.4 TiB of memory"),
    ],
)
def test_make_book_refuses_a_bad_request_and_writes_nothing(tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    result = invoke(["make-book", "book.parquet", "--config", QUICK, *options])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and "warning" not in result.output  # one message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("config", "options", "warned"),
    [
        (QUICK, ["--accounts", "5"], ["--accounts changes nothing: no position is cross margin"]),
        (
            QUICK,
            ["--accounts", "5", "--collateral-share", "0.3"],
            ["--accounts changes nothing", "--collateral-share changes nothing: no position is cross margin"],
        ),
        (
            QUICK,
            ["--cross-share", "0.5", "--accounts", "5", "--collateral-share", "0.3"],
            ["--collateral-share changes nothing: the scenario quick has no [collateral] assets"],
        ),
        (COLLATERAL, ["--cross-share", "0.5", "--accounts", "5", "--collateral-share", "0.3"], []),
        (QUICK, ["--cross-share", "0.5", "--accounts", "5"], []),
    ],
)
def test_make_book_warns_of_options_that_change_nothing(tmp_path, monkeypatch, config, options, warned):
    monkeypatch.chdir(tmp_path)
    result = invoke(["make-book", "book.parquet", "--config", config, "--positions", "200", *options])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning:") == len(warned)
    assert all(w in result.stderr for w in warned), result.stderr
    assert pq.read_table(tmp_path / "book.parquet").num_rows == 200
