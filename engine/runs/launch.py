"""Starting a run from what the user asked for: a new run directory, one shared by shards, or
one to resume. The Python API behind `liqstress run`, for a notebook as well:

    run_dir = start("quick", n_paths=10_000, seed=7)
    cube = execute(run_dir)            # engine.runs.execute
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from engine.config.errors import ConfigError
from engine.config.files import load_study
from engine.runs.execute import cube_intact
from engine.runs.rundir import RunDir, check_new_run_dir, create_run, default_run_dir, join_run, open_run


def start(
    config: str | Path | None = None,
    *,
    sets: Sequence[str] = (),
    n_paths: int | None = None,
    seed: int | None = None,
    run_dir: Path | None = None,
    resume: Path | None = None,
    shard: tuple[int, int] | None = None,
    runs_root: Path = Path("runs"),
    command: str = "",
) -> RunDir:
    """The run directory to `execute`: with `resume`, that run as it is; with `shard` (i, n),
    `run_dir` shared by the shards (`join_run`); else a new directory, `run_dir` or a new one
    under `runs_root` named after the time and the config.

    `config` is a file or a shipped config's name (None: the default scenario), changed by the
    `--set` items `sets`, then by `n_paths` and `seed`. `command` is recorded in the manifest.
    Raises `ConfigError` (naming the option at fault, as the CLI spells it) on an invalid config
    or combination of options; nothing is written then.
    """
    if shard and resume is None and run_dir is None:
        raise ConfigError("--shard needs --run-dir DIR (the directory all shards share)")
    if resume is not None:
        options = (("CONFIG", config), ("--run-dir", run_dir), ("--paths", n_paths), ("--seed", seed))
        # `is not None`: `--seed 0` is an option given too
        given = [name for name, value in options if value is not None] + ["--set"] * bool(sets)
        if given:
            raise ConfigError(f"--resume uses the run's own config.toml; drop {', '.join(given)}")
        return open_run(resume)
    study = load_study(config, list(sets), n_paths=n_paths, seed=seed)
    source = str(config or "default")
    if shard:
        return join_run(study, run_dir, source=source, command=command)
    target = run_dir if run_dir is not None else default_run_dir(runs_root, study.name)
    check_new_run_dir(target)
    return create_run(study, target, source=source, command=command)


def resume_state(run: RunDir) -> Literal["run", "rebuild", "complete"]:
    """What an opened run needs: its parts run (`run`), only its missing or damaged cube
    rebuilt from the parts (`rebuild`), or nothing (`complete`, its cube intact)."""
    if run.manifest["status"] != "complete":
        return "run"
    return "complete" if cube_intact(run) else "rebuild"
