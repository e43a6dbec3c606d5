"""Huge runs: `simulate` plans its chunks without listing them, and `liqstress run` says the
chunks, memory and time before and after the first chunk instead of starting silently."""

from __future__ import annotations

import itertools
import math

import tomli_w
from typer.testing import CliRunner

from engine import cli
from engine.config import build, forms
from engine.config.schema import Config
from engine.report.progress import LogReporter, share
from engine.sim import devices
from engine.sim import simulate as S  # the module, not the function `engine.simulate`
from tests.conftest import small_dict

TINY = small_dict(run={**small_dict()["run"], "n_paths": 64, "steps": 8, "fan_points": 4})


def test_plan_of_ten_billion_paths():
    cfg = Config.model_validate({**TINY, "run": {**TINY["run"], "n_paths": 10**10}})
    plan = S.plan(cfg)
    # a run this long is on the ladder kernel (`forms.specialise`), which sets the chunk and memory
    static = forms.specialise(build.static_of(cfg), [cfg])
    assert static.ladder > 0
    mesh = devices.path_mesh()
    assert plan.chunk == S.chunk_size(
        cfg, static, mesh.size, per_device_budget=mesh.devices.flat[0].platform != "cpu"
    )
    assert plan.chunks == math.ceil(10**10 / plan.chunk)
    assert plan.chunk_bytes == plan.chunk * S.bytes_per_path(static, 4)
    assert (
        f"10,000,000,000 paths per point in {plan.chunks:,} chunk(s) of {plan.chunk:,} paths"
        in plan.describe()
    )


def test_chunks_are_dispatched_one_ahead_without_listing_them():
    """`_ahead` over an endless task stream: task k + 1 is launched before task k is handed
    back (devices busy while the host reduces), and nothing beyond it is touched."""
    launched = []

    def launch(task):
        launched.append(task)
        return task * 10

    stream = S._ahead(itertools.count(), launch)
    assert next(stream) == (0, 0) and launched == [0, 1]
    assert next(stream) == (1, 10) and launched == [0, 1, 2]
    assert list(S._ahead(iter([7]), launch)) == [(7, 70)]
    assert list(S._ahead(iter([]), launch)) == []


class _StopAfter(LogReporter):
    """The plain reporter, interrupted (as by Ctrl-C) once the work done took a fourth value:
    after the forecast, which comes with the third (the start, then one event per compiled
    call; the ladder's dense reruns report no new work)."""

    def __call__(self, ev) -> None:
        super().__call__(ev)
        self.seen = getattr(self, "seen", set()) | {ev.work_done}
        if len(self.seen) == 4:
            raise KeyboardInterrupt


def test_ten_billion_paths_do_not_start_silently(tmp_path, monkeypatch):
    (tmp_path / "tiny.toml").write_text(tomli_w.dumps(TINY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        cli.run.reporting, "LogReporter", _StopAfter
    )  # engine.report.progress, as cli.run uses it
    argv = ["run", "tiny.toml", "--paths", "10000000000", "--no-progress", "--no-report"]
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 130, result.output
    plan = S.plan({**TINY, "run": {**TINY["run"], "n_paths": 10**10}})
    assert plan.call_steps == 8  # one call per chunk: the forecast comes after two chunks
    before, after = result.output.split("first call:", 1)
    assert plan.describe() in before and "of device memory per chunk" in before
    assert "kernel: ladder" in before
    one = share(plan.chunk, 10**10)  # one call per chunk
    assert (
        after.startswith(f" {one} of the work in ") and f"compilation included; the next: {one} in " in after
    )
    assert f"the other {share(10**10 - 2 * plan.chunk, 10**10)} at that pace: about " in after


def test_plan_says_calls_memory_and_kernel():
    """Steps per call from the cost model, memory below a MiB as such, and the kernel form."""
    plan = S.plan(TINY)
    memory = (
        "64 paths per point in 1 chunk(s) of 64 paths, each in 1 call(s) of 8 steps; "
        "under 1 MiB of device memory per chunk"
    )
    kernel = (
        "kernel: dense, for a small run (the ladder pays from 5,000,000,000 paths x steps x cohorts; "
        'run.kernel = "ladder" forces it); about 0.6x the cost per path-step of the ladder '
        "(README: Kernel forms and their cost)"
    )
    assert plan.describe().splitlines() == [memory, kernel]
