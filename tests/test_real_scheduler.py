"""The DAG package under a real Airflow deployment (PostgreSQL, api-server, scheduler, dag-processor,
LocalExecutor; see ``real_airflow``), as a lab runs it: the sample is triggered with ``airflow dags
trigger`` and through the REST API, both runs succeed, stages the conf does not ask for start no
worker, and the outputs are byte for byte those of a ``dag.test`` run (``emprocess run``). A
refused conf fails its run without writing anything, and its report task names the key.

Slow (a few minutes): it starts the whole deployment once for the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emprocess import storage
from emprocess.stages import RunContext
from emprocess.workflow.dag_factory import dag_id
from real_airflow import deployment, postgres_bin

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (make test installs it)")]
WIDTH = 4
FINISHED = {"success", "failed"}


@pytest.fixture(scope="module")
def sample(small_sample) -> dict:
    return small_sample


@pytest.fixture(scope="module")
def airflow(service_connections):
    """A deployment whose connections point at both services; 4 task processes at once (2 cores)."""
    with deployment({**service_connections, "AIRFLOW__CORE__PARALLELISM": "4"}) as running:
        yield running


def wait_for(airflow, dag: str, run_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = airflow.rest("GET", f"/dags/{dag}/dagRuns/{run_id}").json()
        if run.get("state") in FINISHED:
            return run
        time.sleep(2)
    raise AssertionError(f"{run_id} did not finish within {timeout} s:\n{airflow.log('scheduler')[-3000:]}")


def task_states(airflow, dag: str, run_id: str) -> dict[tuple[str, int], str]:
    reply = airflow.rest("GET", f"/dags/{dag}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}).json()
    return {(ti["task_id"], ti["map_index"]): ti["state"] for ti in reply["task_instances"]}


def files(url: str) -> dict[str, bytes]:
    """Every file of a volume but its ``provenance``, which records the run's id."""
    return {name: storage.read(storage.join(url, name)) for name in storage.listdir(url) if name != "provenance"}


def test_the_sample_triggered_by_cli_and_rest_runs_like_dag_test(airflow, sample, tmp_path):
    dag = dag_id(WIDTH)
    started = time.monotonic()
    cli = airflow.airflow("dags", "trigger", dag, "--conf", json.dumps(sample), "--output", "json")
    assert cli.returncode == 0, cli.stderr[-3000:]
    cli_run = json.loads(next(line for line in cli.stdout.splitlines() if line.startswith("[")))[0]["dag_run_id"]
    rest = airflow.rest("POST", f"/dags/{dag}/dagRuns", json={"logical_date": None, "conf": sample})
    assert rest.status_code == 200, rest.text
    rest_run = rest.json()["dag_run_id"]
    for run_id in (cli_run, rest_run):
        run = wait_for(airflow, dag, run_id)
        assert run["state"] == "success", (run_id, task_states(airflow, dag, run_id))
    real_seconds = time.monotonic() - started
    for run_id in (cli_run, rest_run):
        states = task_states(airflow, dag, run_id)
        skipped = {k for k, v in states.items() if k[0].startswith(("chunkedgraph.", "meshing."))
                   and not k[0].endswith(".wanted")}
        assert skipped and all(states[k] == "skipped" for k in skipped)
        assert all(v == "success" for k, v in states.items() if k[0].startswith(("align.", "pyramid.")))
        assert states[("report", -1)] == states[("notify", -1)] == "success"

    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(sample))
    local = subprocess.run([sys.executable, "-m", "emprocess.cli", "run", str(conf_path), "--width", str(WIDTH)],
                           capture_output=True, text=True, timeout=900)
    assert local.returncode == 0, local.stderr[-3000:]
    local_run = next(line.split()[1] for line in local.stdout.splitlines() if line.startswith("run "))
    expected = RunContext.create(sample, local_run).locations
    for run_id in (cli_run, rest_run):
        got = RunContext.create(sample, run_id).locations
        for volume in ("jpeg", "raw"):
            want = files(getattr(expected, volume))
            assert want and files(getattr(got, volume)) == want, volume
        assert storage.exists(storage.join(got.process, "report.html"))
    print(f"\nreal scheduler: both runs in {real_seconds:.0f} s")


def test_a_refused_conf_fails_its_run_writes_nothing_and_still_reports(airflow, sample):
    dag = dag_id(WIDTH)
    conf = {**sample, "id": "upside-down", "minz": sample["maxz"], "maxz": sample["minz"]}  # a cross-key rule
    folder = Path(storage.parse(sample["source"]).parent().path)
    before = sorted(map(str, folder.rglob("*")))
    started = time.monotonic()
    reply = airflow.rest("POST", f"/dags/{dag}/dagRuns", json={"logical_date": None, "conf": conf})
    assert reply.status_code == 200, reply.text  # the Params cannot compare two keys
    run_id = reply.json()["dag_run_id"]
    run = wait_for(airflow, dag, run_id, timeout=600)
    seconds = time.monotonic() - started
    assert run["state"] == "failed"
    states = task_states(airflow, dag, run_id)
    assert states[("validate", -1)] == "failed"
    assert states[("report", -1)] == states[("notify", -1)] == "success"
    report = airflow.rest("GET", f"/dags/{dag}/dagRuns/{run_id}/taskInstances/report/xcomEntries/return_value").json()
    [refused] = report["value"]["refused"]
    assert refused["task"] == "validate" and "must not exceed maxz" in refused["error"]
    assert sorted(map(str, folder.rglob("*"))) == before
    print(f"\nrefused conf: run failed {seconds:.0f} s after the trigger")
