"""Issue 21's acceptance corpus: bad inputs run through the command line, each outcome classified.

    python -m tests.cli.corpus [--only PATTERN] [--skip-slow] [--jobs N] [--json OUT] [--list]

Each `Case` writes its files (a positions CSV or Parquet, a liquidation map, a config TOML built
from the test suite's small config, an event TOML, a fit config) into a fresh temporary
directory, runs its setup commands (which must exit 0), applies its edits (a positions file
changed between the parts of a run), then runs its command as `python -m engine ...` there and
compares the outcome with its expectation:

- `refuse`: exit 2, one `error:` line, the case's needles (file, row, column, field) in the
  output, no traceback, and no file written or changed in the directory;
- `warn`: exit 0 and a `warning:` line holding every needle;
- `ok`: exit 0 (and the needles somewhere in the output);
- `interrupt`: SIGTERM during a long run ends it with exit 130 within `STOP_S` seconds, and the
  manifest is not left at `running`.

Outcomes, worst first: `traceback` (stderr holds "Traceback"), `hang` (no exit within the
timeout, or not stopped), `late` (validate or --dry-run said ok, the run exited 1), `silent`
(a refusal or warning expected, exit 0 without a warning), `missed` (validate or --dry-run said
ok, the run refused with exit 2: known before the run, not told by validate), `wrong code`,
`unclear` (the right code, but the message lacks a needle, or more than one `error:` line, or
files written), `setup` (a setup command failed without a traceback), `pass`.

`late` and `missed` need the run: a `run CONFIG` case first runs `validate` on the same config and
`--set` items, a fit first runs `--dry-run`; a `validate` case expected to refuse that exits 0 is
followed by the run itself (`--paths 8`), whose outcome classifies it. Simulations use the
small config at `--paths 8` without the tipping probe; cases that simulate are marked slow.
Every case's directory and the JAX compilation cache live under one temporary directory that is
removed at the end.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import tomli_w

from tests.conftest import small_dict

TIMEOUT_S = 120  # per command: a validate takes seconds, a simulation here well under a minute
STOP_S = 20  # an interrupted run must exit within this many seconds of SIGTERM
MEMORY_CAP = 8 * 2**30  # address space of make-book cases: an unchecked huge request fails here
RUN = ("--paths", "8", "--no-report", "--run-dir", "out")
ORDER = ("traceback", "hang", "late", "silent", "missed", "wrong code", "unclear", "setup", "pass")

# ----------------------------------------------------------------------------------------
# Inputs: the small config (BTC at 100,000 and SOL at 200, open interest 40e9 and 8e9)
# ----------------------------------------------------------------------------------------

RUN_SETTINGS = {**small_dict()["run"], "tipping_paths": 0}
COLLATERAL = {"USDE": {"price": 1.0, "haircut": 0.1}}


def toml(**sections) -> str:
    """The small config (`tests.conftest.small_dict`, no tipping probe) with `sections` merged."""
    return tomli_w.dumps(small_dict(run=RUN_SETTINGS, **sections))


PLAIN = toml()
POS = toml(book={"positions": "book.csv"})
POS_COLL = toml(book={"positions": "book.csv"}, collateral=COLLATERAL)
PARQUET = toml(book={"positions": "book.parquet"})
MAP = toml(book={"liquidation_map": "map.csv"})

HEAD = "asset,side,notional_usd,entry_price,leverage\n"
GOOD = HEAD + "BTC,long,1e6,100000,10\nSOL,short,1e5,200,5\n"
EDITED = GOOD.replace("1e5", "3e5")
CROSS_HEAD = "asset,side,notional_usd,entry_price,leverage,margin_mode,account_id\n"
CROSS = (
    CROSS_HEAD
    + "BTC,long,1e6,100000,10,isolated,\nBTC,long,1e6,99000,10,cross,a1\nSOL,short,1e5,200,5,cross,a1\n"
)
MAP_HEAD = "asset,side,price,notional_usd\n"
GOOD_MAP = MAP_HEAD + "BTC,long,95000,1e8\nBTC,short,110000,1e8\nSOL,long,150,2e7\n"


def book(*rows: str, head: str = HEAD, first: str = "BTC,long,1e6,100000,10") -> str:
    """A positions CSV: `head`, a good BTC row `first` (row 1), then `rows` (row 2 on)."""
    return head + first + "\n" + "".join(r + "\n" for r in rows)


def parquet(**columns) -> bytes:
    """A Parquet positions file of two good rows (BTC long, SOL short) with `columns` replaced
    or added (pyarrow arrays or lists)."""
    cols = {
        "asset": ["BTC", "SOL"],
        "side": ["long", "short"],
        "notional_usd": [1e6, 1e5],
        "entry_price": [100000.0, 200.0],
        "leverage": [10.0, 5.0],
    } | columns
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def figure(value: float, units: str = "USD") -> dict:
    return {"value": value, "units": units, "source": "a test report", "source_date": dt.date(2024, 8, 6)}


EVENT = {
    "date": dt.date(2024, 8, 5),
    "description": "a test event",
    "pre_event": {
        "aggregate_open_interest_usd": figure(80e9),
        "assets": {
            "BTC": {
                "price": figure(60000),
                "open_interest_usd": figure(30e9),
                "open_interest_growth": figure(0.1, "1"),
                "price_return": figure(-0.05, "1"),
            }
        },
    },
    "price_path": {"BTC": {"peak": figure(62000), "trough": figure(49000), "fall": figure(0.2, "1")}},
    "outcomes": {
        "liquidations_usd": figure(1e9),
        "long_share": figure(0.8, "1"),
        "by_asset_usd": {"BTC": figure(5e8)},
        "open_interest_change": figure(-0.2, "1"),
    },
}


def event(path: str = "", value=None, drop: bool = False) -> str:
    """The test event as TOML with the field at dotted `path` set to `value` (or dropped)."""
    data = copy.deepcopy(EVENT)
    if path:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if drop:
            del node[last]
        else:
            node[last] = value
    return tomli_w.dumps(data)


def fit(kind: str, scenario: str = "cfg.toml", **more) -> str:
    """A tiny calibration or optimisation config over `scenario` (TOML), `more` merged."""
    if kind == "calibration":
        data = {
            "kind": kind,
            "scenario": {"base": scenario},
            "calibration": {"n_paths": 8, "seeds": [0], "iterations": 2},
            "params": [{"path": "market.assets.BTC.impact_y", "lower": 0.1, "upper": 2.0}],
            "targets": [{"statistic": "liquidated_total_usd", "value": 1e9, "tolerance": 1e8}],
        }
    else:
        data = {
            "kind": kind,
            "scenario": {"base": scenario},
            "optimise": {"n_paths": 8, "iterations": 2, "check_paths": 100},
            "levers": [{"path": "policy.leverage_cap", "lower": 5.0, "upper": 125.0}],
            "constraint": {"statistic": "es99_liquidated_total", "bound": 1e9},
        }
    return tomli_w.dumps(data | more)


def joint(events: list[str], **scenario) -> str:
    """A joint calibration over `events` on the shipped default scenario, `scenario` merged."""
    data = {
        "kind": "joint_calibration",
        "events": events,
        # the book map places the entries: the template's entry_log_mean must be 0
        "scenario": {"base": "oct10_2025", "book": {"entry_log_mean": 0.0}, **scenario},
        "calibration": {"n_paths": 8, "seeds": [0], "iterations": 2},
        "params": [{"path": "market.impact_y", "lower": 0.05, "upper": 2.0}],
    }
    return tomli_w.dumps(data)


def sha12(text: str) -> str:
    """The first 12 hex digits of the SHA-256 of `text` (UTF-8), as run manifests name files."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad (or good) input. files: {name: text or bytes} written first; setup: commands
    (argv after `python -m engine`) that must exit 0; edits: {name: new content, None to
    delete} applied after the setup; argv: the command judged, run in `cwd` (relative to the
    case's directory); needles: texts its output must hold. slow: it simulates. capped: its
    address space is limited to `MEMORY_CAP` (a request too large for the machine)."""

    name: str
    files: dict
    argv: tuple[str, ...]
    expect: str
    needles: tuple[str, ...] = ()
    setup: tuple[tuple[str, ...], ...] = ()
    edits: dict = dataclasses.field(default_factory=dict)
    cwd: str = "."
    slow: bool = False
    capped: bool = False


def check(name, files, expect, *needles, cfg=POS, sets=()) -> Case:
    """`liqstress validate cfg.toml [--set ...]` of `cfg` with `files`."""
    argv = ("validate", "cfg.toml", *(x for s in sets for x in ("--set", s)))
    return Case(name, {"cfg.toml": cfg, **files}, argv, expect, needles)


def pos(name, text, expect, *needles, cfg=POS, sets=()) -> Case:
    """`validate` of a config whose positions file book.csv is `text`."""
    return check(name, {"book.csv": text}, expect, *needles, cfg=cfg, sets=sets)


def row2(column: str) -> tuple[str, str, str]:
    """The needles of a refusal of row 2's `column` of book.csv."""
    return ("book.csv", "row 2", f"column {column}")


def column_cases() -> list[Case]:
    """Headers: unknown, misspelled, missing, doubled and mis-separated columns."""
    refuse = "refuse"
    return [
        pos(
            "pos: marginmode for margin_mode",
            book(
                "BTC,short,1e5,100000,5,cross",
                head=HEAD[:-1] + ",marginmode\n",
                first="BTC,long,1e6,100000,10,isolated",
            ),
            refuse,
            "book.csv",
            "'marginmode'",
            "margin_mode",
        ),
        pos(
            "pos: stop for stop_price",
            book("BTC,long,1e5,100000,5,90000", head=HEAD[:-1] + ",stop\n", first="BTC,long,1e6,100000,10,"),
            refuse,
            "'stop'",
            "stop_price",
        ),
        pos(
            "pos: notional for notional_usd",
            "asset,side,notional,entry_price,leverage\nBTC,long,1e6,100000,10\n",
            refuse,
            "'notional'",
            "notional_usd",
        ),
        pos(
            "pos: lev for leverage",
            "asset,side,notional_usd,entry_price,lev\nBTC,long,1e6,100000,10\n",
            refuse,
            "'lev'",
            "leverage",
        ),
        pos(
            "pos: accountid for account_id",
            CROSS.replace("account_id", "accountid"),
            refuse,
            "'accountid'",
            "account_id",
        ),
        pos("pos: capitalised header", GOOD.replace("asset,side", "Asset,Side"), refuse, "'Asset'", "asset"),
        pos(
            "pos: an unrelated column",
            book("SOL,short,1e5,200,5,x", head=HEAD[:-1] + ",comment\n", first="BTC,long,1e6,100000,10,"),
            refuse,
            "'comment'",
        ),
        pos(
            "pos: a column given twice",
            "asset,side,notional_usd,entry_price,leverage,leverage\nBTC,long,1e6,100000,10,10\n",
            refuse,
            "leverage",
        ),
        pos("pos: semicolon separated", GOOD.replace(",", ";"), refuse, "book.csv", "asset;side"),
        pos(
            "pos: entry_price missing",
            "asset,side,notional_usd,leverage\nBTC,long,1e6,10\n",
            refuse,
            "entry_price",
        ),
        pos(
            "pos: side missing",
            "asset,notional_usd,entry_price,leverage\nBTC,1e6,100000,10\n",
            refuse,
            "side",
        ),
        pos(
            "pos: notional_usd and quantity both",
            "asset,side,notional_usd,quantity,entry_price,leverage\nBTC,long,1e6,10,100000,10\n",
            refuse,
            "notional_usd",
            "quantity",
        ),
        pos(
            "pos: neither leverage nor margin_usd",
            "asset,side,notional_usd,entry_price\nBTC,long,1e6,100000\n",
            refuse,
            "leverage",
            "margin_usd",
        ),
        pos(
            "pos: leverage and margin_usd both",
            "asset,side,notional_usd,entry_price,leverage,margin_usd\nBTC,long,1e6,100000,10,1e5\n",
            refuse,
            "leverage",
            "margin_usd",
        ),
        pos(
            "pos: price for entry_price",
            "asset,side,notional_usd,price,leverage\nBTC,long,1e6,100000,10\n",
            refuse,
            "'price'",
            "entry_price",
        ),
    ]


def value_cases() -> list[Case]:
    """Row 2's values: text in numbers, signs, NaN, inf, overflow, unknown labels."""
    r = "refuse"
    cases = [
        pos("pos: side 'up'", book("SOL,up,1e5,200,5"), r, *row2("side"), "long, short"),
        pos("pos: side 'buy'", book("SOL,buy,1e5,200,5"), r, *row2("side")),
        pos("pos: side as a number", book("SOL,1,1e5,200,5"), r, *row2("side")),
        pos("pos: side empty", book("SOL,,1e5,200,5"), r, *row2("side")),
        pos("pos: side in capitals", book("SOL,SHORT,1e5,200,5"), "ok"),
        pos("pos: unknown asset", book("DOGE,long,1e5,0.2,5"), r, *row2("asset"), "BTC, SOL"),
        pos("pos: asset in lower case", book("sol,short,1e5,200,5"), r, *row2("asset")),
        pos("pos: notional as a word", book("SOL,short,lots,200,5"), r, *row2("notional_usd"), "numbers"),
        pos(
            "pos: notional with thousands separators",
            book('SOL,short,"1,000,000",200,5'),
            r,
            *row2("notional_usd"),
        ),
        pos("pos: notional with a currency sign", book("SOL,short,$100000,200,5"), r, *row2("notional_usd")),
        pos("pos: leverage written 10x", book("SOL,short,1e5,200,10x"), r, *row2("leverage")),
        pos("pos: entry written 200k", book("BTC,short,1e5,100k,5"), r, *row2("entry_price")),
        pos("pos: notional empty", book("SOL,short,,200,5"), r, *row2("notional_usd")),
        pos("pos: entry empty", book("SOL,short,1e5,,5"), r, *row2("entry_price")),
    ]
    bad = {
        "notional_usd": ("-1e5", "0", "nan", "inf", "1e300", "1e13"),
        "entry_price": ("-200", "0", "nan", "inf", "1e300", "1e-13"),
        "leverage": ("0", "0.5", "-5", "1001", "nan", "inf"),
    }
    where = {"notional_usd": 2, "entry_price": 3, "leverage": 4}
    for column, values in bad.items():
        for v in values:
            cells = ["SOL", "short", "1e5", "200", "5"]
            cells[where[column]] = v
            cases.append(pos(f"pos: {column} = {v}", book(",".join(cells)), r, *row2(column)))
    head_m = "asset,side,notional_usd,entry_price,margin_usd\n"
    head_q = "asset,side,quantity,entry_price,leverage\n"
    head_p = HEAD[:-1] + ",positions\n"
    head_t = HEAD[:-1] + ",tier\n"
    first_p, first_t = "BTC,long,1e6,100000,10,1\n", "BTC,long,1e6,100000,10,\n"
    cases += [
        pos(
            "pos: margin above the notional",
            head_m + "BTC,long,1e6,100000,1e5\nSOL,short,1e5,200,2e5\n",
            r,
            *row2("margin_usd"),
        ),
        pos(
            "pos: margin 0", head_m + "BTC,long,1e6,100000,1e5\nSOL,short,1e5,200,0\n", r, *row2("margin_usd")
        ),
        pos(
            "pos: quantity 1e300",
            head_q + "BTC,long,10,100000,10\nSOL,short,1e300,200,5\n",
            r,
            *row2("quantity"),
        ),
        pos("pos: quantity 0", head_q + "BTC,long,10,100000,10\nSOL,short,0,200,5\n", r, *row2("quantity")),
        pos("pos: positions 0", head_p + first_p + "SOL,short,1e5,200,5,0\n", r, *row2("positions")),
        pos("pos: positions -3", head_p + first_p + "SOL,short,1e5,200,5,-3\n", r, *row2("positions")),
        pos("pos: positions 1e300", head_p + first_p + "SOL,short,1e5,200,5,1e300\n", r, *row2("positions")),
        pos(
            "pos: tier 10 of 10 tiers",
            head_t + first_t + "SOL,short,1e5,200,5,10\n",
            r,
            *row2("tier"),
            "0 to 9",
        ),
        pos("pos: tier 1.5", head_t + first_t + "SOL,short,1e5,200,5,1.5\n", r, *row2("tier")),
        pos("pos: tier -1", head_t + first_t + "SOL,short,1e5,200,5,-1\n", r, *row2("tier")),
        pos("pos: a good quantity book", head_q + "BTC,long,10,100000,10\nSOL,short,500,200,5\n", "ok"),
    ]
    return cases


def unit_cases() -> list[Case]:
    """Rows in the wrong unit, beyond their liquidation price or beyond the market's size."""
    r = "refuse"
    under = ("max_underwater_share", "BTC", "row 2")
    return [
        pos(
            "pos: BTC short entered at 1.0 (wrong unit)", book("BTC,short,1e6,1.0,10"), r, "book.csv", *under
        ),
        pos(
            "pos: BTC long entered at 1e6 (wrong unit)",
            book("BTC,long,1e6,1000000,10"),
            r,
            "book.csv",
            *under,
        ),
        pos(
            "pos: one stale row within the allowed share",
            book("BTC,long,1e5,200000,10", first="BTC,long,1e8,100000,3"),
            "warn",
            *under,
        ),
        pos(
            "pos: underwater book with max_underwater_share = 1",
            book("BTC,short,1e6,1.0,10"),
            "warn",
            *under,
            sets=("book.max_underwater_share=1",),
        ),
        pos(
            "pos: max_underwater_share = 1.5",
            GOOD,
            r,
            "book.max_underwater_share",
            sets=("book.max_underwater_share=1.5",),
        ),
        pos(
            "pos: BTC long entered at 100 (1000x below the price)",
            book("BTC,long,1e6,100,10"),
            "warn",
            "entry_price",
            "row 2",
        ),
        pos(
            "pos: a row above the asset's open interest",
            book("BTC,long,1e11,100000,1"),
            "refuse",
            "open_interest",
            "row 2, column notional_usd",
        ),
        pos("pos: a row of 1e13 USD", book("BTC,long,1e13,100000,10"), r, *row2("notional_usd")),
    ]


def encoding_cases() -> list[Case]:
    """Bytes and layouts a spreadsheet writes: Latin-1, BOM, CRLF, empty files."""
    r = "refuse"
    latin = CROSS.replace("a1", "caf\xe9").encode("latin-1")
    return [
        pos("pos: Latin-1 byte in account_id", latin, r, "book.csv", "row 2", "column account_id", "UTF-8"),
        pos(
            "pos: Latin-1 byte in asset",
            (HEAD + "BTC,long,1e6,100000,10\nS\xd6L,short,1e5,200,5\n").encode("latin-1"),
            r,
            *row2("asset"),
        ),
        pos(
            "pos: Latin-1 byte in the header",
            GOOD.replace("asset", "ass\xe9t").encode("latin-1"),
            r,
            "book.csv",
            "UTF-8",
        ),
        pos("pos: UTF-8 byte-order mark", b"\xef\xbb\xbf" + GOOD.encode(), "ok"),
        pos("pos: Windows line ends", GOOD.replace("\n", "\r\n"), "ok"),
        pos("pos: blank lines at the end", GOOD + "\n\n", "ok"),
        pos("pos: empty file", "", r, "book.csv"),
        pos("pos: header only", HEAD, r, "book.csv", "no positions"),
        pos("pos: blank lines only", "\n\n\n", r, "book.csv"),
        check(
            "pos: .xlsx file",
            {"book.xlsx": b"PK\x03\x04"},
            r,
            "book.xlsx",
            ".csv, .parquet",
            cfg=toml(book={"positions": "book.xlsx"}),
        ),
        check("pos: .txt file", {"book.txt": GOOD}, r, "book.txt", cfg=toml(book={"positions": "book.txt"})),
        check("pos: the file is missing", {}, r, "book.csv"),
        check("pos: the path is a directory", {"book.csv/x": "x"}, r, "book.csv"),
        check(
            "pos: positions and liquidation_map both",
            {"book.csv": GOOD, "map.csv": GOOD_MAP},
            r,
            "liquidation_map",
            cfg=toml(book={"positions": "book.csv", "liquidation_map": "map.csv"}),
        ),
    ]


def account_cases() -> list[Case]:
    """Margin modes, accounts, stops, collateral and ids."""
    r = "refuse"
    ch = CROSS_HEAD
    stop_head = HEAD[:-1] + ",stop_price\n"
    first_s = "BTC,long,1e6,100000,10,\n"
    coll_head = ch[:-1] + ",collateral\n"
    ids = HEAD[:-1] + ",position_id\n"
    return [
        pos(
            "pos: cross row without account_id",
            ch + "BTC,long,1e6,100000,10,isolated,\nSOL,short,1e5,200,5,cross,\n",
            r,
            *row2("account_id"),
        ),
        pos(
            "pos: account both cross and isolated",
            ch + "BTC,long,1e6,100000,10,cross,a1\nSOL,short,1e5,200,5,isolated,a1\n",
            r,
            *row2("margin_mode"),
            "mixed margin modes",
        ),
        pos(
            "pos: hedge mode (an account long and short)",
            ch + "BTC,long,1e6,100000,10,cross,a1\nBTC,short,1e5,100000,5,cross,a1\n",
            r,
            *row2("side"),
            "hedge mode",
        ),
        pos(
            "pos: margin_mode 'portfolio'",
            ch + "BTC,long,1e6,100000,10,isolated,\nSOL,short,1e5,200,5,portfolio,a1\n",
            r,
            *row2("margin_mode"),
            "isolated, cross",
        ),
        pos("pos: margin_mode in capitals", CROSS.replace(",cross,", ",Cross,"), "ok"),
        pos(
            "pos: cross rows only",
            ch + "BTC,long,1e6,99000,10,cross,a1\nSOL,short,1e5,200,5,cross,a2\n",
            "ok",
        ),
        pos("pos: a cross book", CROSS, "ok"),
        pos(
            "pos: long stop above the price",
            stop_head + first_s + "BTC,long,1e5,100000,5,105000\n",
            r,
            *row2("stop_price"),
            "below",
        ),
        pos(
            "pos: short stop below the price",
            stop_head + first_s + "SOL,short,1e5,200,5,150\n",
            r,
            *row2("stop_price"),
            "above",
        ),
        pos(
            "pos: stop at the price",
            stop_head + first_s + "SOL,short,1e5,200,5,200\n",
            r,
            *row2("stop_price"),
        ),
        pos("pos: stop negative", stop_head + first_s + "SOL,short,1e5,200,5,-210\n", r, *row2("stop_price")),
        pos(
            "pos: stop as a word", stop_head + first_s + "SOL,short,1e5,200,5,soon\n", r, *row2("stop_price")
        ),
        pos(
            "pos: stop on a cross row",
            ch[:-1] + ",stop_price\nBTC,long,1e6,100000,10,isolated,,\nSOL,short,1e5,200,5,cross,a1,210\n",
            r,
            *row2("stop_price"),
        ),
        pos("pos: a good stop", stop_head + first_s + "SOL,short,1e5,200,5,210\n", "ok"),
        pos(
            "pos: collateral not in the config",
            coll_head + "BTC,long,1e6,100000,10,isolated,,USD\nSOL,short,1e5,200,5,cross,a1,USDE\n",
            r,
            *row2("collateral"),
            "USD",
        ),
        pos(
            "pos: collateral on an isolated row",
            coll_head + "BTC,long,1e6,100000,10,isolated,,USD\nSOL,short,1e5,200,5,isolated,,USDE\n",
            r,
            *row2("collateral"),
            cfg=POS_COLL,
        ),
        pos(
            "pos: collateral in lower case",
            coll_head + "BTC,long,1e6,100000,10,isolated,,USD\nSOL,short,1e5,200,5,cross,a1,usde\n",
            r,
            *row2("collateral"),
            cfg=POS_COLL,
        ),
        pos(
            "pos: a cross book with collateral",
            coll_head + "BTC,long,1e6,100000,10,isolated,,USD\nSOL,short,1e5,200,5,cross,a1,USDE\n",
            "ok",
            cfg=POS_COLL,
        ),
        pos(
            "pos: duplicate position_id",
            ids + "BTC,long,1e6,100000,10,p1\nSOL,short,1e5,200,5,p1\n",
            r,
            *row2("position_id"),
            "row 1",
        ),
        pos("pos: numeric position ids", ids + "BTC,long,1e6,100000,10,1\nSOL,short,1e5,200,5,2\n", "ok"),
        pos("pos: only SOL rows", HEAD + "SOL,long,1e5,200,5\n", "ok"),
    ]


def parquet_cases() -> list[Case]:
    """Parquet column types pyarrow holds but a positions file cannot."""
    r = "refuse"
    big = 2**53 + 1

    def pq_case(name, expect, *needles, **columns) -> Case:
        return check(name, {"book.parquet": parquet(**columns)}, expect, *needles, cfg=PARQUET)

    row2pq = ("book.parquet", "row 2")
    return [
        pq_case(
            "pq: list-typed notional", r, "book.parquet", "row 1", "notional_usd", notional_usd=[[1e6], [1e5]]
        ),
        pq_case(
            "pq: struct-typed entry",
            r,
            "book.parquet",
            "entry_price",
            entry_price=[{"p": 100000.0}, {"p": 200.0}],
        ),
        pq_case(
            "pq: int64 notional above 2^53",
            r,
            *row2pq,
            "notional_usd",
            notional_usd=pa.array([10**6, big], pa.int64()),
        ),
        pq_case("pq: int64 tier above 2^53", r, *row2pq, "tier", tier=pa.array([0, big], pa.int64())),
        pq_case(
            "pq: uint64 notional above 2^63",
            r,
            *row2pq,
            "notional_usd",
            notional_usd=pa.array([10**6, 2**63 + 5], pa.uint64()),
        ),
        pq_case("pq: int64 position ids above 2^53", "ok", position_id=pa.array([big, big + 1], pa.int64())),
        pq_case("pq: dictionary-encoded asset", "ok", asset=pa.array(["BTC", "SOL"]).dictionary_encode()),
        pq_case(
            "pq: decimal notional",
            "ok",
            notional_usd=pa.array([Decimal(1000000), Decimal(100000)], pa.decimal128(12, 2)),
        ),
        pq_case("pq: float32 columns", "ok", entry_price=pa.array([100000.0, 200.0], pa.float32())),
        pq_case("pq: large_string side", "ok", side=pa.array(["long", "short"], pa.large_string())),
        pq_case("pq: boolean leverage", r, "book.parquet", "leverage", leverage=[True, False]),
        pq_case(
            "pq: timestamp entry",
            r,
            "book.parquet",
            "entry_price",
            entry_price=pa.array([1, 2], pa.timestamp("s")),
        ),
        pq_case(
            "pq: binary account_id not UTF-8",
            r,
            *row2pq,
            "account_id",
            margin_mode=["isolated", "cross"],
            account_id=pa.array([None, b"caf\xe9"], pa.binary()),
        ),
        pq_case("pq: null side", r, *row2pq, "side", side=pa.array(["long", None])),
        pq_case("pq: NaN notional", r, *row2pq, "notional_usd", notional_usd=[1e6, float("nan")]),
        check(
            "pq: zero rows",
            {
                "book.parquet": parquet(
                    **{k: [] for k in ("asset", "side")},
                    notional_usd=pa.array([], pa.float64()),
                    entry_price=pa.array([], pa.float64()),
                    leverage=pa.array([], pa.float64()),
                )
            },
            r,
            "book.parquet",
            cfg=PARQUET,
        ),
        check(
            "pq: not a Parquet file",
            {"book.parquet": b"PAR1 this is not parquet"},
            r,
            "book.parquet",
            cfg=PARQUET,
        ),
    ]


def map_cases() -> list[Case]:
    """Liquidation maps: wrong sides, columns, values, types."""
    r = "refuse"

    def m(name, text, expect, *needles, sets=()) -> Case:
        return check(name, {"map.csv": text}, expect, *needles, cfg=MAP, sets=sets)

    first = MAP_HEAD + "BTC,long,95000,1e8\n"
    row = ("map.csv", "row 2")
    with_list = check(
        "map: list-typed Parquet notional",
        {"map.parquet": _map_parquet()},
        r,
        "map.parquet",
        "notional_usd",
        cfg=toml(book={"liquidation_map": "map.parquet"}),
    )
    return [
        m(
            "map: long level above the price",
            first + "BTC,long,105000,1e6\n",
            r,
            *row,
            "column price",
            "0 < price < 100000",
        ),
        m("map: short level below the price", first + "SOL,short,150,1e6\n", r, *row, "column price"),
        m("map: column size", "asset,side,price,size\nBTC,long,95000,1e8\n", r, "map.csv", "'size'"),
        m(
            "map: notional for notional_usd",
            "asset,side,price,notional\nBTC,long,95000,1e8\n",
            r,
            "'notional'",
            "notional_usd",
        ),
        m(
            "map: an extra column",
            "asset,side,price,notional_usd,exchange\nBTC,long,95000,1e8,X\n",
            r,
            "'exchange'",
        ),
        m("map: price missing", "asset,side,notional_usd\nBTC,long,1e8\n", r, "map.csv", "price"),
        m("map: NaN price", first + "BTC,long,nan,1e6\n", r, *row, "column price"),
        m("map: negative notional", first + "BTC,long,90000,-1e6\n", r, *row, "column notional_usd"),
        m("map: inf notional", first + "BTC,long,90000,inf\n", r, *row, "column notional_usd"),
        m("map: short level at 1e300", first + "BTC,short,1e300,1e6\n", r, *row, "column price"),
        m("map: level of 1e13 USD", first + "BTC,long,90000,1e13\n", r, *row, "column notional_usd"),
        m(
            "map: Latin-1 byte in side",
            (first + "BTC,l\xf6ng,90000,1e6\n").encode("latin-1"),
            r,
            *row,
            "column side",
        ),
        m("map: empty file", "", r, "map.csv"),
        m("map: header only", MAP_HEAD, r, "map.csv", "no levels"),
        m("map: unknown asset", first + "DOGE,long,0.1,1e6\n", r, *row, "column asset"),
        m("map: side 'up'", first + "SOL,up,150,1e6\n", r, *row, "column side"),
        m(
            "map: map_leverage above tier 0",
            GOOD_MAP,
            r,
            "book.map_leverage",
            sets=("book.map_leverage=200",),
        ),
        m("map: map_leverage 1", GOOD_MAP, r, "book.map_leverage", sets=("book.map_leverage=1",)),
        m("map: a good map", GOOD_MAP, "ok"),
        check(
            "map: a .json map",
            {"map.json": "{}"},
            r,
            "map.json",
            cfg=toml(book={"liquidation_map": "map.json"}),
        ),
        with_list,
    ]


def _map_parquet() -> bytes:
    buf = io.BytesIO()
    cols = {"asset": ["BTC"], "side": ["long"], "price": [95000.0], "notional_usd": [[1e8]]}
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def config_cases() -> list[Case]:
    """Config fields: collateral, depegs, stops, sweeps that do nothing, overflowing values,
    `--set` paths, options."""
    r = "refuse"
    depeg = {"depegs": [{"collateral": "USDE", "gap": 0.3, "start_step": 10}]}
    coll = toml(collateral=COLLATERAL, scenario={**small_dict()["scenario"], **depeg})
    stops = lambda **o: toml(
        book={"stops": [{"asset": "BTC", "side": "long", "price": 90000, "notional_usd": 1e6} | o]}
    )

    def c(name, expect, *needles, cfg=PLAIN, sets=(), files=None) -> Case:
        return check(name, files or {}, expect, *needles, cfg=cfg, sets=sets)

    return [
        c("cfg: depeg on a book without collateral accounts", "warn", "depeg", cfg=coll),
        c(
            "cfg: sweep over a depeg gap without collateral accounts",
            "warn",
            "scenario.depegs",
            cfg=coll,
            sets=("sweep.scenario.depegs.0.gap=[0.1, 0.3]",),
        ),
        c(
            "cfg: sweep over a breaker threshold with breaker kind none",
            "warn",
            "policy.breaker.threshold",
            sets=("sweep.policy.breaker.threshold=[0.05, 0.1]",),
        ),
        c(
            "cfg: sweep over a haircut without collateral accounts",
            "warn",
            "collateral.USDE.haircut",
            cfg=toml(collateral=COLLATERAL),
            sets=("sweep.collateral.USDE.haircut=[0.1, 0.2]",),
        ),
        c("cfg: depeg of unknown collateral", r, "scenario.depegs.0.collateral", cfg=toml(scenario=depeg)),
        c("cfg: collateral named USD", r, "USD", cfg=toml(collateral={"USD": {"price": 1.0}})),
        c(
            "cfg: collateral tracking an unknown asset",
            r,
            "collateral.STETH.tracks",
            cfg=toml(collateral={"STETH": {"tracks": "ETH"}}),
        ),
        c("cfg: depeg gap 1.5", r, "gap", cfg=coll, sets=("scenario.depegs.0.gap=1.5",)),
        c(
            "cfg: depeg after the last step",
            r,
            "scenario.depegs.0.start_step",
            cfg=coll,
            sets=("scenario.depegs.0.start_step=100",),
        ),
        c("cfg: collateral haircut 1", r, "haircut", cfg=toml(collateral={"USDE": {"haircut": 1.0}})),
        c("cfg: stop order of an unknown asset", r, "book.stops.0.asset", cfg=stops(asset="ETH")),
        c("cfg: stop order at a negative price", r, "book.stops.0.price", cfg=stops(price=-5)),
        c("cfg: long stop order above the price", r, "book.stops.0.price", cfg=stops(price=110000)),
        c("cfg: BTC price 1e300", r, "market.assets.BTC.price", sets=("market.assets.BTC.price=1e300",)),
        c(
            "cfg: BTC open interest 1e300",
            r,
            "market.assets.BTC.open_interest_usd",
            sets=("market.assets.BTC.open_interest_usd=1e300",),
        ),
        c(
            "cfg: insurance fund 1e300",
            r,
            "policy.insurance_fund_usd",
            sets=("policy.insurance_fund_usd=1e300",),
        ),
        c(
            "cfg: BTC daily volume 1e-300",
            r,
            "market.assets.BTC.daily_volume_usd",
            sets=("market.assets.BTC.daily_volume_usd=1e-300",),
        ),
        c("cfg: n_paths 0", r, "run.n_paths", sets=("run.n_paths=0",)),
        c("cfg: dtype float16", r, "run.dtype", sets=('run.dtype="float16"',)),
        c("cfg: unknown book key", r, "book.postions", sets=('book.postions="book.csv"',)),
        c(
            "cfg: --set book.positions relative to the current directory",
            "ok",
            sets=("book.positions=book.csv",),
            files={"book.csv": GOOD},
        ),
        c("cfg: --set book.positions of a missing file", r, "nope.csv", sets=("book.positions=nope.csv",)),
        c("cfg: --set book.positions= (no value)", r, "book.positions", sets=("book.positions=",)),
        Case(
            "cfg: --set book.positions from a config in another directory",
            {"conf/cfg.toml": PLAIN, "data/book.csv": GOOD},
            ("validate", "conf/cfg.toml", "--set", "book.positions=data/book.csv"),
            "ok",
        ),
        Case(
            "cfg: book.positions relative to the config file",
            {"conf/cfg.toml": POS, "conf/book.csv": GOOD},
            ("validate", "conf/cfg.toml"),
            "ok",
        ),
        Case(
            "cfg: Latin-1 config file",
            {"cfg.toml": PLAIN.replace('"small"', '"sm\xe5ll"').encode("latin-1")},
            ("validate", "cfg.toml"),
            r,
            ("cfg.toml", "UTF-8"),
        ),
        Case(
            "cfg: base file missing",
            {"cfg.toml": 'base = "nope.toml"\n'},
            ("validate", "cfg.toml"),
            r,
            ("nope.toml",),
        ),
        Case("cfg: run --paths 0", {"cfg.toml": PLAIN}, ("run", "cfg.toml", "--paths", "0"), r, ("--paths",)),
        Case("cfg: run --seed -1", {"cfg.toml": PLAIN}, ("run", "cfg.toml", "--seed", "-1"), r, ("--seed",)),
        Case("cfg: the shipped collateral scenario by name", {}, ("validate", "oct10_2025_collateral"), "ok"),
    ]


def event_cases() -> list[Case]:
    """Event files: percentages for fractions, impossible figures, dates, sources."""
    r = "refuse"

    def e(name, text, expect, *needles) -> Case:
        named = ("ev.toml",) * (expect == "refuse")
        return Case(name, {"ev.toml": text}, ("events", "ev.toml"), expect, (*named, *needles))

    btc, out = "pre_event.assets.BTC", "outcomes"
    future = dt.date.today() + dt.timedelta(days=30)
    low_high = {k: v for k, v in figure(0).items() if k != "value"} | {"low": 2e9, "high": 1e9}
    return [
        e("ev: a good event", event(), "ok", "takes as neutral"),
        e(
            "ev: open interest growth 20 for 20%",
            event(f"{btc}.open_interest_growth", figure(20, "1")),
            r,
            "open_interest_growth",
            "0.2",
        ),
        e(
            "ev: price return 20 for 20%",
            event(f"{btc}.price_return", figure(20, "1")),
            r,
            "price_return",
            "0.2",
        ),
        e("ev: funding 1 for 1%", event(f"{btc}.funding_8h", figure(1, "1")), r, "funding_8h"),
        e("ev: long share 85 for 85%", event(f"{out}.long_share", figure(85, "1")), r, "long_share", "0.85"),
        e(
            "ev: open interest change -43 for -43%",
            event(f"{out}.open_interest_change", figure(-43, "1")),
            r,
            "open_interest_change",
            "-0.43",
        ),
        e("ev: fall 30 for 30%", event("price_path.BTC.fall", figure(30, "1")), r, "fall", "0.3"),
        e("ev: fall 1.5", event("price_path.BTC.fall", figure(1.5, "1")), r, "fall"),
        e("ev: trough above the peak", event("price_path.BTC.trough", figure(70000)), r, "trough"),
        e("ev: date in the future", event("date", future), r, "date"),
        e(
            "ev: source date in the future",
            event(f"{out}.liquidations_usd.source_date", future),
            r,
            "source_date",
        ),
        e(
            "ev: per-asset liquidations above the total",
            event(f"{out}.by_asset_usd.BTC", figure(2e9)),
            r,
            "by_asset_usd.BTC",
        ),
        e(
            "ev: per-asset open interest above the total",
            event("pre_event.aggregate_open_interest_usd", figure(10e9)),
            r,
            "aggregate_open_interest_usd",
        ),
        e("ev: empty source", event(f"{out}.liquidations_usd.source", ""), r, "source"),
        e("ev: blank source", event(f"{out}.liquidations_usd.source", "   "), r, "source"),
        e("ev: empty description", event("description", ""), r, "description"),
        e("ev: low above high", event(f"{out}.liquidations_usd", low_high), r, "low"),
        e("ev: unknown key", event(f"{out}.liquidation_usd", figure(1e9)), r, "liquidation_usd"),
        e("ev: liquidations missing", event(f"{out}.liquidations_usd", drop=True), r, "liquidations_usd"),
        e("ev: negative liquidations", event(f"{out}.liquidations_usd", figure(-1e9)), r, "liquidations_usd"),
        e(
            "ev: price path of an asset not before the event",
            event("price_path.ETH", {"fall": figure(0.2, "1")}),
            r,
            "price_path.ETH",
        ),
        e("ev: horizon 0 hours", event("horizon_hours", 0), r, "horizon_hours"),
        e("ev: not TOML", "date = 2024-08-05\n[[[\n", r),
        e("ev: Latin-1 bytes", event("description", "caf\xe9").encode("latin-1"), r),
        e("ev: month 13", event().replace("2024-08-05", "2024-13-05"), r),
        Case("ev: file missing", {}, ("events", "nope.toml"), r, ("nope.toml",)),
        Case("ev: a directory", {"evdir/x": "x"}, ("events", "evdir"), r, ("evdir",)),
    ]


def make_book_cases() -> list[Case]:
    """`liqstress make-book`: seeds, sizes, shares, memory, and its files read back."""
    r = "refuse"
    coll = toml(collateral=COLLATERAL)

    def mb(name, expect, *args, needles=(), cfg=PLAIN, capped=False) -> Case:
        argv = ("make-book", "b.csv", "--config", "cfg.toml", *args)
        return Case(name, {"cfg.toml": cfg}, argv, expect, tuple(needles), capped=capped)

    def read_back(name, *args, cfg=PLAIN, positions="5000") -> Case:
        files = {"cfg.toml": cfg, "c2.toml": cfg.replace("[book]", '[book]\npositions = "b.csv"')}
        setup = (("make-book", "b.csv", "--config", "cfg.toml", "--positions", positions, *args),)
        return Case(name, files, ("validate", "c2.toml"), "ok", (), setup)

    return [
        mb("mb: --seed -1", r, "--seed", "-1", needles=("--seed",)),
        mb("mb: --seed 2^64", r, "--seed", str(2**64), needles=("--seed",)),
        mb(
            "mb: --positions 1e10 (memory)",
            r,
            "--positions",
            str(10**10),
            needles=("--positions", "memory"),
            capped=True,
        ),
        mb(
            "mb: --accounts 1e10 (memory)",
            r,
            "--positions",
            "1000",
            "--cross-share",
            "0.5",
            "--accounts",
            str(10**10),
            needles=("--accounts",),
            capped=True,
        ),
        mb("mb: --positions 0", r, "--positions", "0", needles=("--positions",)),
        mb("mb: --positions -5", r, "--positions", "-5", needles=("--positions",)),
        mb("mb: --positions 1", r, "--positions", "1", needles=("--positions",)),
        mb(
            "mb: --cross-share 1.5", r, "--cross-share", "1.5", "--accounts", "10", needles=("--cross-share",)
        ),
        mb("mb: --collateral-share -0.1", r, "--collateral-share", "-0.1", needles=("--collateral-share",)),
        mb("mb: --stop-share nan", r, "--stop-share", "nan", needles=("--stop-share",)),
        mb("mb: --cross-share without --accounts", r, "--cross-share", "0.5", needles=("--accounts",)),
        mb(
            "mb: --collateral-share with a config without collateral",
            "warn",
            "--positions",
            "300",
            "--cross-share",
            "0.5",
            "--accounts",
            "20",
            "--collateral-share",
            "0.5",
            needles=("--collateral-share",),
        ),
        mb(
            "mb: --collateral-share without cross positions",
            "warn",
            "--positions",
            "300",
            "--collateral-share",
            "0.8",
            needles=("--collateral-share",),
            cfg=coll,
        ),
        Case(
            "mb: .xlsx output",
            {"cfg.toml": PLAIN},
            ("make-book", "b.xlsx", "--config", "cfg.toml"),
            r,
            ("b.xlsx",),
        ),
        Case("mb: --config missing", {}, ("make-book", "b.csv", "--config", "nope.toml"), r, ("nope.toml",)),
        read_back("mb: an isolated book reads back"),
        # 300 positions of the small config's $48 B: $160 M each, above most tiers' leverage
        read_back("mb: a book of 300 positions reads back", positions="300"),
        read_back("mb: a book with stops reads back", "--stop-share", "0.3"),
        read_back(
            "mb: a cross book with collateral reads back",
            "--cross-share",
            "0.4",
            "--accounts",
            "20",
            cfg=coll,
        ),
    ]


def fit_cases() -> list[Case]:
    """Fits refuse at --dry-run what the relaxed kernel cannot take; joint configs and events."""
    r = "refuse"
    stop_file = HEAD[:-1] + ",stop_price\nBTC,long,1e6,100000,10,\nSOL,short,1e5,200,5,210\n"
    stops_cfg = toml(book={"stops": [{"asset": "BTC", "side": "long", "price": 90000, "notional_usd": 1e6}]})

    def f(name, expect, *needles, kind="calibration", cfg=POS, book=GOOD, more=None) -> Case:
        cmd = "calibrate" if kind == "calibration" else "optimise"
        files = {"cfg.toml": cfg, "book.csv": book, "fit.toml": fit(kind, **(more or {}))}
        return Case(name, files, (cmd, "fit.toml", "--dry-run"), expect, needles)

    def j(name, events, expect, *needles, files=None, **scenario) -> Case:
        return Case(
            name,
            {"joint.toml": joint(events, **scenario), **(files or {})},
            ("calibrate", "joint.toml", "--dry-run"),
            expect,
            needles,
        )

    return [
        f("fit: calibrate on a book with accounts", r, "cross", book=CROSS),
        f("fit: calibrate with collateral", r, "collateral", cfg=POS_COLL),
        f("fit: calibrate on a file with stop prices", r, "stop", book=stop_file),
        f("fit: calibrate with book.stops", r, "book.stops", cfg=stops_cfg),
        f("fit: optimise on a book with accounts", r, "cross", kind="optimisation", book=CROSS),
        f("fit: optimise with collateral", r, "collateral", kind="optimisation", cfg=POS_COLL),
        f("fit: calibrate on an isolated book", "ok", "calibration of"),
        f("fit: optimise on an isolated book", "ok", "optimisation of", kind="optimisation"),
        f(
            "fit: calibrate on an underwater book",
            r,
            "max_underwater_share",
            book=book("BTC,short,1e6,1.0,10"),
        ),
        f(
            "fit: calibrate target NaN",
            r,
            "targets",
            more={
                "targets": [{"statistic": "liquidated_total_usd", "value": float("nan"), "tolerance": 1e8}]
            },
        ),
        f(
            "fit: calibrate lower above upper",
            r,
            "params",
            more={"params": [{"path": "market.assets.BTC.impact_y", "lower": 2.0, "upper": 0.1}]},
        ),
        f(
            "fit: optimise penalty inf",
            r,
            "penalty",
            kind="optimisation",
            more={"optimise": {"n_paths": 8, "iterations": 2, "check_paths": 100, "penalty": float("inf")}},
        ),
        j(
            "fit: joint on a positions book",
            ["may19_2021", "oct10_2025"],
            r,
            "scenario.book",
            files={"book.csv": GOOD},
            book={"positions": "book.csv"},
        ),
        j("fit: joint with an unknown event", ["may19_2021", "nope"], r, "nope"),
        j(
            "fit: joint with an event file of percentages",
            ["may19_2021", "bad.toml"],
            r,
            "bad.toml",
            "open_interest_growth",
            files={"bad.toml": event("pre_event.assets.BTC.open_interest_growth", figure(20, "1"))},
        ),
        Case(
            "fit: backtest --dry-run of an unknown event",
            {},
            ("backtest", "joint_events", "--event", "nope", "--dry-run"),
            r,
            ("--event", "nope"),
        ),
        Case(
            "fit: backtest --dry-run describes the backtest",
            {},
            ("backtest", "joint_events", "--dry-run"),
            "ok",
            ("backtest holding out",),
        ),
    ]


def run_cases() -> list[Case]:
    """A run's identity: resume, shards and combine after the book changed (slow: they simulate)."""
    r, old, new = "refuse", sha12(GOOD), sha12(EDITED)
    run_pos = ("run", "cfg.toml", *RUN)
    sweep = ("--set", "sweep.policy.leverage_cap=[20, 125]")
    shard = lambda i: ("run", "cfg.toml", *RUN, "--shard", f"{i}/2", *sweep)
    files = {"cfg.toml": POS, "book.csv": GOOD}
    slow = {"slow": True}
    return [
        Case("run: a good positions book", files, run_pos, "ok", ("run directory",), **slow),
        Case(
            "run: --resume after the positions file changed",
            files,
            ("run", "--resume", "out"),
            r,
            ("book.csv", old, new),
            (run_pos,),
            {"book.csv": EDITED},
            **slow,
        ),
        Case(
            "run: combine after the positions file changed",
            files,
            ("combine", "out"),
            r,
            ("book.csv", old, new),
            (run_pos,),
            {"book.csv": EDITED},
            **slow,
        ),
        Case(
            "run: a shard after the positions file changed",
            files,
            shard(1),
            r,
            ("book.csv", old, new),
            (shard(0),),
            {"book.csv": EDITED},
            **slow,
        ),
        Case(
            "run: --resume after the map changed",
            {"cfg.toml": MAP, "map.csv": GOOD_MAP},
            ("run", "--resume", "out"),
            r,
            ("map.csv", sha12(GOOD_MAP), sha12(GOOD_MAP + "SOL,short,250,1e6\n")),
            (run_pos,),
            {"map.csv": GOOD_MAP + "SOL,short,250,1e6\n"},
            **slow,
        ),
        Case(
            "run: --resume after the positions file was deleted",
            files,
            ("run", "--resume", "out"),
            r,
            ("book.csv", old),
            (run_pos,),
            {"book.csv": None},
            **slow,
        ),
        Case(
            "run: --set book.positions relative, --resume from elsewhere",
            {"cfg.toml": PLAIN, "book.csv": GOOD, "elsewhere/.keep": ""},
            ("run", "--resume", "../out"),
            "ok",
            ("already complete",),
            (("run", "cfg.toml", *RUN, "--set", "book.positions=book.csv"),),
            cwd="elsewhere",
            **slow,
        ),
        Case(
            "run: stop order on the wrong side",
            {
                "cfg.toml": toml(
                    book={"stops": [{"asset": "BTC", "side": "long", "price": 110000, "notional_usd": 1e6}]}
                )
            },
            ("run", "cfg.toml", *RUN),
            r,
            ("book.stops.0.price",),
            **slow,
        ),
        Case(
            "int: SIGTERM in a long run",
            {"cfg.toml": PLAIN},
            ("run", "cfg.toml", "--paths", "2000000", "--no-report", "--run-dir", "out"),
            "interrupt",
            ("interrupted",),
            **slow,
        ),
    ]


def cases() -> list[Case]:
    """Every case of the corpus, by group."""
    groups = (
        column_cases,
        value_cases,
        unit_cases,
        encoding_cases,
        account_cases,
        parquet_cases,
        map_cases,
        config_cases,
        event_cases,
        make_book_cases,
        fit_cases,
        run_cases,
    )
    out = [c for g in groups for c in g()]
    names = [c.name for c in out]
    assert len(set(names)) == len(names), "case names must be unique"
    return out


# ----------------------------------------------------------------------------------------
# Running and classifying
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """What one command did: exit code (None: killed at the timeout), output and seconds."""

    argv: tuple[str, ...]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    @property
    def flat(self) -> str:
        """The output with whitespace collapsed (the console wraps long lines)."""
        return " ".join(self.text.split())

    def lines(self, prefix: str) -> list[str]:
        """Output lines starting with `prefix`: `warning:` as the CLI prints it (not a table's
        "Warning:" note), `error:` also as click prints a usage error ("Error:")."""
        keep = (lambda ln: ln.lower()) if prefix == "error:" else (lambda ln: ln)
        return [ln for ln in self.text.splitlines() if keep(ln.strip()).startswith(prefix)]


@dataclasses.dataclass
class Outcome:
    """A case's classification (`ORDER`), why, and the commands it ran (setup, check, judged)."""

    name: str
    expect: str
    outcome: str
    detail: str
    results: list[Result]

    def record(self) -> dict:
        last = self.results[-1] if self.results else None
        return {
            "name": self.name,
            "expect": self.expect,
            "outcome": self.outcome,
            "detail": self.detail,
            "commands": [
                {
                    "command": command(r.argv),
                    "rc": r.rc,
                    "seconds": round(r.seconds, 1),
                    "output": r.text[-4000:],
                }
                for r in self.results
            ],
            "rc": None if last is None else last.rc,
        }


def command(argv) -> str:
    return "liqstress " + " ".join(shlex.quote(a) for a in argv)


CAPPED = (
    "import resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_AS, (n, n)); "
    "from engine.cli import main; main(sys.argv[2:])"
)


def execute(argv, cwd: Path, env: dict, *, capped: bool = False, signal_after: float | None = None) -> Result:
    """Run `python -m engine *argv` in `cwd` in its own process group; kill the group at the
    timeout. With `signal_after`, send SIGTERM that many seconds after the run prints its plan
    and allow `STOP_S` seconds to exit."""
    cmd = [sys.executable, "-c", CAPPED, str(MEMORY_CAP)] if capped else [sys.executable, "-m", "engine"]
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [*cmd, *argv], cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
        )
        rc = _wait(proc, err, signal_after)
        out.seek(0)
        err.seek(0)
        return Result(tuple(argv), rc, out.read(), err.read(), time.monotonic() - start)


def _wait(proc: subprocess.Popen, err, signal_after: float | None) -> int | None:
    """The exit code of `proc`, or None after killing its group at the timeout (or when it
    does not stop within `STOP_S` seconds of SIGTERM)."""
    deadline = time.monotonic() + TIMEOUT_S
    if signal_after is not None:
        while proc.poll() is None and time.monotonic() < deadline:
            err.seek(0)
            if "paths per point" in err.read():
                time.sleep(signal_after)
                break
            time.sleep(0.2)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_S
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def write_files(root: Path, files: dict) -> None:
    """Write `files` {relative path: text (UTF-8) or bytes, None to delete} under `root`."""
    for name, content in files.items():
        path = root / name
        if content is None:
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with a digest of its contents (lock files included)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def precheck(case: Case) -> tuple[str, ...] | None:
    """The command that should have known: `validate` for `run CONFIG [--set ...]` with the
    corpus's run options (`RUN`), `--dry-run` for a fit. None when the case has setup steps (its
    outcome depends on them) or other options (which validate does not take)."""
    argv = case.argv
    if case.setup or case.expect == "interrupt":
        return None
    if argv[0] == "run" and argv[-len(RUN) :] == RUN and "--shard" not in argv:
        sets = [x for i, a in enumerate(argv) if a == "--set" for x in ("--set", argv[i + 1])]
        return ("validate", argv[1], *sets)
    if argv[0] in ("calibrate", "optimise", "backtest") and "--dry-run" not in argv:
        return (*argv, "--dry-run")
    return None


def follow_up(case: Case) -> tuple[str, ...] | None:
    """For a `validate` case expected to refuse: the run of the same config, to see whether
    what validate let through fails later or passes silently."""
    if case.argv[0] != "validate" or case.expect != "refuse":
        return None
    return ("run", *case.argv[1:], *RUN)


def run_case(case: Case, root: Path, env: dict) -> Outcome:
    """Set up, run and classify one case in a fresh directory under `root`."""
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        home = Path(tmp)
        write_files(home, case.files)
        cwd = home / case.cwd
        cwd.mkdir(parents=True, exist_ok=True)
        results = []
        for argv in case.setup:
            results.append(execute(argv, home, env))
            if results[-1].rc != 0:
                kind = "traceback" if "Traceback" in results[-1].text else "setup"
                return Outcome(
                    case.name, case.expect, kind, f"setup `{command(argv)}` exited {results[-1].rc}", results
                )
        write_files(home, case.edits)
        pre = precheck(case)
        if pre is not None:
            results.append(execute(pre, cwd, env))
        before = snapshot(home)
        signal_after = 3.0 if case.expect == "interrupt" else None
        main = execute(case.argv, cwd, env, capped=case.capped, signal_after=signal_after)
        results.append(main)
        wrote = snapshot(home) != before
        outcome, detail = classify(case, main, results[0] if pre is not None else None, wrote, home)
        after = follow_up(case)
        if outcome == "silent" and after is not None:
            results.append(execute(after, cwd, env))
            outcome, detail = classify_follow_up(case, results[-1])
        detail = detail.replace(f"{home}/", "")  # the case's files by their own names
        return Outcome(case.name, case.expect, outcome, detail, results)


def classify(case: Case, r: Result, pre: Result | None, wrote: bool, home: Path) -> tuple[str, str]:
    """(outcome, detail) of the judged command `r` (`pre`: its validate or dry run, if any)."""
    if "Traceback" in r.text or (pre is not None and "Traceback" in pre.text):
        return "traceback", _first_line(r.text, "traceback")
    if r.rc is None:
        return "hang", f"no exit within {STOP_S if case.expect == 'interrupt' else TIMEOUT_S} s"
    pre_ok = pre is not None and pre.rc == 0
    if pre_ok and r.rc == 1:
        return "late", f"`{command(pre.argv)}` said ok; the run exited 1: {_first_line(r.text, 'error:')}"
    missing = [n for n in case.needles if " ".join(n.split()) not in r.flat]
    if case.expect == "interrupt":
        return _interrupted(r, home, missing)
    if case.expect == "refuse":
        if r.rc == 0:
            warned = r.lines("warning:")
            return (
                ("wrong code", f"warned instead of refusing: {warned[0]}") if warned else ("silent", "exit 0")
            )
        if pre_ok and r.rc == 2:
            return (
                "missed",
                f"`{command(pre.argv)}` said ok; the run refused: {_first_line(r.text, 'error:')}",
            )
        if r.rc != 2:
            return "wrong code", f"exit {r.rc}: {_first_line(r.text, 'error:')}"
        errors = r.lines("error:")
        if len(errors) != 1 or missing or wrote:
            why = [f"{len(errors)} error lines"] * (len(errors) != 1) + [f"lacks {missing}"] * bool(missing)
            return "unclear", "; ".join(why + ["wrote files"] * wrote) + f": {_first_line(r.text, 'error:')}"
        return "pass", _first_line(r.text, "error:")
    if r.rc != 0:
        return "wrong code", f"exit {r.rc}: {_first_line(r.text, 'error:')}"
    if case.expect == "warn":
        warned = r.lines("warning:")
        if not warned:
            return "silent", "exit 0 without a warning"
        said = " ".join(" ".join(warned).split())
        unnamed = [n for n in case.needles if " ".join(n.split()) not in said]
        if unnamed:
            return "unclear", f"warning lacks {unnamed}: {warned[0].strip()}"
        return "pass", warned[0].strip()
    if missing:
        return "unclear", f"output lacks {missing}"
    return "pass", (r.lines("warning:") or [""])[0].strip()


def _interrupted(r: Result, home: Path, missing: list[str]) -> tuple[str, str]:
    """An interrupted run: exit 130 and a manifest not left at `running`."""
    if r.rc != 130:
        return "wrong code", f"exit {r.rc} after SIGTERM: {_first_line(r.text, 'error:')}"
    manifest = home / "out" / "manifest.json"
    status = json.loads(manifest.read_text()).get("status") if manifest.is_file() else "none"
    if status == "running" or missing:
        return "unclear", f"manifest status {status}; lacks {missing}"
    return "pass", f"exit 130, manifest status {status}"


def classify_follow_up(case: Case, r: Result) -> tuple[str, str]:
    """A `validate` that let a bad input through, judged by what the run then did."""
    if "Traceback" in r.text:
        return "traceback", f"validate said ok; the run: {_first_line(r.text, 'traceback')}"
    if r.rc is None:
        return "hang", f"validate said ok; the run did not exit within {TIMEOUT_S} s"
    if r.rc == 1:
        return "late", f"validate said ok; the run exited 1: {_first_line(r.text, 'error:')}"
    if r.rc == 2:
        return "missed", f"validate said ok; the run refused: {_first_line(r.text, 'error:')}"
    return "silent", "validate and a run both exit 0" + (" (the run warns)" if r.lines("warning:") else "")


def _first_line(text: str, key: str) -> str:
    """The message at the first line holding `key` (case-insensitive) with the lines that
    continue it up to a blank one (an `error: file:` line gives the field on the next), else the
    last non-empty line; for a traceback, its last line (the exception)."""
    lines = [ln.strip() for ln in text.splitlines()]
    given = [ln for ln in lines if ln]
    if key == "traceback" or not any(key in ln.lower() for ln in lines):
        return (given[-1:] or [""])[0][:300]
    start = next(i for i, ln in enumerate(lines) if key in ln.lower())
    end = next((i for i in range(start + 1, len(lines)) if not lines[i]), len(lines))
    return " ".join(lines[start:end])[:300]


# ----------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the corpus; exit 0 when every case passes, 1 otherwise (2: the engine does not start)."""
    ap = argparse.ArgumentParser(prog="python -m tests.cli.corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run the cases whose name matches this regular expression")
    ap.add_argument("--skip-slow", action="store_true", help="skip the cases that simulate")
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("--json", type=Path, help="write every outcome to this JSON file")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    chosen = [
        c
        for c in cases()
        if (args.only is None or re.search(args.only, c.name)) and not (args.skip_slow and c.slow)
    ]
    if args.list:
        for c in chosen:
            print(f"{c.expect:9} {'slow ' if c.slow else '     '}{c.name}")
        return 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="liqstress-corpus-") as tmp:
        root = Path(tmp)
        # a compilation cache of the corpus's own (removed with it), shared by its runs
        env = os.environ | {"JAX_PLATFORMS": "cpu", "LIQSTRESS_CACHE_DIR": str(root / "jax-cache")}
        # an engine that does not import (a change half made) would fail every case alike
        alive = execute(("--version",), root, env)
        if alive.rc != 0:
            print(f"the engine does not start; no case run:\n{alive.text}", file=sys.stderr)
            return 2
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            done = list(pool.map(lambda c: _announce(run_case(c, root, env)), chosen))
    report(done, time.monotonic() - start)
    if args.json:
        args.json.write_text(json.dumps([o.record() for o in done], indent=1))
    return 0 if all(o.outcome == "pass" for o in done) else 1


def _announce(o: Outcome) -> Outcome:
    """Print one line per finished case as it ends (cases run in parallel)."""
    print(f"{o.outcome:10} {o.name}", file=sys.stderr, flush=True)
    return o


def report(done: list[Outcome], seconds: float) -> None:
    """The table of outcomes, the counts, and the failing cases with their commands."""
    width = max((len(o.name) for o in done), default=10)
    print(f"\n{'case':{width}}  {'expect':9} {'outcome':10} rc    s  detail")
    for o in done:
        last = o.results[-1] if o.results else None
        rc = "-" if last is None or last.rc is None else str(last.rc)
        secs = sum(r.seconds for r in o.results)
        print(f"{o.name:{width}}  {o.expect:9} {o.outcome:10} {rc:>3} {secs:4.0f}  {o.detail[:120]}")
    counts = {k: sum(o.outcome == k for o in done) for k in ORDER}
    print(
        f"\n{len(done)} cases in {seconds:.0f} s: {counts['traceback']} tracebacks, {counts['silent']} silent, "
        f"{counts['late']} late, {counts['hang']} hangs; {counts['missed']} missed by validate, "
        f"{counts['wrong code']} wrong code, {counts['unclear']} unclear, {counts['setup']} setup failures; "
        f"{counts['pass']} pass"
    )
    failed = [o for o in done if o.outcome != "pass"]
    for o in sorted(failed, key=lambda o: ORDER.index(o.outcome)):
        print(f"\n--- {o.outcome}: {o.name}\n    {o.detail}")
        for r in o.results:
            tail = "\n".join("      " + ln for ln in r.text.strip().splitlines()[-6:])
            print(f"    $ {command(r.argv)}  (exit {r.rc})\n{tail}")


if __name__ == "__main__":
    sys.exit(main())
