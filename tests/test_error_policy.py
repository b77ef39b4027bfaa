"""One error policy on every path a stage's work runs on (issue #20): bad input fails at once and is
never retried, a fault is retried — behind an HTTP service (the status and the client), in-process
under Airflow (the task's tries) and in a pod (``emprocess work``'s exit status)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import raising
from support.serving import serving

from containers.service import build_app
from emprocess.errors import http_status, is_bad_input
from emprocess.workflow.service_client import PermanentError, ServiceClient

ROOT = Path(__file__).parents[1]
STATUS = {"input": 422, "conf": 422, "missing": 404, "outside": 403, "corrupt": 422}


def conf(tmp_path: Path, kind: str) -> dict:
    return {"id": f"raise-{kind}", "image": "img%03d.png", "minz": 0, "maxz": 0, "source": f"file://{tmp_path}/src"}


def calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_every_error_has_one_class():
    for kind, make in raising.RAISES.items():
        assert is_bad_input(make()) == (kind in raising.BAD_INPUT), kind
        assert http_status(make()) == STATUS.get(kind), kind


@pytest.fixture
def served():
    """The stage behind a service in this process (which it confines while it serves: not for longer)."""
    with serving(build_app("test", [raising.STAGE])) as url:
        yield url


@pytest.mark.parametrize("kind", raising.RAISES)
def test_over_http(served, kind, tmp_path, monkeypatch):
    """The service answers bad input with its 4xx, which the client does not retry, and a fault
    with 500, which it retries until it gives up."""
    monkeypatch.setenv(raising.CALLS_ENV, str(tmp_path / "calls"))
    client = ServiceClient(served, max_attempts=3, backoff_base_s=0.01)
    if kind in raising.BAD_INPUT:
        with pytest.raises(PermanentError, match=f"{STATUS[kind]}") as excinfo:
            client.post("/raise", {"kind": kind})
        assert str(raising.RAISES[kind]()) in str(excinfo.value)
        assert calls(tmp_path / "calls") == 1
    else:
        with pytest.raises(RuntimeError, match="after 3 attempts"):
            client.post("/raise", {"kind": kind})
        assert calls(tmp_path / "calls") == 3


@pytest.mark.parametrize("kind", raising.RAISES)
def test_in_process_under_airflow(airflow_db, kind, tmp_path, monkeypatch):
    """A light stage's worker runs the work in the Airflow task: bad input fails the task without
    Airflow's retries, a fault is retried."""
    from support.airflow_dags import RAISE_DAG, build_test_dags

    monkeypatch.setenv(raising.CALLS_ENV, str(tmp_path / "calls"))
    dag_run = build_test_dags()[RAISE_DAG].test(run_conf=conf(tmp_path, kind))
    assert str(dag_run.state) == "failed"
    assert calls(tmp_path / "calls") == (1 if kind in raising.BAD_INPUT else 3)


@pytest.mark.parametrize("kind", raising.RAISES)
def test_in_a_pod(kind, tmp_path):
    """``emprocess work``, what a pod runs: bad input ends it with status 2 and one line naming it (no
    traceback), so the pod is not restarted for it; a fault ends it with a traceback and status 1."""
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(conf(tmp_path, kind)))
    code = ("import sys; from support import raising; raising.registered(); from emprocess.cli import main; "
            f"sys.exit(main(['-q', 'work', {raising.NAME!r}, '--worker', '0', '--of', '1', '--conf', "
            f"{str(conf_path)!r}, '--run-id', 'manual__raise']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"})
    if kind in raising.BAD_INPUT:
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [f"error: {raising.RAISES[kind]()}"]
    else:
        assert done.returncode == 1 and "Traceback" in done.stderr
        assert str(raising.RAISES[kind]()) in done.stderr
