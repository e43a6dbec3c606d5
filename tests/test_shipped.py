"""What ships with the repository and the package: the configs folder mirrors the packaged
configs (with their sample files), every shipped config runs by name from any directory, and
the README and docs name only files inside the repository."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from engine import cli
from engine.config.files import packaged_configs_dir

ROOT = Path(__file__).resolve().parents[1]
# Text a user reads or a config names: none of it may point outside a clone of the repository.
DOCUMENTS = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks").glob("*.md")]
CONFIGS = [*(ROOT / "engine" / "configs").rglob("*.toml"), *(ROOT / "benchmarks").glob("*.toml")]
# Code and data of the package: its comments and sources may not point outside either.
PACKAGE = [p for p in (ROOT / "engine").rglob("*") if p.suffix in (".py", ".toml")]


def test_configs_folder_holds_the_packaged_configs_and_their_sample_books():
    packaged = packaged_configs_dir()
    shipped = sorted(p.relative_to(packaged) for p in packaged.rglob("*") if p.is_file())
    assert Path("oct10_2025_collateral.toml") in shipped
    assert Path("examples/oct10_2025_book.parquet") in shipped
    for rel in shipped:
        assert (ROOT / "configs" / rel).read_bytes() == (packaged / rel).read_bytes(), rel
    top = sorted(p.name for p in (ROOT / "configs").glob("*.toml"))
    assert top == sorted(str(rel) for rel in shipped if rel.suffix == ".toml" and rel.parent == Path("."))


def test_collateral_example_validates_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["validate", "oct10_2025_collateral"]  # its sample book starts alive: no override
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "oct10_2025_collateral: ok: oct10_2025_collateral: 4 assets" in flat
    assert "scenario.depegs.0.gap (2); 2 points" in flat
    assert not any(tmp_path.iterdir())


def test_documents_and_configs_name_no_file_outside_the_repository():
    for path in DOCUMENTS + CONFIGS + PACKAGE:
        text = path.read_text(encoding="utf-8")
        assert "../shared" not in text and "DATA.md" not in text, path.relative_to(ROOT)
    assert "docs/data.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/data.md" in (ROOT / "engine" / "configs" / "oct10_2025.toml").read_text(encoding="utf-8")
