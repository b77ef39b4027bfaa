"""The DAG package under a real Airflow deployment (PostgreSQL, api-server, scheduler, dag-processor,
LocalExecutor; see ``support.airflow_deployment``), as a lab runs it: the sample is triggered with ``airflow dags
trigger`` and through the REST API, both runs succeed, stages the conf does not ask for start no
worker, and the outputs are byte for byte those of a ``dag.test`` run (``emprocess run``). A
refused conf fails its run without writing anything, and its report (the report task's result, and
the Run report tab) names the key. An emwrite outage in the middle of a stage is ridden out without
a task failure; a worker failed on bad input, cleared once the input is mended, redoes only its
unfinished mini-tasks.

Slow (several minutes): it starts the whole deployment once for the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support.airflow_deployment import RestartableService, deployment, postgres_bin

from emprocess import storage
from emprocess.config import parse_conf
from emprocess.registry import SERVICES
from emprocess.sample import write_sample
from emprocess.stages import RunContext, share
from emprocess.workflow import dag_id
from emprocess.workflow.local_run import allowed_prefixes, service

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (make test installs it)")]
WIDTH = 4


@pytest.fixture(scope="module")
def sample(small_sample) -> dict:
    return small_sample


@pytest.fixture(scope="module")
def long_sample(tmp_path_factory) -> dict:
    """24 slices of 512²: a warp long enough to cut a service off in the middle of it."""
    return write_sample(tmp_path_factory.mktemp("long") / "sample", size=512, n_slices=24, seed=7)


@pytest.fixture(scope="module")
def emwrite(sample, long_sample, tmp_path_factory):
    """The emwrite service on a port of its own, so a test can kill it and bring it back there."""
    allowed = [prefix for conf in (sample, long_sample) for prefix in allowed_prefixes(parse_conf(conf))]
    running = RestartableService("emwrite", allowed, tmp_path_factory.mktemp("emwrite-log"))
    running.start()
    yield running
    running.kill()


@pytest.fixture(scope="module")
def airflow(sample, long_sample, emwrite, tmp_path_factory):
    """A deployment whose connections point at both services; 4 task processes at once (2 cores)."""
    allowed = [prefix for conf in (sample, long_sample) for prefix in allowed_prefixes(parse_conf(conf))]
    fiji_conn = SERVICES["fiji"].connection
    emwrite_conn = SERVICES["emwrite"].connection
    with service("fiji", allowed, tmp_path_factory.mktemp("fiji-log")) as fiji:
        connections = {f"AIRFLOW_CONN_{fiji_conn}": fiji, f"AIRFLOW_CONN_{emwrite_conn}": emwrite.url}
        with deployment({**connections, "AIRFLOW__CORE__PARALLELISM": "4"}) as running:
            yield running


def cache_entries(conf: dict, run_id: str, stage: str) -> dict[str, bytes]:
    """The stage's result-cache entries of the run: one per finished mini-task."""
    cache = RunContext.create(conf, run_id).cache_dir(stage)
    return {name: storage.read(storage.join(cache, name)) for name in storage.listdir(cache)}


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
        run = airflow.wait_for(dag, run_id)
        assert run["state"] == "success", (run_id, airflow.task_states(dag, run_id))
    real_seconds = time.monotonic() - started
    for run_id in (cli_run, rest_run):
        states = airflow.task_states(dag, run_id)
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
    run = airflow.wait_for(dag, run_id, timeout=600)
    seconds = time.monotonic() - started
    assert run["state"] == "failed"
    states = airflow.task_states(dag, run_id)
    assert states[("validate", -1)] == "failed"
    assert states[("report", -1)] == states[("notify", -1)] == "success"
    report = airflow.rest("GET", f"/dags/{dag}/dagRuns/{run_id}/taskInstances/report/xcomEntries/return_value").json()
    [refused] = report["value"]["refused"]
    assert refused["task"] == "validate" and "must not exceed maxz" in refused["error"]
    assert sorted(map(str, folder.rglob("*"))) == before
    tab = requests.get(f"{airflow.api}/emprocess/dags/{dag}/runs/{requests.utils.quote(run_id, safe='')}/report.html",
                       headers={"Authorization": f"Bearer {airflow.token()}"}, timeout=60)
    assert tab.status_code == 200 and tab.headers["content-type"].startswith("text/html"), tab.text
    assert "refused" in tab.text and "<td>validate</td>" in tab.text and "must not exceed maxz" in tab.text
    print(f"\nrefused conf: run failed {seconds:.0f} s after the trigger")


def test_a_conf_the_params_refuse_starts_no_run_and_the_error_names_the_key(airflow, sample):
    dag = dag_id(WIDTH)
    conf = {**sample, "minz": "zero"}
    runs = airflow.rest("GET", f"/dags/{dag}/dagRuns").json()["total_entries"]
    reply = airflow.rest("POST", f"/dags/{dag}/dagRuns", json={"logical_date": None, "conf": conf})
    assert reply.status_code == 400 and "minz" in reply.json()["detail"], reply.text
    cli = airflow.airflow("dags", "trigger", dag, "--conf", json.dumps(conf))  # Airflow's CLI adds its traceback
    assert cli.returncode != 0 and "Invalid input for param minz" in cli.stderr, cli.stderr[-3000:]
    assert airflow.rest("GET", f"/dags/{dag}/dagRuns").json()["total_entries"] == runs


def test_the_run_rides_out_an_emwrite_outage_in_the_middle_of_the_warp(airflow, emwrite, long_sample):
    """Killed mid-warp and back 30 s later, as a redeployed service comes back: the workers' calls
    retry through the outage, and no task fails or is tried again."""
    dag = dag_id(WIDTH)
    run_id = airflow.trigger(dag, long_sample)
    deadline = time.monotonic() + 900
    while not cache_entries(long_sample, run_id, "align.warp"):
        assert time.monotonic() < deadline, "the warp did not start"
        time.sleep(0.05)
    emwrite.kill()
    warped_before_the_outage = len(cache_entries(long_sample, run_id, "align.warp"))
    time.sleep(30)
    emwrite.start()
    run = airflow.wait_for(dag, run_id)
    instances = airflow.task_instances(dag, run_id)
    assert run["state"] == "success", [(ti["task_id"], ti["map_index"], ti["state"]) for ti in instances]
    assert all(ti["state"] in ("success", "skipped") and ti["try_number"] <= 1 for ti in instances)
    slices = long_sample["maxz"] - long_sample["minz"] + 1
    assert warped_before_the_outage < slices == len(cache_entries(long_sample, run_id, "align.warp"))
    logs = airflow.task_logs()
    assert "/alignedslice attempt" in logs, "no worker met the outage"


def test_a_worker_failed_on_bad_input_reruns_only_its_unfinished_mini_tasks_once_cleared(airflow, long_sample):
    """One slice's pixels are garbage (its header and end are whole, so validate lets it by): the warp
    worker that meets it fails at once. The slice is mended and that mapped instance cleared through
    the REST API: only its unfinished mini-tasks run, and the run succeeds."""
    dag = dag_id(WIDTH)
    conf = {**long_sample, "id": "mended", "skip_align": True}
    bad_z = long_sample["maxz"] - 2  # the last slice of worker (maxz - 2) % WIDTH's warp share
    bad_slice = Path(storage.parse(parse_conf(conf).slice_url(bad_z)).path)
    whole = bad_slice.read_bytes()
    bad_slice.write_bytes(whole[:33] + bytes(4096) + whole[-12:])  # PNG signature + IHDR, garbage, IEND
    try:
        run_id = airflow.trigger(dag, conf)
        assert airflow.wait_for(dag, run_id)["state"] == "failed"
    finally:
        bad_slice.write_bytes(whole)
    worker = (bad_z - long_sample["minz"]) % WIDTH
    failed = {key for key, state in airflow.task_states(dag, run_id).items() if state == "failed"}
    assert failed == {("align.warp", worker)}
    before = cache_entries(conf, run_id, "align.warp")
    keys = [f"{z:08d}.json" for z in range(long_sample["minz"], long_sample["maxz"] + 1)]
    mine = [task["key"] for task in share([{"key": key} for key in keys], worker, WIDTH)]
    unfinished = set(keys) - set(before)
    assert f"{bad_z:08d}.json" in unfinished and unfinished < set(mine)  # its other mini-tasks finished

    cleared = airflow.rest("POST", f"/dags/{dag}/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": [["align.warp", worker]], "only_failed": False,
        "include_downstream": True, "reset_dag_runs": True})
    assert cleared.status_code == 200, cleared.text
    assert airflow.wait_for(dag, run_id)["state"] == "success"
    after = cache_entries(conf, run_id, "align.warp")
    assert set(after) == set(keys)
    assert {key: after[key] for key in before} == before  # finished mini-tasks did not run again
