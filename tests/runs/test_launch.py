"""`engine.runs.launch`: the Python API behind `liqstress run` (no simulation here)."""

import hashlib
import json
from pathlib import Path

import pytest

from engine.config.errors import ConfigError
from engine.runs import launch

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quick.toml")


def test_typed_paths_and_seed_equal_their_set_items(tmp_path):
    typed = launch.start(QUICK, n_paths=256, seed=3, run_dir=tmp_path / "typed")
    sets = launch.start(QUICK, sets=["run.n_paths=256", "run.seed=3"], run_dir=tmp_path / "sets")
    assert typed.study.config.run.n_paths == 256 and typed.study.config.run.seed == 3
    assert typed.study.resolved_toml() == sets.study.resolved_toml()
    assert typed.manifest["config_sha256"] == sets.manifest["config_sha256"]
    # the typed options come after the --set items, as on the command line
    last = launch.start(QUICK, sets=["run.n_paths=512"], n_paths=256, run_dir=tmp_path / "last")
    assert last.study.config.run.n_paths == 256


def test_a_new_run_goes_under_runs_root_named_after_the_config(tmp_path):
    run = launch.start(QUICK, runs_root=tmp_path)
    assert run.path.parent == tmp_path and run.path.name.endswith("_quick")
    assert launch.resume_state(run) == "run"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_paths": 20_000_000_000}, "--paths 20000000000:\nrun.n_paths"),
        ({"seed": 2**63}, "--seed 9223372036854775808:"),
        ({"shard": (0, 2)}, "--shard needs --run-dir"),
    ],
)
def test_errors_name_the_option_and_nothing_is_written(tmp_path, kwargs, message):
    with pytest.raises(ConfigError) as err:
        launch.start(QUICK, runs_root=tmp_path, **kwargs)
    assert str(err.value).startswith(message)
    assert not any(tmp_path.iterdir())


def test_resume_takes_no_config_options(tmp_path):
    d = launch.start(QUICK, run_dir=tmp_path / "run").path
    with pytest.raises(ConfigError, match=r"--resume uses the run's own config.toml; drop CONFIG, --seed"):
        launch.start(QUICK, resume=d, seed=4)
    # a zero or an empty value is an option given all the same
    with pytest.raises(ConfigError, match=r"drop --paths, --seed, --set$"):
        launch.start(resume=d, n_paths=0, seed=0, sets=["policy.leverage_cap=20"])
    resumed = launch.start(resume=d)
    assert resumed.path == d and launch.resume_state(resumed) == "run"


def test_resume_state_of_a_complete_run_checks_its_cube(tmp_path):
    run = launch.start(QUICK, run_dir=tmp_path / "run")
    run.mark(status="complete")
    assert launch.resume_state(run) == "rebuild"  # no cube.nc, no hash
    (run.path / "cube.nc").write_bytes(b"cube")
    run.mark(cube_sha256="0" * 64)
    assert launch.resume_state(run) == "rebuild"  # altered
    run.mark(cube_sha256=hashlib.sha256(b"cube").hexdigest())
    assert launch.resume_state(run) == "complete"
    assert json.loads((run.path / "manifest.json").read_text())["status"] == "complete"
