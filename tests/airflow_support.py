"""Test-only stages and DAGs, and a helper to run a DAG with ``dag.test`` and collect its failures."""

from __future__ import annotations

from emprocess import registry
from emprocess.stages import RunContext, Stage

FLAKY_STAGE = "test.flaky"
FLAKY_DAG = "emprocess_test_flaky"
FLAKY_WIDTH = 2
QUIET_DAG = "emprocess_test_quiet"  # one task that does nothing: a DAG run with a conf, for the report view


def flaky_plan(ctx: RunContext) -> list[dict]:
    """One mini-task per slice; the test server decides how each key behaves."""
    return [{"key": f"k{z:03d}", "payload": {"key": f"k{z:03d}", "z": z}} for z in ctx.conf.z_range]


FLAKY = Stage(FLAKY_STAGE, "fiji", "/flaky", flaky_plan, work=lambda payload: {"echo": payload["key"]})


def build_test_dags() -> dict:
    from airflow.sdk import DAG, task

    from emprocess.workflow.dag_factory import workers

    registry.stages()[FLAKY_STAGE] = FLAKY
    with DAG(FLAKY_DAG, schedule=None, catchup=False) as dag:
        workers(FLAKY_STAGE, FLAKY.service, FLAKY_WIDTH, "flaky")
    with DAG(QUIET_DAG, schedule=None, catchup=False) as quiet:
        task(lambda: None, task_id="nothing")()
    return {FLAKY_DAG: dag, QUIET_DAG: quiet}
