"""The one operator every stage uses: run this worker's share of a stage's mini-tasks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook, BaseOperator, get_current_context
from airflow.sdk.exceptions import AirflowFailException

from emprocess import registry
from emprocess.batch import run_share
from emprocess.errors import is_bad_input
from emprocess.redact import redact
from emprocess.stages import RunContext

if TYPE_CHECKING:
    from emprocess.workflow.service_client import ServiceClient

ERROR_XCOM = "error"  # where a failed task leaves its error for the run's report


@contextmanager
def failing_at_once() -> Iterator[None]:
    """Leave a failing task's error (credentials masked) for the report, and turn a permanent error
    into AirflowFailException, which fails the task without its retries."""
    try:
        yield
    except Exception as err:
        get_current_context()["ti"].xcom_push(key=ERROR_XCOM, value=redact(f"{type(err).__name__}: {err}"))
        if is_bad_input(err):  # a retry of the task would only meet it again
            raise AirflowFailException(str(err)) from err
        raise


def client_for(conn_id: str, stop: threading.Event) -> ServiceClient:
    """A client for an Airflow HTTP connection. Extras: ``auth: google_id_token`` (Cloud Run ID
    tokens for the connection's host), ``timeout`` (s per call), ``retry_window`` (s a call's
    transient failures are retried), ``backoff_base`` (s, first retry)."""
    from emprocess.workflow.service_client import IdTokenAuth, ServiceClient  # see failing_at_once

    conn = BaseHook.get_connection(conn_id)
    scheme = conn.schema if conn.schema in ("http", "https") else (conn.conn_type or "http")
    if scheme not in ("http", "https"):
        scheme = "http"
    base = f"{scheme}://{conn.host}" + (f":{conn.port}" if conn.port else "")
    extra = conn.extra_dejson
    auth = IdTokenAuth(audience=base) if extra.get("auth") == "google_id_token" else None
    return ServiceClient(
        base,
        auth=auth,
        timeout_s=float(extra.get("timeout", 900)),
        retry_window_s=float(extra.get("retry_window", 600)),
        backoff_base_s=float(extra.get("backoff_base", 1.0)),
        stop=stop,
    )


class BatchStageOperator(BaseOperator):
    """Worker ``worker`` of ``width`` for one stage: plan, keep its share, run it on ``threads``
    threads over HTTP (or in-process for light stages), caching each finished mini-task."""

    ui_color = "#d8e8f8"

    def __init__(self, *, stage: str, worker: int, width: int, threads: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.worker = worker
        self.width = width
        self.threads = threads
        self._stop = threading.Event()

    def execute(self, context) -> dict:
        """Fails without Airflow's retries on a permanent error (its finished mini-tasks stay cached)."""
        stage = registry.get(self.stage)
        with failing_at_once():
            ctx = RunContext.create(context["dag_run"].conf or {}, context["run_id"])
            if stage.service is None:
                call = lambda task: stage.execute(task["payload"])  # noqa: E731
            else:
                client = client_for(registry.SERVICES[stage.service].connection, self._stop)
                call = lambda task: client.post(stage.endpoint, task["payload"])  # noqa: E731
            summary = run_share(stage, ctx, self.worker, self.width, call, threads=self.threads, stop=self._stop)
        self.log.info("%s", summary)
        return vars(summary)

    def on_kill(self) -> None:
        self._stop.set()
