"""The live view of a local run: per stage, mini-tasks done of total, time since it started, and an ETA.

The counts come from the result cache (``batch.stage_status``), polled from a background thread, so the
view needs nothing from Airflow. On a terminal a compact table is redrawn in place; anywhere else (a
pipe, a file) one plain line is written per change, without escape codes. Stages with nothing to do
(not asked for by the conf, or a graph layer above the root) and stages that cannot be planned yet
are not shown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

from emprocess.stages import RunContext

log = logging.getLogger("emprocess.progress")

POLL_SECONDS = 1.5
POLL_SHARE = 0.2  # polling (plans and listings) takes at most this share of the time: slow stores are polled less
JOIN_SECONDS = 10  # how long the end of a run waits for a poll under way before its last one
CURSOR_UP, CLEAR_LINE = "\x1b[{}A\r", "\x1b[2K"
NAME_WIDTH = 16
DEFAULT_COLUMNS = 80


def clock_time(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class StageClock:
    """One stage as the polls saw it. Its clock starts at the last poll that saw it untouched (its work
    began after that), so elapsed errs by at most one poll interval; its rate counts only the mini-tasks
    done since then, not those a resumed run found finished."""

    done: int
    total: int
    baseline: int  # done before any progress this run saw
    untouched_at: float
    started: float | None = None
    finished: float | None = None

    def observe(self, done: int, total: int, now: float) -> None:
        if self.started is None:
            if done > self.baseline:
                self.started = self.untouched_at
            else:
                self.untouched_at = now
        self.done, self.total = done, total
        if done < total:
            self.finished = None
        elif self.started is not None and self.finished is None:
            self.finished = now

    def elapsed(self, now: float) -> str:
        if self.started is None:
            return ""
        return clock_time((now if self.finished is None else self.finished) - self.started)

    def state(self, now: float) -> str:
        if self.started is None:
            return "done before this run" if self.done >= self.total else "waiting"
        if self.finished is not None:
            return "done"
        if self.done <= self.baseline:  # cache entries removed meanwhile: no rate to go by
            return "ETA unknown"
        rate = (self.done - self.baseline) / max(now - self.started, 1e-3)
        return f"ETA {clock_time((self.total - self.done) / rate)}"


class ProgressView:
    """Shows successive ``stage_status`` results on ``stream``: on a terminal the whole table each time,
    moving the cursor back up over the previous one; otherwise one line per stage whose counts changed."""

    def __init__(self, stream: TextIO, terminal: bool, clock: Callable[[], float] = time.monotonic):
        self.stream, self.terminal, self.clock = stream, terminal, clock
        self.began = clock()
        self.stages: dict[str, StageClock] = {}
        self.last_poll: float | None = None
        self.drawn_lines = 0

    def update(self, status: dict[str, dict]) -> None:
        now = self.clock()
        changed = []
        for name, counts in status.items():
            done, total = counts["done"], counts["total"]
            if not total:  # nothing to do, or not plannable yet
                continue
            stage = self.stages.get(name)
            if stage is None:
                stage = self.stages[name] = self._first_seen(done, total, now)
                changed.append(name)
            elif (done, total) != (stage.done, stage.total):
                changed.append(name)
            stage.observe(done, total, now)
        self.last_poll = now
        if self.terminal:
            self._redraw(now)
        else:
            self.stream.writelines(self.line(name, now) + "\n" for name in changed)
        self.stream.flush()

    def _first_seen(self, done: int, total: int, now: float) -> StageClock:
        """A stage seen at the first poll may hold work of an earlier attempt (a resumed run); one that
        became plannable later had done nothing at the poll before, where its clock starts."""
        if self.last_poll is None:
            return StageClock(done, total, baseline=done, untouched_at=now)
        return StageClock(0, total, baseline=0, untouched_at=self.last_poll)

    def line(self, name: str, now: float) -> str:
        """``pyramid.shard 12/40 mini-tasks, 0:31 elapsed, ETA 1:02``"""
        stage = self.stages[name]
        elapsed = stage.elapsed(now)
        return ", ".join([f"{name} {stage.done}/{stage.total} mini-tasks",
                          *([f"{elapsed} elapsed"] if elapsed else []), stage.state(now)])

    def table(self, now: float) -> list[str]:
        rows = [f"{clock_time(now - self.began)} since the run started",
                f"{'stage':<{NAME_WIDTH}} {'mini-tasks':>13} {'elapsed':>8}  ETA"]
        for name, stage in self.stages.items():
            counts = f"{stage.done:>6}/{stage.total:<6}"
            rows.append(f"{name:<{NAME_WIDTH}} {counts:>13} {stage.elapsed(now):>8}  "
                        f"{stage.state(now).removeprefix('ETA ')}")
        return rows

    def _redraw(self, now: float) -> None:
        """The table over the previous one; each line cut to the terminal's width, since a wrapped line
        would throw off how far the next redraw moves up."""
        columns = self._columns() - 1
        rows = self.table(now)
        up = CURSOR_UP.format(self.drawn_lines) if self.drawn_lines else ""
        self.stream.write(up + "".join(f"{CLEAR_LINE}{row[:columns]}\n" for row in rows))
        self.drawn_lines = len(rows)

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError):  # not a terminal after all, or no file descriptor
            return DEFAULT_COLUMNS


@contextmanager
def shown_while_running(ctx: RunContext, stream: TextIO, interval: float = POLL_SECONDS) -> Iterator[None]:
    """Poll the run's stage counts from a background thread while the block runs, and once more after
    it ends normally, so the view ends on the run's final counts. A stage seen finished is not polled
    again (listing its cache would tell nothing new)."""
    from emprocess import registry
    from emprocess.batch import stage_status

    view = ProgressView(stream, terminal=stream.isatty())
    stages = registry.pipeline()
    finished: set[str] = set()
    ended = threading.Event()
    last_error = None

    def poll() -> None:
        nonlocal last_error
        try:
            status = stage_status(ctx, [stage for stage in stages if stage.name not in finished])
        except Exception as err:  # a file half written, a store that did not answer: try again next time
            if str(err) != last_error:
                log.warning("progress: reading the result cache failed: %s", err)
            last_error = str(err)
            return
        finished.update(name for name, counts in status.items()
                        if counts["total"] and counts["done"] >= counts["total"])
        view.update(status)

    def keep_polling() -> None:
        while True:
            began = time.monotonic()
            poll()
            if ended.wait(max(interval, (time.monotonic() - began) * (1 / POLL_SHARE - 1))):
                return

    poller = threading.Thread(target=keep_polling, name="emprocess-progress", daemon=True)
    poller.start()
    try:
        yield
    finally:
        ended.set()
        poller.join(JOIN_SECONDS)
    if not poller.is_alive():  # else a slow poll is still under way: the view stays as it was
        poll()
