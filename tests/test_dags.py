"""The DAG file imports cleanly and builds the six fixed-width DAGs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from emprocess import MAJOR_MINOR


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from emprocess.workflow.dag_factory import POOLS

    # known_pools makes a task in any other pool an import error
    return DagBag(dag_folder=str(Path(__file__).parents[1] / "dags"), known_pools={*POOLS, "default_pool"})


def test_dag_file_imports_six_dags_without_errors(dagbag):
    assert dagbag.import_errors == {}
    ids = sorted(dagbag.dag_ids)
    assert ids == sorted(f"emprocess_width{w}_v{MAJOR_MINOR}" for w in (1, 4, 16, 32, 64, 128))


def test_every_task_uses_a_known_pool(dagbag):
    from emprocess.workflow.dag_factory import POOLS

    pools = {task.pool for dag in dagbag.dags.values() for task in dag.tasks}
    assert pools <= set(POOLS) | {"default_pool"}
    assert set(POOLS) <= pools


def test_a_service_pool_counts_calls_in_flight(dagbag):
    """A worker takes one slot per call it may have in flight, so a pool of N slots lets at most N
    calls reach the service at once, whatever the DAG's width."""
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            if task.pool == "default_pool":
                assert task.pool_slots == 1, task.task_id
            else:
                assert task.pool_slots == task.partial_kwargs["threads"] > 1, task.task_id


def test_setup_script_makes_pools_with_room_for_a_worker_task(airflow_db):
    from airflow.models.pool import Pool

    from emprocess.workflow.dag_factory import POOLS

    script = [sys.executable, str(Path(__file__).parents[1] / "scripts" / "setup_airflow.py")]
    too_few = subprocess.run([*script, "--align-slots", "2"], capture_output=True, text=True)
    assert too_few.returncode == 2 and "emprocess_align: 2 slots" in too_few.stderr
    try:
        done = subprocess.run([*script, "--align-slots", "8", "--write-slots", "12"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert {name: Pool.get_pool(name).slots for name in POOLS} == {"emprocess_align": 8, "emprocess_write": 12}
    finally:
        for name, description in POOLS.items():
            Pool.create_or_update_pool(name, 64, description, include_deferred=False)


def mapped_widths(dag) -> dict[str, int]:
    """Task id → how many worker instances its literal ``worker`` list maps to."""
    return {t.task_id: len(t.expand_input.value["worker"]) for t in dag.tasks if hasattr(t, "expand_input")}


def test_shape_depends_on_width_only(dagbag):
    from emprocess.chunkedgraph.layers import layer_width
    from emprocess.workflow.dag_factory import build_dag

    task_ids = set()
    for dag_id, dag in dagbag.dags.items():
        width = int(dag_id.split("width")[1].split("_")[0])
        assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None
        rebuilt = build_dag(width)
        assert mapped_widths(rebuilt) == mapped_widths(dag)
        widths = mapped_widths(dag)
        assert widths["align.pairs"] == widths["align.warp"] == widths["pyramid.shard"] == width
        assert widths["align.collect"] == widths["pyramid.top"] == 1
        assert widths["chunkedgraph.layer2.worker"] == layer_width(2, width)
        assert widths["meshing.layer2.worker"] == layer_width(2, width) and widths["meshing.mesh_meta"] == 1
        assert widths["meshing.layer12.worker"] == layer_width(12, width)
        task_ids.add(frozenset(t.task_id for t in dag.tasks))
    assert len(task_ids) == 1, "every width has the same tasks; only the worker counts differ"


def test_a_task_process_parses_only_its_own_dag(dagbag, monkeypatch):
    """A task process's parse names its DAG in the parsing context (Airflow's task runner sets it): the
    DAG file then builds that one DAG, the same as the full parse builds it."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID

    def shape(dag):
        params = {key: (param.value, param.description, param.schema) for key, param in dag.params.items()}
        edges = {task.task_id: task.downstream_task_ids for task in dag.tasks}
        return edges, mapped_widths(dag), params, dag.max_active_tasks

    wanted = f"emprocess_width16_v{MAJOR_MINOR}"
    monkeypatch.setenv(_AIRFLOW_PARSING_CONTEXT_DAG_ID, wanted)
    one = DagBag(dag_folder=str(Path(__file__).parents[1] / "dags"))
    assert one.import_errors == {} and one.dag_ids == [wanted]
    assert shape(one.dags[wanted]) == shape(dagbag.dags[wanted])


def test_parsing_the_dag_file_leaves_the_heavy_modules_for_the_tasks():
    """The DAG file is parsed at every dag-processor pass and every task's start-up (issue #15):
    numpy, tensorstore and requests (~1 CPU-s together) are imported only by what runs a task."""
    code = ("import runpy, sys; runpy.run_path('dags/emprocess_dags.py'); "
            "print(sorted({'numpy', 'tensorstore', 'requests'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                         text=True, check=True)
    assert out.stdout.splitlines()[-1] == "[]"


def test_the_report_is_written_last_after_publish_and_the_mail_goes_after_it(dagbag):
    for dag in dagbag.dags.values():
        assert [t.task_id for t in dag.tasks if not t.downstream_task_ids] == ["notify"]
        notify = dag.get_task("notify")
        assert notify.is_teardown and not notify.on_failure_fail_dagrun  # the run's state is report's
        assert notify.upstream_task_ids == {"report"}
        assert dag.get_task("report").upstream_task_ids == {"publish"}


def test_workers_take_every_index(dagbag):
    dag = dagbag.dags[f"emprocess_width16_v{MAJOR_MINOR}"]
    pairs = dag.get_task("align.pairs")
    assert pairs.expand_input.value["worker"] == list(range(16))
    assert pairs.partial_kwargs["width"] == 16


def test_params_follow_the_conf_schema(dagbag):
    from emprocess.config import conf_json_schema

    dag = dagbag.dags[f"emprocess_width1_v{MAJOR_MINOR}"]
    assert set(dag.params.keys()) == set(conf_json_schema()["properties"])
    assert dag.params.get_param("jpeg_quality").value == 90
    assert dag.params.get_param("clip-limit").value == 0.02


def test_a_failure_reaches_every_later_task_within_a_few_edges(dagbag):
    """The scheduler marks upstream_failed one level per loop: every task is a few edges from
    validate, so a refused run fails in a few loops, not one per stage and layer."""
    from collections import deque

    for dag in dagbag.dags.values():
        hops, queue = {"validate": 0}, deque(["validate"])
        while queue:
            task_id = queue.popleft()
            for child in dag.get_task(task_id).downstream_task_ids:
                if child not in hops:
                    hops[child] = hops[task_id] + 1
                    queue.append(child)
        assert set(hops) == set(dag.task_ids)
        assert max(hops.values()) <= 5, max(hops.items(), key=lambda item: item[1])
