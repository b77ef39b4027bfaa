"""Run one worker's share of a stage's mini-tasks, skipping those already finished.

The result cache (``<process>/cache/<stage>/<key>.json``) makes every stage resumable: a retried or
cleared worker re-runs only the mini-tasks without a cache entry. An entry is the mini-task's result
with one key added, ``"timing": {"started": ISO time, "seconds": s}``, which the run report sums per
stage. How one mini-task is executed (HTTP call or in-process ``work``) is the caller's choice.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from emprocess import storage
from emprocess.run_layout import CACHE_SUFFIX
from emprocess.stages import MiniTask, RunContext, Stage, share

log = logging.getLogger("emprocess.batch")
TIMING = "timing"  # the key a cache entry adds to its mini-task's result


class OutputCheckError(RuntimeError):
    """A mini-task reported success but its output check failed."""


class Stopped(RuntimeError):
    """The share was stopped (kill or an earlier permanent failure) before this mini-task ran."""


@dataclass
class ShareSummary:
    stage: str
    worker: int
    width: int
    total: int
    cached: int
    done: int

    def __str__(self) -> str:
        return (
            f"{self.stage} worker {self.worker}/{self.width}: {self.total} mini-tasks, "
            f"{self.cached} already done, {self.done} run now"
        )


def run_share(
    stage: Stage,
    ctx: RunContext,
    worker: int,
    width: int,
    call: Callable[[MiniTask], dict],
    *,
    threads: int = 4,
    stop: threading.Event | None = None,
    tasks: list[MiniTask] | None = None,
) -> ShareSummary:
    """Run worker ``worker``'s share of ``stage`` on ``threads`` threads.

    The first permanent failure sets ``stop`` so the other threads stop taking new mini-tasks, then
    re-raises. ``tasks`` overrides the plan (re-running chosen mini-tasks).
    """
    stop = stop or threading.Event()
    mine = share(stage.plan(ctx) if tasks is None else tasks, worker, width)
    pending = [t for t in mine if not storage.exists(ctx.cache_url(stage.name, t["key"]))]
    summary = ShareSummary(stage.name, worker, width, len(mine), len(mine) - len(pending), 0)
    log.info("%s: %d to run", summary, len(pending))
    lock = threading.Lock()

    def run_one(task: MiniTask) -> None:
        if stop.is_set():
            raise Stopped(f"{stage.name} {task['key']}: stopped before it ran")
        try:
            run_and_cache(stage, ctx, task, call)
        except BaseException:
            stop.set()  # before this thread can take another mini-task
            raise
        with lock:
            summary.done += 1
            done = summary.done
        if done == len(pending) or done % max(1, len(pending) // 10) == 0:
            log.info("%s: %d/%d done", stage.name, done, len(pending))

    if not pending:
        return summary
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(pending)))) as pool:
        futures: list[Future] = [pool.submit(run_one, t) for t in pending]
        wait(futures, return_when=FIRST_EXCEPTION)
        if stop.is_set():
            for f in futures:
                f.cancel()
            wait(futures)
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
            raise next((e for e in errors if not isinstance(e, Stopped)), errors[0] if errors else Stopped(
                f"{stage.name} worker {worker}/{width}: stopped"))
    return summary


def run_and_cache(stage: Stage, ctx: RunContext, task: MiniTask, call: Callable[[MiniTask], dict]) -> dict:
    """Run one mini-task, check its output, and cache its result with when it ran and for how long."""
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    clock = time.perf_counter()
    result = stage.parse_result(call(task))  # a service's answer is held to the stage's result model too
    seconds = round(time.perf_counter() - clock, 3)
    if stage.check is not None and not stage.check(stage.parse_payload(task["payload"]), result):
        raise OutputCheckError(f"{stage.name} {task['key']}: output check failed")
    entry = result.model_dump(mode="json")
    if TIMING in entry:
        raise ValueError(f"{stage.name} {task['key']}: a result may not hold the cache's own key {TIMING!r}")
    entry[TIMING] = {"started": started, "seconds": seconds}
    storage.write_json(ctx.cache_url(stage.name, task["key"]), entry)
    return entry


def run_in_process(stage: Stage, ctx: RunContext, worker: int, width: int, **kwargs) -> ShareSummary:
    """Execute the share with the stage's own ``work`` (CLI ``emprocess work``, Kubernetes pods, tests)."""
    return run_share(stage, ctx, worker, width, lambda task: stage.execute(task["payload"]), **kwargs)


def stage_status(ctx: RunContext, stages: list[Stage]) -> dict[str, dict]:
    """``{stage: {"done", "total"}}`` in the given order, from the result cache (one listing per stage
    that has mini-tasks).

    ``total`` is None while a stage cannot be planned yet (it reads what an earlier stage writes, e.g.
    the graph meta); 0 for a stage this run does not ask for, or a layer above the graph's root.
    """
    report = {}
    for stage in stages:
        try:
            keys = [task["key"] for task in stage.plan(ctx)]
        except FileNotFoundError:
            report[stage.name] = {"done": 0, "total": None}
            continue
        if not keys:  # no cache to list
            report[stage.name] = {"done": 0, "total": 0}
            continue
        cached = {name.removesuffix(CACHE_SUFFIX) for name in storage.listdir(ctx.cache_dir(stage.name))}
        report[stage.name] = {"done": sum(key in cached for key in keys), "total": len(keys)}
    return report
