"""``emprocess run`` shows the run's progress, not Airflow's log: the view from fake stage counts, then
real runs of a tiny sample (stdout a pipe) for the log files, a failure and ``--verbose``."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.emprocess_cli import airflow_log_of, emprocess, run_id_of

from emprocess import registry
from emprocess.batch import stage_status
from emprocess.config import STAGES
from emprocess.progress import CLEAR_LINE, CURSOR_UP, ProgressView, clock_time, shown_while_running
from emprocess.run_layout import LOG_FOLDER
from emprocess.stages import RunContext

PROGRESS_LINE = re.compile(r"^(\S+) (\d+)/(\d+) mini-tasks(?:, .*)?$", re.MULTILINE)
AIRFLOW_LINES = ("[DAG TEST]", "taskinstance", "INFO", "[info ")
PNG_HEAD, PNG_TAIL = 8 + 25, 12  # bytes of the signature and IHDR chunk; of the IEND chunk


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counts(done: int, total: int | None) -> dict:
    return {"done": done, "total": total}


def plain_view() -> tuple[ProgressView, io.StringIO, FakeClock]:
    stream, clock = io.StringIO(), FakeClock()
    return ProgressView(stream, terminal=False, clock=clock), stream, clock


def show(view: ProgressView, clock: FakeClock, at: float, status: dict) -> None:
    clock.now = at
    view.update(status)


# ---- the view, from fake stage counts ----------------------------------------------------------------


def test_plain_lines_one_per_change_without_escape_codes():
    view, stream, clock = plain_view()
    polls = [
        (0, {"align.pairs": counts(0, 4), "pyramid.shard": counts(0, None), "cg.meta": counts(0, 0)}),
        (2, {"align.pairs": counts(0, 4), "pyramid.shard": counts(0, None), "cg.meta": counts(0, 0)}),
        (4, {"align.pairs": counts(2, 4), "pyramid.shard": counts(0, None), "cg.meta": counts(0, 0)}),
        (6, {"align.pairs": counts(2, 4), "pyramid.shard": counts(0, 6), "cg.meta": counts(0, 0)}),
        (8, {"align.pairs": counts(4, 4), "pyramid.shard": counts(0, 6), "cg.meta": counts(0, 0)}),
    ]
    for at, status in polls:
        show(view, clock, at, status)
    lines = stream.getvalue().splitlines()
    assert "\x1b" not in stream.getvalue()
    # a line when a stage appears and each time its counts change; none for an unplanned or empty stage
    assert [PROGRESS_LINE.match(line).groups() for line in lines] == [
        ("align.pairs", "0", "4"), ("align.pairs", "2", "4"), ("pyramid.shard", "0", "6"), ("align.pairs", "4", "4")]
    # align.pairs was last seen untouched at t=2, so its clock starts there: 2 done in 2 s, 2 to go
    assert lines[0] == "align.pairs 0/4 mini-tasks, waiting"
    assert lines[1] == f"align.pairs 2/4 mini-tasks, {clock_time(4 - 2)} elapsed, ETA {clock_time(2 / (2 / (4 - 2)))}"
    assert lines[2] == "pyramid.shard 0/6 mini-tasks, waiting"
    assert lines[3] == f"align.pairs 4/4 mini-tasks, {clock_time(8 - 2)} elapsed, done"


def test_the_eta_counts_only_work_done_in_this_run():
    """A resumed run finds mini-tasks finished: they are neither in the rate nor a stage 'done' now."""
    view, stream, clock = plain_view()
    show(view, clock, 0, {"align.warp": counts(30, 30), "pyramid.shard": counts(10, 40)})
    show(view, clock, 5, {"align.warp": counts(30, 30), "pyramid.shard": counts(10, 40)})
    show(view, clock, 15, {"align.warp": counts(30, 30), "pyramid.shard": counts(20, 40)})
    lines = stream.getvalue().splitlines()
    assert lines[0] == "align.warp 30/30 mini-tasks, done before this run"
    assert lines[1] == "pyramid.shard 10/40 mini-tasks, waiting"
    started, rate = 5, (20 - 10) / (15 - 5)  # from the last poll at 10 done
    eta = clock_time((40 - 20) / rate)
    assert lines[2] == f"pyramid.shard 20/40 mini-tasks, {clock_time(15 - started)} elapsed, ETA {eta}"


def test_a_stage_planned_later_starts_its_clock_at_the_poll_before():
    view, stream, clock = plain_view()
    show(view, clock, 0, {"pyramid.shard": counts(0, None)})
    show(view, clock, 3, {"pyramid.shard": counts(0, None)})
    show(view, clock, 4, {"pyramid.shard": counts(5, 5)})
    assert stream.getvalue() == f"pyramid.shard 5/5 mini-tasks, {clock_time(4 - 3)} elapsed, done\n"


def test_terminal_table_is_redrawn_in_place():
    stream, clock = io.StringIO(), FakeClock()
    view = ProgressView(stream, terminal=True, clock=clock)
    show(view, clock, 0, {"align.pairs": counts(0, 4), "align.warp": counts(0, None)})
    first = stream.getvalue()
    show(view, clock, 2, {"align.pairs": counts(1, 4), "align.warp": counts(0, 8)})
    second = stream.getvalue()[len(first):]
    drawn = first.count("\n")
    assert CURSOR_UP.format(drawn) not in first and second.startswith(CURSOR_UP.format(drawn))
    rows = second.removeprefix(CURSOR_UP.format(drawn)).splitlines()
    assert all(row.startswith(CLEAR_LINE) for row in rows)
    assert len(rows) == drawn + 1  # align.warp got its row
    assert [row.split()[1] for row in rows if "align." in row] == ["1/4", "0/8"]


def test_clock_time_shows_hours_only_from_an_hour_on():
    assert clock_time(59.4) == "0:59"
    assert clock_time(3600 + 2 * 60 + 5) == "1:02:05"


def test_the_poller_ends_on_the_final_counts_and_stops_polling_finished_stages(monkeypatch, tmp_path):
    """One poll after the run: the last line is the run's end, however short the run was."""
    polled: list[set[str]] = []
    final = {"align.pairs": counts(3, 3), "align.warp": counts(4, 4)}

    def fake_status(ctx, stages):
        polled.append({stage.name for stage in stages})
        return {stage.name: final.get(stage.name, counts(0, 0)) for stage in stages}

    monkeypatch.setattr("emprocess.batch.stage_status", fake_status)
    stream = io.StringIO()
    conf = {"id": "x", "image": "img%05d.png", "minz": 0, "maxz": 3, "source": f"file://{tmp_path}"}
    with shown_while_running(RunContext.create(conf, "manual__x"), stream, interval=60):
        pass
    assert len(polled) == 2 and set(final) <= polled[0] and not set(final) & polled[1]
    assert [PROGRESS_LINE.match(line).groups() for line in stream.getvalue().splitlines()] == [
        (name, str(c["done"]), str(c["total"])) for name, c in final.items()]


# ---- where the output goes while a run goes ----------------------------------------------------------

CAPTURED = """
import logging, os, subprocess, sys
from pathlib import Path
from emprocess.workflow.local_run import output_to

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
with output_to(Path(sys.argv[1]), echo=sys.argv[2] == "echo") as console:
    print("printed")
    logging.info("logged")
    os.write(2, b"written to descriptor 2\\n")
    subprocess.run(["echo", "from a child process"], check=True)
    console.write("meant to be seen\\n")
print("printed after")
"""


@pytest.mark.parametrize("echo", [False, True], ids=["to the log", "echoed"])
def test_output_to_takes_every_write_of_the_process_and_its_children(tmp_path, echo):
    log = tmp_path / "airflow.log"
    done = subprocess.run([sys.executable, "-c", CAPTURED, str(log), "echo" if echo else "-"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = {"printed", "logged", "written to descriptor 2", "from a child process"}
    assert set(log.read_text().splitlines()) == written
    assert done.stdout == "meant to be seen\nprinted after\n"
    assert (set(done.stderr.splitlines()) == written) if echo else done.stderr == ""


# ---- emprocess run, end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sample(tmp_path_factory) -> dict:
    from emprocess.sample import write_sample

    conf = write_sample(tmp_path_factory.mktemp("progress") / "sample", size=128, n_slices=8, seed=2)
    return dict(conf, stages=["align", "pyramid"])


def conf_file(folder: Path, conf: dict) -> str:
    path = folder / "conf.json"
    path.write_text(json.dumps(conf))
    return str(path)


def service_logs_of(stdout: str) -> list[Path]:
    return [Path(p) for p in re.search(r"^services' logs: (.+)$", stdout, re.MULTILINE).group(1).split(", ")]


@pytest.fixture(scope="module")
def tiny_run(tiny_sample, tmp_path_factory):
    done = emprocess("run", conf_file(tmp_path_factory.mktemp("conf"), tiny_sample))
    assert done.returncode == 0, done.stderr[-5000:]
    return done


def test_stdout_shows_progress_lines_ending_on_each_asked_for_stage_done(tiny_sample, tiny_run):
    ctx = RunContext.create(tiny_sample, run_id_of(tiny_run.stdout))
    status = stage_status(ctx, registry.pipeline())
    # only the pipeline's stages: other tests may have registered stages of their own in this process
    asked = {name: c["total"] for name, c in status.items() if c["total"] and name.split(".")[0] in STAGES}
    assert {name.split(".")[0] for name in asked} == set(tiny_sample["stages"])
    last = {name: (int(done), int(total)) for name, done, total in PROGRESS_LINE.findall(tiny_run.stdout)}
    assert last == {name: (total, total) for name, total in asked.items()}
    assert "\x1b" not in tiny_run.stdout


def test_airflow_and_the_services_log_to_files_in_the_process_location(tiny_sample, tiny_run):
    ctx = RunContext.create(tiny_sample, run_id_of(tiny_run.stdout))
    for line in AIRFLOW_LINES:
        assert line not in tiny_run.stdout and line not in tiny_run.stderr, line
    assert tiny_run.stderr == ""
    airflow_log, services = airflow_log_of(tiny_run.stdout), service_logs_of(tiny_run.stdout)
    folder = Path(ctx.locations.process.removeprefix("file://")) / LOG_FOLDER
    assert {path.parent for path in [airflow_log, *services]} == {folder}
    assert all(path.is_file() for path in services)
    log = airflow_log.read_text()
    assert "[DAG TEST] starting task_id=align.pairs" in log
    assert re.search(r"align\.pairs worker 0/1: \d+ mini-tasks", log)  # the task's own log


def test_a_failed_run_names_the_worker_its_error_and_the_log(tiny_sample, tmp_path):
    """A slice whose header and end are whole (validate passes) but whose pixels are garbage fails the
    alignment's worker."""
    source = Path(tiny_sample["source"].removeprefix("file://"))
    broken = tmp_path / "sample"
    broken.mkdir()
    slice_name = tiny_sample["image"] % (tiny_sample["minz"] + 3)
    for image in source.glob("*.png"):
        data = image.read_bytes()
        (broken / image.name).write_bytes(data if image.name != slice_name else
                                          data[:PNG_HEAD] + os.urandom(len(data) - PNG_HEAD - PNG_TAIL)
                                          + data[-PNG_TAIL:])
    done = emprocess("run", conf_file(tmp_path, dict(tiny_sample, source=f"file://{broken}")))
    assert done.returncode == 1
    [failure] = [line for line in done.stderr.splitlines() if line.startswith("task ")]
    assert failure.startswith("task align.pairs[0] failed: ") and slice_name in failure
    log = airflow_log_of(done.stdout)
    assert f"log: {log} " in done.stderr and slice_name in log.read_text()
    assert "Traceback" not in done.stderr


def test_verbose_brings_airflow_log_back_to_the_terminal(tiny_sample, tmp_path):
    """The alignment alone: a quick run whose tasks log."""
    done = emprocess("run", "--verbose", conf_file(tmp_path, dict(tiny_sample, id="verbose", stages=["align"])))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[DAG TEST] starting task_id=validate" in done.stderr
    assert not PROGRESS_LINE.search(done.stdout)
    log = airflow_log_of(done.stdout).read_text()
    assert "[DAG TEST] starting task_id=validate" in log and log in done.stderr
