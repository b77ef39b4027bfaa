"""The DAG file imports cleanly and builds the six fixed-width DAGs."""

from __future__ import annotations

from pathlib import Path

import pytest

from emprocess import MAJOR_MINOR


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(Path(__file__).parents[1] / "dags"), include_examples=False)


def test_dag_file_imports_six_dags_without_errors(dagbag):
    assert dagbag.import_errors == {}
    ids = sorted(dagbag.dag_ids)
    assert ids == sorted(f"emprocess_width{w}_v{MAJOR_MINOR}" for w in (1, 4, 16, 32, 64, 128))


def test_every_task_uses_a_known_pool(dagbag):
    from emprocess.workflow.dag_factory import POOLS

    pools = {task.pool for dag in dagbag.dags.values() for task in dag.tasks}
    assert pools <= set(POOLS) | {"default_pool"}
    assert set(POOLS) <= pools


def test_shape_depends_on_width_only(dagbag):
    from emprocess.workflow.dag_factory import build_dag

    counts = {}
    for dag_id, dag in dagbag.dags.items():
        width = int(dag_id.split("width")[1].split("_")[0])
        counts[width] = len(dag.tasks)
        assert len(build_dag(width).tasks) == counts[width]
        assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None
        workers = [t for t in dag.tasks if t.task_id.startswith("align.pairs")]
        assert len(workers) == width
    assert counts[1] < counts[4] < counts[16] < counts[128]


def test_params_follow_the_conf_schema(dagbag):
    from emprocess.config import conf_json_schema

    dag = dagbag.dags[f"emprocess_width1_v{MAJOR_MINOR}"]
    assert set(dag.params.keys()) == set(conf_json_schema()["properties"])
    assert dag.params.get_param("jpeg_quality").value == 90
    assert dag.params.get_param("clip-limit").value == 0.02
