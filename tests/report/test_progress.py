"""Progress for people: the forecast after the second compiled call, compilation excluded, and
log lines that say what a path-point is."""

from __future__ import annotations

import io

from engine.report import progress as P
from engine.runs.execute import RunProgress


def _event(work: float) -> RunProgress:
    return RunProgress(work, 10_000, 0, 4, 0, 2)


def test_forecast_after_the_second_call_at_its_pace(monkeypatch):
    """Start at t=0, a first call of 100 path-points ending at 30 s (compilation), a second of
    100 more at 31 s: the remaining 9,800 at 100 per second, about 98 s (not 30 s per 100)."""
    clock = iter([0.0, 30.0, 30.5, 31.0, 40.0])
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(clock))
    seen, said = [], []
    forecast = P.Forecast(seen.append, said.append)
    for work in (0, 100, 100, 200, 300):  # the repeat: a dense rerun's call, no new work
        forecast(_event(work))
    assert [e.work_done for e in seen] == [0, 100, 100, 200, 300]
    assert said == [
        (
            "first call: 1% of the work in 30.0 s, compilation included; "
            "the next: 1% in 1.0 s; the other 98% at that pace: about 98 s"
        )
    ]


def test_no_forecast_for_a_run_that_ends_with_its_first_calls(monkeypatch):
    clock = iter([0.0, 1.0, 2.0])
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(clock))
    said = []
    forecast = P.Forecast(lambda ev: None, said.append)
    for work in (0, 5_000, 10_000):
        forecast(_event(work))
    assert said == []


def test_log_lines_count_path_points(monkeypatch):
    clock = iter([0.0, 50.0])
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    log = P.LogReporter(stream, "sweep")
    log(_event(0))
    log(_event(2_500.5))
    first, second = stream.getvalue().splitlines()
    assert first.endswith("sweep: 4 points in 2 parts, 0 done, 10,000 path-points (paths x points)")
    assert "| path-points 2,500/10,000 | 50 path-points/s |" in second
