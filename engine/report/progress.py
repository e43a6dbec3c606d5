"""Progress of a run for people: a rich progress bar on a terminal, plain log lines otherwise,
and a forecast after the first calls (`Forecast`).

All take `engine.runs.execute.RunProgress` events, one after every compiled call (about a
second of work each, `engine.sim.cost`). Work is counted in path-points, paths x points (one
path under one grid point, the baseline's repeat in each part included; a chunk in progress by
the share of its steps done), so the rate is path-points per second and the ETA covers the
whole sweep.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Self, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from engine.runs.execute import RunProgress


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        text = f"{speed:,.0f} path-points/s" if speed else "-- path-points/s"
        return Text(text, style="progress.data.speed")


def _hms(seconds: float) -> str:
    return str(dt.timedelta(seconds=int(max(seconds, 0))))


class BarReporter:
    """A rich progress bar: points and path-points (paths x points) done, their rate, elapsed
    time and ETA."""

    def __init__(self, console: Console, title: str):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=20),
            TaskProgressColumn(),
            TextColumn("points {task.fields[points]}"),
            TextColumn("path-points {task.completed:,.0f}/{task.total:,.0f}"),
            _Rate(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.title = title
        self.task = None

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, ev: RunProgress) -> None:
        points = f"{ev.points_done}/{ev.points_total}"
        if self.task is None:
            self.task = self.progress.add_task(
                self.title, total=ev.work_total, completed=ev.work_done, points=points
            )
        self.progress.update(self.task, completed=ev.work_done, points=points)


class LogReporter:
    """One line per finished part, and one at most every `every_s` seconds within a part."""

    def __init__(self, stream: TextIO, title: str, every_s: float = 30.0):
        self.stream, self.title, self.every_s = stream, title, every_s
        self.t0 = self.last = None
        self.work0 = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __call__(self, ev: RunProgress) -> None:
        now = time.perf_counter()
        if self.t0 is None:
            self.t0, self.last, self.work0 = now, now, ev.work_done
            self._line(
                f"{self.title}: {ev.points_total} points in {ev.parts_total} parts, "
                f"{ev.parts_done} done, {ev.work_total:,} path-points (paths x points)"
            )
            return
        if ev.part_finished is None and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.t0
        rate = (ev.work_done - self.work0) / elapsed if elapsed > 0 else 0.0
        eta = (ev.work_total - ev.work_done) / rate if rate > 0 else float("nan")
        what = f"part {ev.part_finished} done" if ev.part_finished is not None else "working"
        self._line(
            f"{what} | parts {ev.parts_done}/{ev.parts_total} | points {ev.points_done}/{ev.points_total} | "
            f"path-points {ev.work_done:,.0f}/{ev.work_total:,} | {rate:,.0f} path-points/s | "
            f"elapsed {_hms(elapsed)} | "
            f"ETA {'--' if math.isnan(eta) else _hms(eta)}"
        )

    def _line(self, text: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"[{stamp}] {text}", file=self.stream, flush=True)


class Forecast:
    """Progress that passes every event on to `progress` and, once the run's second compiled call
    is done, says (through `say`) how long the first took (compilation included) and how long
    the rest takes at the pace of the second (compilation excluded): seconds after the start,
    not after the first chunk."""

    def __init__(self, progress: Callable[[RunProgress], None], say: Callable[[str], None]):
        self.progress, self.say = progress, say
        self.marks: list[tuple[float, float]] = []  # (time, work done) of the start and first calls
        self.told = False

    def __call__(self, ev: RunProgress) -> None:
        self.progress(ev)
        if self.told:
            return
        now = time.perf_counter()
        if self.marks and ev.work_done <= self.marks[-1][1]:
            return  # no new work (a rerun's call, a part's end)
        self.marks.append((now, ev.work_done))
        left = ev.work_total - ev.work_done
        if len(self.marks) < 3 or left <= 0:
            self.told = left <= 0
            return
        self.told = True
        (t0, _), (t1, w1), (t2, w2) = self.marks
        rate = (w2 - w1) / (t2 - t1)
        self.say(
            f"first call: {share(w1 - self.marks[0][1], ev.work_total)} of the work in {t1 - t0:.1f} s, "
            f"compilation included; the next: {share(w2 - w1, ev.work_total)} in {t2 - t1:.1f} s; the "
            f"other {share(left, ev.work_total)} at that pace: about {duration(left / rate)}"
        )


def share(part: float, whole: float) -> str:
    """`part` of `whole` as a percentage with two significant digits: `0.35%`, `50%`, `99.7%`
    (a call may do a fraction of a path-point: one step of a few paths)."""
    pct = 100.0 * part / whole
    return f"{pct:.3g}%" if pct >= 99.5 else f"{pct:.2g}%"


def duration(seconds: float) -> str:
    """`42 s`, `3.5 min`, `7.2 h`, `12.3 days`, `4.1 years`."""
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"
