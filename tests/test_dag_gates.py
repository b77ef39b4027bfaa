"""Through a real DAG run (``dag.test``, both services on loopback): stages a run does not ask for
start no worker (their gates skip them), and every run, a failed one too, ends with its report."""

from __future__ import annotations

from pathlib import Path

import pytest

from emprocess import storage
from emprocess.stages import RunContext
from emprocess.workflow.local_run import run_dag_test

WIDTH = 4


@pytest.fixture(scope="module")
def sample(small_sample) -> dict:
    return small_sample


@pytest.fixture(scope="module")
def services(service_connections):
    """Airflow's connections to both services, for this module's DAG runs."""
    with pytest.MonkeyPatch.context() as env:
        for name, url in service_connections.items():
            env.setenv(name, url)
        yield


def states(run_id: str) -> dict[tuple[str, int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.run_id == run_id).all()
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in rows}


def test_a_run_without_segmentation_starts_no_graph_or_mesh_worker(airflow_db, sample, services):
    from emprocess.workflow.dag_factory import build_dag

    result = run_dag_test(build_dag(WIDTH), sample)
    assert result.state == "success", result.failed
    ran = states(result.run_id)
    graph_and_meshes = {key: state for key, state in ran.items() if key[0].startswith(("chunkedgraph.", "meshing."))}
    gates = {key: state for key, state in graph_and_meshes.items() if key[0].endswith(".wanted")}
    assert gates == {("chunkedgraph.wanted", -1): "success", ("meshing.wanted", -1): "success"}
    rest = {key: state for key, state in graph_and_meshes.items() if key not in gates}
    assert len(rest) > 2 * WIDTH and set(rest.values()) == {"skipped"}, rest
    assert all(ran[key] == "success" for key in ran if key[0].startswith(("align.", "pyramid.")))
    assert ran[("publish", -1)] == ran[("report", -1)] == "success"
    ctx = RunContext.create(sample, result.run_id)
    assert storage.exists(storage.join(ctx.locations.process, "report.html"))


def test_a_stage_not_asked_for_is_skipped_and_the_run_goes_on(airflow_db, sample, services):
    from emprocess.workflow.dag_factory import build_dag

    conf = {**sample, "id": "align-only", "stages": ["align"]}
    result = run_dag_test(build_dag(WIDTH), conf)
    assert result.state == "success", result.failed
    ran = states(result.run_id)
    pyramid = {key: state for key, state in ran.items() if key[0].startswith("pyramid.") and key[0] != "pyramid.wanted"}
    assert pyramid and set(pyramid.values()) == {"skipped"}
    assert ran[("pyramid.wanted", -1)] == "success" and ran[("align.warp", 0)] == "success"


def test_a_failed_run_still_gets_a_report_naming_the_task_and_its_error(airflow_db, sample, services):
    """A middle slice whose pixel data is corrupt passes validate (headers, the PNG's end) and fails
    its align.pairs worker: the report names that worker and the slice."""
    import shutil

    from emprocess.workflow.dag_factory import build_dag

    original = Path(storage.parse(sample["source"]).path)
    source = original.parent / "damaged"  # beside the sample, where the services may read
    shutil.copytree(original, source)
    name = sample["image"] % (sample["minz"] + 1)
    data = bytearray((source / name).read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8: idat + 200] = bytes(192)  # the compressed pixels, not the chunk's frame
    (source / name).write_bytes(bytes(data))
    conf = {**sample, "id": "damaged", "source": f"file://{source}"}
    result = run_dag_test(build_dag(WIDTH), conf)
    assert result.state == "failed", result.failed
    [(task, error)] = result.failed
    assert task.startswith("align.pairs[") and name in error
    ctx = RunContext.create(conf, result.run_id)
    summary = storage.read_json(storage.join(ctx.locations.process, "report.json"))
    [failure] = summary["failures"]
    assert failure["task"] == task and name in failure["error"]
    page = storage.read(storage.join(ctx.locations.process, "report.html")).decode()
    assert "<h2 class=\"missing\">Failed</h2>" in page and f"<td>{task}</td>" in page and name in page


def test_a_refused_conf_writes_nothing_and_its_report_task_says_why(airflow_db, sample, services):
    from emprocess.workflow.dag_factory import build_dag

    conf = {**sample, "id": "upside-down", "minz": sample["maxz"], "maxz": sample["minz"]}
    folder = storage.parse(sample["source"]).parent().path
    before = sorted(str(p) for p in Path(folder).rglob("*"))
    result = run_dag_test(build_dag(WIDTH), conf)
    assert result.state == "failed" and [task for task, _ in result.failed] == ["validate"]
    assert "must not exceed maxz" in result.failed[0][1]
    assert sorted(str(p) for p in Path(folder).rglob("*")) == before
