"""Progress of a run for people: a rich progress bar on a terminal, plain log lines otherwise,
and a forecast after the first chunk (`FirstChunk`).

All take `engine.runs.execute.RunProgress` events. Work is counted in path-points (one path
under one grid point, the baseline's repeat in each part included), so the rate is paths per
second and the ETA covers the whole sweep.
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
        return Text(f"{speed:,.0f} paths/s" if speed else "-- paths/s", style="progress.data.speed")


def _hms(seconds: float) -> str:
    return str(dt.timedelta(seconds=int(max(seconds, 0))))


class BarReporter:
    """A rich progress bar: points and paths done, paths/s, elapsed time and ETA."""

    def __init__(self, console: Console, title: str):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=20),
            TaskProgressColumn(),
            TextColumn("points {task.fields[points]}"),
            TextColumn("paths {task.completed:,.0f}/{task.total:,.0f}"),
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
                f"{ev.parts_done} done, {ev.work_total:,} path-points"
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
            f"paths {ev.work_done:,}/{ev.work_total:,} | {rate:,.0f} paths/s | elapsed {_hms(elapsed)} | "
            f"ETA {'--' if math.isnan(eta) else _hms(eta)}"
        )

    def _line(self, text: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"[{stamp}] {text}", file=self.stream, flush=True)


class FirstChunk:
    """Progress that, once the run's first chunk is done, says (through `say`) how long it took
    (compilation included) and how long the rest takes at that pace, then passes every event on
    to `progress`."""

    def __init__(self, progress: Callable[[RunProgress], None], say: Callable[[str], None]):
        self.progress, self.say = progress, say
        self.start: tuple[float, int] | None = None  # (time, work done) of the first event
        self.told = False

    def __call__(self, ev: RunProgress) -> None:
        self.progress(ev)
        now = time.perf_counter()
        if self.start is None:
            self.start = (now, ev.work_done)
            return
        t0, work0 = self.start
        left = ev.work_total - ev.work_done
        if not self.told and ev.work_done > work0 and left > 0:
            self.told = True
            elapsed, done = now - t0, ev.work_done - work0
            self.say(
                f"first chunk: {done:,} path-points in {elapsed:.1f} s, compilation included "
                f"(so this overestimates); the other {left:,} at that pace: "
                f"about {duration(left * elapsed / done)}"
            )


def duration(seconds: float) -> str:
    """`42 s`, `3.5 min`, `7.2 h`, `12.3 days`, `4.1 years`."""
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"
