"""The files a run's config reads (its book) are part of the run: the manifest records their
absolute paths and SHA-256, and `--resume`, a shard joining and `combine` refuse a changed one;
relative paths resolve against the config file, or the current directory for `--set` items."""

import hashlib
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import cli
from engine.config.errors import ConfigError
from engine.config.files import input_files, load_study
from engine.runs import execute, launch, rundir

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quick.toml")
# A liquidation map of quick's assets (BTC at 100,000, SOL at 200): one cohort per level.
MAP = "asset,side,price,notional_usd\nBTC,long,95000,1e8\nBTC,short,110000,1e8\nSOL,long,150,2e7\n"
EDITED = MAP.replace("1e8\nBTC,short", "3e8\nBTC,short")
ONE_POINT = ("sweep.policy.leverage_cap=[125]", 'sweep.policy.breaker.kind=["none"]')


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its contents (the lock files are empty)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def cli_run(*argv: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli.app, list(argv))
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def book(tmp_path) -> Path:
    path = tmp_path / "map.csv"
    path.write_text(MAP)
    return path


def test_the_manifest_records_each_input_with_its_absolute_path_and_hash(tmp_path, book):
    run = launch.start(QUICK, sets=[f'book.liquidation_map="{book}"'], run_dir=tmp_path / "run")
    want = {"book.liquidation_map": {"path": str(book), "sha256": sha(book)}}
    assert run.manifest["inputs"] == want
    assert json.loads((run.path / "manifest.json").read_text())["inputs"] == want
    assert launch.start(QUICK, run_dir=tmp_path / "plain").manifest["inputs"] == {}


def test_set_paths_are_relative_to_the_current_directory_and_resume_works_from_anywhere(
    tmp_path, book, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    d = launch.start(QUICK, sets=["book.liquidation_map=map.csv"], run_dir=Path("run")).path
    assert f'liquidation_map = "{book}"' in (tmp_path / "run" / "config.toml").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resumed = launch.start(resume=tmp_path / d)
    assert resumed.study.config.book.liquidation_map == str(book)


def test_a_config_files_sweep_over_books_resolves_against_the_file(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    for name in ("a.csv", "b.csv"):
        (cfg / name).write_text(MAP)
    (cfg / "c.toml").write_text(
        f'base = "{QUICK}"\n[book]\nliquidation_map = "a.csv"\n'
        '[sweep.book]\nliquidation_map = ["a.csv", "b.csv"]\n'
    )
    monkeypatch.chdir(tmp_path)  # not the config's directory
    study = load_study(cfg / "c.toml", ['sweep.baseline.book.liquidation_map="cfg/b.csv"'])
    a, b = str(cfg / "a.csv"), str(cfg / "b.csv")
    assert input_files(study) == {
        "book.liquidation_map": a,
        "sweep.book.liquidation_map[0]": a,
        "sweep.book.liquidation_map[1]": b,
    }
    assert study.points[study.baseline].book.liquidation_map == b


@pytest.fixture
def started(tmp_path, book) -> tuple[Path, list[str]]:
    """A one-point run of quick on `book`, created by shard 0 of 2 and not run yet, and the
    options that made it."""
    sets = [f'book.liquidation_map="{book}"', *ONE_POINT]
    d = tmp_path / "run"
    launch.start(QUICK, sets=sets, n_paths=256, run_dir=d, shard=(0, 2))
    return d, [a for s in sets for a in ("--set", s)] + ["--paths", "256"]


@pytest.mark.parametrize("how", ["resume", "shard", "combine"])
def test_a_changed_book_is_refused_naming_both_hashes_and_nothing_is_written(started, book, how):
    d, options = started
    then = sha(book)
    book.write_text(EDITED)
    before = tree(d)
    argv = {
        "resume": ["run", "--resume", str(d)],
        "shard": ["run", QUICK, "--run-dir", str(d), "--shard", "1/2", *options],
        "combine": ["combine", str(d)],
    }[how]
    output = cli_run(*argv, "--no-report", code=2).replace("\n", "")
    assert (
        f"book.liquidation_map = {book}: changed since the run started "
        f"(sha256 {then[:12]} then, {sha(book)[:12]} now)"
    ) in output
    assert "restore the file, or start a new run" in output
    assert tree(d) == before


def test_a_missing_book_is_refused_and_a_restored_one_accepted(started, book):
    d, _ = started
    then = sha(book)
    book.unlink()
    gone = re.escape(f"--resume {d}: book.liquidation_map = {book}: cannot be read now")
    with pytest.raises(ConfigError, match=f"^{gone}"):
        launch.start(resume=d)
    book.write_text(EDITED)
    with pytest.raises(ConfigError, match=f"sha256 {then[:12]} then"):
        launch.start(resume=d)
    book.write_text(MAP)
    assert launch.start(resume=d).manifest["inputs"]["book.liquidation_map"]["sha256"] == then


def test_a_manifest_of_an_older_version_without_inputs_opens(started, book):
    d, _ = started
    m = json.loads((d / "manifest.json").read_text())
    del m["inputs"]
    (d / "manifest.json").write_text(json.dumps(m))
    book.write_text(EDITED)  # nothing recorded: nothing to check
    assert "inputs" not in rundir.open_run(d).manifest


def test_resume_from_another_directory_runs_the_book_of_the_run(tmp_path, book, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = ["book.liquidation_map=map.csv", *ONE_POINT]
    d = launch.start(QUICK, sets=sets, n_paths=256, run_dir=tmp_path / "run").path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli_run("run", "--resume", str(d), "--no-progress", "--no-report")
    assert json.loads((d / "manifest.json").read_text())["status"] == "complete"
    assert execute.load_cube(d).sizes["asset"] == 2


def test_a_book_edited_while_a_run_goes_on_stops_it_before_the_next_part(tmp_path, book):
    """Part 0 is written with the first book; the book is edited as part 0 finishes; part 1
    is simulated (on the new book) but not written, and the run fails naming both hashes."""
    sets = [f'book.liquidation_map="{book}"', "sweep.policy.leverage_cap=[25, 125]"]
    sets += ['sweep.policy.breaker.kind=["none"]', "sweep.points_per_part=1", "run.n_paths=64"]
    run = launch.start(QUICK, sets=sets, run_dir=tmp_path / "run")
    first = sha(book)

    def edit_after_part_0(ev) -> None:
        if ev.part_finished == 0:
            book.write_text(EDITED)

    with pytest.raises(ConfigError) as err:
        execute.execute(run, progress=edit_after_part_0)
    assert str(err.value) == (
        f"part 1 not written: book.liquidation_map = {book}: changed since the run started (sha256 "
        f"{first[:12]} then, {sha(book)[:12]} now); the run's parts would mix two books: restore the "
        "file, or start a new run"
    )
    parts = json.loads((run.path / "manifest.json").read_text())["parts"]
    assert [p["status"] for p in parts] == ["done", "pending"]
    assert not (run.path / parts[1]["file"]).exists()
