"""Test-only stages and DAGs, and a helper to run a DAG with ``dag.test`` and collect its failures."""

from __future__ import annotations

from emprocess import registry
from emprocess.payloads import Payload
from emprocess.stages import Result, RunContext, Stage

FLAKY_STAGE = "test.flaky"
FLAKY_DAG = "emprocess_test_flaky"
FLAKY_WIDTH = 2
RAISE_DAG = "emprocess_test_raise"  # one in-process worker of support.raising's stage, retried twice
QUIET_DAG = "emprocess_test_quiet"  # one task that does nothing: a DAG run with a conf, for the report view


def flaky_plan(ctx: RunContext) -> list[dict]:
    """One mini-task per slice; the test server decides how each key behaves."""
    return [{"key": f"k{z:03d}", "payload": {"key": f"k{z:03d}", "z": z}} for z in ctx.conf.z_range]


class FlakyPayload(Payload):
    key: str
    z: int


class Echo(Result):
    echo: str


FLAKY = Stage(name=FLAKY_STAGE, group="test", task="flaky", service="fiji", endpoint="/flaky", plan=flaky_plan,
              work=lambda payload: Echo(echo=payload.key), payload=FlakyPayload, result=Echo)


def build_test_dags() -> dict:
    import datetime

    from airflow.sdk import DAG, task
    from support import raising

    from emprocess.workflow.dag_factory import workers

    if FLAKY_STAGE not in registry.stages():
        registry.register(FLAKY)
    with DAG(FLAKY_DAG, schedule=None, catchup=False) as dag:
        workers(FLAKY_STAGE, FLAKY.service, FLAKY_WIDTH, "flaky", None)
    raising.registered()
    with DAG(RAISE_DAG, schedule=None, catchup=False) as raising_dag:
        workers(raising.NAME, None, 1, "raise", None, retries=2, retry_delay=datetime.timedelta(0))
    with DAG(QUIET_DAG, schedule=None, catchup=False) as quiet:
        task(lambda: None, task_id="nothing")()
    return {FLAKY_DAG: dag, RAISE_DAG: raising_dag, QUIET_DAG: quiet}
