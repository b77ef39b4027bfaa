"""Airflow plugin: each DAG run's report as a "Run report" tab on the run's page, and macros that
tell where a run's outputs are, for templated fields and notifications.

In a template: ``{{ macros.emprocess.run_locations(dag_run.conf, run_id) }}``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from emprocess.run_layout import REPORT_FILES

REPORT_PREFIX = "/emprocess"


class ReportApp:
    """The run-report app (``emprocess.workflow.report_view``), imported at its first request: task
    processes load this plugin too, for its macros, and importing the API server's modules takes them
    seconds."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from emprocess.workflow.report_view import app

            self._app = app
        await self._app(scope, receive, send)


def run_locations(conf: dict, run_id: str) -> dict:
    """The run's process, viewing, chunk and tmp locations (ARCHITECTURE §3)."""
    from emprocess.stages import RunContext

    ctx = RunContext.create(conf, run_id)
    return {**vars(ctx.locations), "jpeg": ctx.locations.jpeg, "raw": ctx.locations.raw}


class EmprocessPlugin(AirflowPlugin):
    name = "emprocess"
    macros = [run_locations]
    fastapi_apps = [{"app": ReportApp(), "url_prefix": REPORT_PREFIX, "name": "emprocess run reports"}]
    external_views = [{
        "name": "Run report",
        "href": REPORT_PREFIX.lstrip("/") + "/dags/{DAG_ID}/runs/{RUN_ID}/" + REPORT_FILES["html"],
        "destination": "dag_run",
        "url_route": "emprocess-run-report",
    }]
