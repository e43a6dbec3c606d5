"""The benchmark runner runs and writes well-formed results (no timing assertions)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
RESULTS = ROOT / "benchmarks" / "results"


def bench_module():
    sys.path.insert(0, str(RUN.parent))
    try:
        import run as bench
    finally:
        sys.path.pop(0)
    return bench


def digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_quick_benchmark_writes_results_to_a_run_directory_not_the_checkout(tmp_path):
    before = digests(RESULTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--workload", "W1", "--name", "quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert digests(RESULTS) == before  # the tracked results are untouched without --save
    (written,) = (tmp_path / "runs").glob("*_bench_quick/quick.json")
    assert f"wrote {written.relative_to(tmp_path)}" in proc.stdout
    doc = json.loads(written.read_text())
    assert {"cpu_model", "cpu_cores", "jax", "platform", "devices"} <= set(doc["machine"])
    (rec,) = doc["records"]
    assert rec["workload"] == "W1" and rec["quick"]
    for key in ("path_steps_per_s", "wall_s", "compile_s", "steady_s", "peak_rss_bytes"):
        assert rec[key] > 0 or key == "compile_s", key
    assert rec["path_steps"] == rec["paths"] * rec["steps"] * rec["points"]
    assert rec["rng"]["rng_s"] > 0 and rec["rng"]["sim_over_rng"] > 0
    # one step of the 256-cohort book touches every cohort: well over 256 values of 4 B
    assert rec["step_cost"]["bytes_per_path_step"] > 4 * 256 and rec["step_cost"]["flops_per_path_step"] > 256
    assert "available" in rec["numpy"]
    assert "| W1 quick |" in proc.stdout


def test_results_go_to_the_tracked_folder_only_with_save(tmp_path, monkeypatch):
    bench = bench_module()
    monkeypatch.chdir(tmp_path)
    assert bench.results_dir(None, True, "quick") == RESULTS
    assert bench.results_dir(tmp_path / "x", False, "quick") == tmp_path / "x"
    default = bench.results_dir(None, False, "quick")
    assert default.parent == Path("runs") and default.name.endswith("_bench_quick")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--quick", "--save", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert not any(tmp_path.iterdir())


def test_workloads_have_the_stated_shapes():
    bench = bench_module()
    shapes = {}
    for name in ("W1", "W2", "W3", "W4"):
        cfg, pts, _ = bench.load_workload(name)
        shapes[name] = (
            len(cfg.market.assets),
            cfg.run.n_paths,
            cfg.run.steps,
            cfg.book.cohorts_per_asset,
            len(pts),
        )
        quick, qpts, _ = bench.load_workload(name, quick=True)
        assert quick.run.n_paths * quick.run.steps * len(qpts) <= 50_000
    assert shapes == {
        "W1": (1, 1_000_000, 288, 256, 1),
        "W2": (4, 100_000, 288, 2048, 64),
        "W3": (1, 100, 7200, 2000, 1),
        "W4": (4, 100_000, 288, 16_384, 1),
    }
    # the cohorts axis of --scaling: W1 with 64 cohorts per entry price
    for e in bench.SCALING_ENTRY_POINTS:
        cfg, _, _ = bench.load_workload("W1", paths=bench.SCALING_COHORTS_PATHS, entry_points=e)
        assert cfg.book.cohorts_per_asset == 64 * e and cfg.run.n_paths == 8192


def test_quick_w4_runs_on_the_ladder_like_its_full_size():
    from engine.config import build, forms

    bench = bench_module()
    full, pts, _ = bench.load_workload("W4")
    quick, qpts, _ = bench.load_workload("W4", quick=True)
    assert full.run.kernel == "auto" and quick.run.kernel == "ladder"
    assert forms.specialise(build.static_of(full), pts).ladder > 0  # "auto" picks it at full size
    assert forms.specialise(build.static_of(quick), qpts).ladder > 0
    assert quick.run.steps > quick.scenario.shock_start + quick.scenario.shock_steps  # the crash is in
