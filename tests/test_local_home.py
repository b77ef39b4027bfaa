"""``emprocess run``'s temporary Airflow home is removed on any exit: on SIGTERM and SIGHUP by the
process itself (with the services it started), after SIGKILL by the next run. Real processes, each
with its own temp folder (TMPDIR); Airflow itself is not run."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from emprocess.workflow.local_run import HOME_LOCK, HOME_PREFIX

WAIT = 30  # s, the bound of every wait on a child


def start(tmp: Path, body: str, *args: str) -> subprocess.Popen:
    """A Python child with ``tmp`` as its temp folder that runs ``body`` (which prints one line)."""
    return subprocess.Popen([sys.executable, "-c", body, *args], env=dict(os.environ, TMPDIR=str(tmp)),
                            stdout=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen) -> str:
    """What the child printed first, waiting at most WAIT (a hung child fails the test, not hangs it)."""
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    assert ready, "the child printed nothing"
    line = proc.stdout.readline().strip()
    assert line, f"the child exited with {proc.wait(WAIT)} before printing"
    return line


def stop(proc: subprocess.Popen, signum: int) -> int:
    """Send ``signum`` and return the exit status (-signum: the signal ended the child unhandled)."""
    proc.send_signal(signum)
    code = proc.wait(WAIT)
    proc.stdout.close()
    return code


HOLD_A_HOME = """
import time
from emprocess.workflow.local_run import airflow_home
print(airflow_home(), flush=True)
time.sleep(60)
"""


def test_a_new_home_removes_the_homes_of_killed_runs_only(tmp_path):
    killed, living = start(tmp_path, HOLD_A_HOME), start(tmp_path, HOLD_A_HOME)
    try:
        killed_home, living_home = Path(first_line(killed)), Path(first_line(living))
        assert stop(killed, signal.SIGKILL) == -signal.SIGKILL
        assert (killed_home / HOME_LOCK).is_file()  # nothing could remove it

        # what a cleaner must leave: another prefix, an older version's home (no lock), a symlink to
        # a stale home, another user's stale home
        outside = tmp_path / "outside"
        keep = [tmp_path / "emprocess-test-airflow-x", tmp_path / (HOME_PREFIX + "old"), outside]
        for path in keep:
            path.mkdir()
        for path in (keep[0], outside):
            (path / HOME_LOCK).touch()
        (tmp_path / (HOME_PREFIX + "link")).symlink_to(outside)
        if os.getuid() == 0:
            others = tmp_path / (HOME_PREFIX + "other-user")
            others.mkdir()
            (others / HOME_LOCK).touch()
            os.chown(others, 65534, 65534)
            keep.append(others)

        new = start(tmp_path, "from emprocess.workflow.local_run import airflow_home; print(airflow_home())")
        new_home = Path(first_line(new))
        assert new.wait(WAIT) == 0
        new.stdout.close()
        assert not killed_home.exists()
        assert (living_home / HOME_LOCK).is_file()
        assert not new_home.exists()  # removed at its normal exit
        assert all(path.is_dir() for path in keep) and (outside / HOME_LOCK).is_file()
        assert (tmp_path / (HOME_PREFIX + "link")).is_symlink()
    finally:
        for proc in (killed, living):
            proc.kill()
            proc.wait(WAIT)
            proc.stdout.close()


RUN = """
import contextlib, sys, time
from emprocess.cli import exit_on_termination
from emprocess.workflow.local_run import airflow_home, service
exit_on_termination()
home = airflow_home()
with service("emwrite", [], home) if sys.argv[1:] == ["service"] else contextlib.nullcontext("-") as url:
    print(home, url, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("signum, services", [(signal.SIGTERM, ["service"]), (signal.SIGHUP, [])],
                         ids=["SIGTERM", "SIGHUP"])
def test_a_terminated_run_stops_its_services_and_removes_its_home(tmp_path, signum, services):
    proc = start(tmp_path, RUN, *services)
    try:
        home, url = first_line(proc).split()
        if services:
            assert requests.get(url + "/healthz", timeout=5).ok
        assert stop(proc, signum) == 128 + signum
        assert not Path(home).exists()
        if services:
            with pytest.raises(requests.ConnectionError):  # the service was stopped before the exit
                requests.get(url + "/healthz", timeout=5)
    finally:
        proc.kill()
        proc.wait(WAIT)
