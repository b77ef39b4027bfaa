"""The run report inside Airflow: a FastAPI app that the plugin mounts in the API server at
``/emprocess`` and shows as a "Run report" tab on every DAG run's page.

It serves one run's ``report.html``, ``report.json`` and the thumbnails the page links (relative to
it) from the run's process location, worked out from the run's conf in Airflow's database. Access is
Airflow's own: the caller must be allowed to read the DAG's runs (the UI's session cookie or a bearer
token), and nothing but those files can be read, whatever the path asks for. The API server needs
read access to the process locations (the same storage credentials as the DAG's tasks).

A run whose conf was refused wrote nothing: its page is made from its report task's result instead.
"""

from __future__ import annotations

import json
import re

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.models.dagrun import DagRun
from airflow.models.xcom import XCOM_RETURN_KEY, XComModel
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import Response
from sqlalchemy import select

from emprocess import storage
from emprocess.config import ConfError
from emprocess.report import refusal
from emprocess.report.page import render_refused
from emprocess.run_layout import REPORT_FILES, THUMBNAIL_SUFFIX, THUMBNAILS
from emprocess.stages import RunContext
from emprocess.workflow import REPORT_TASK

SERVED = re.compile("|".join([*map(re.escape, REPORT_FILES.values()),
                              re.escape(THUMBNAILS) + r"/\d+" + re.escape(THUMBNAIL_SUFFIX)]))
MEDIA_TYPES = {"html": "text/html; charset=utf-8", "json": "application/json", "png": "image/png"}
# The page is static and escaped; the policy keeps it inert even so: no scripts, frames or requests
# anywhere but its embedded previews and its own thumbnails.
CONTENT_POLICY = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'self'"

app = FastAPI(title="emprocess run reports", description=__doc__)


@app.get("/dags/{dag_id}/runs/{run_id}/{path:path}",
         dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))])
def report_file(dag_id: str, run_id: str, path: str, session: SessionDep) -> Response:
    """One file of the run's report."""
    if not dag_id.startswith("emprocess_") or not SERVED.fullmatch(path):
        raise HTTPException(404, "not a file of an emprocess run report")
    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if dag_run is None:
        raise HTTPException(404, f"no run {run_id!r} of {dag_id!r}")
    headers = {"Content-Security-Policy": CONTENT_POLICY, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "no-store"}
    refused = refusal(_report_result(session, dag_id, run_id))
    if refused is not None:
        return _refused_file(path, run_id, dag_run.conf or {}, refused, headers)
    try:
        ctx = RunContext.create(dag_run.conf or {}, run_id)
    except ConfError as err:
        raise HTTPException(404, f"the run's conf was refused ({err}); its report shows once its report "
                                 "task has run") from None
    try:
        data = storage.read(storage.join(ctx.locations.process, path))
    except FileNotFoundError:
        raise HTTPException(404, f"{path} is not written yet: the run's report task writes it, and "
                                 "`emprocess report` writes it for any run") from None
    return Response(data, media_type=MEDIA_TYPES[path.rsplit(".", 1)[1]], headers=headers)


def _report_result(session, dag_id: str, run_id: str):
    """What the run's report task returned, or None before it ran."""
    row = session.scalar(select(XComModel).where(
        XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.task_id == REPORT_TASK,
        XComModel.map_index == -1, XComModel.key == XCOM_RETURN_KEY))
    return None if row is None else XComModel.deserialize_value(row)


def _refused_file(path: str, run_id: str, conf: dict, failures: list[dict], headers: dict) -> Response:
    """A refused run's report, made from Airflow's record: the page, or its summary as JSON."""
    if path == REPORT_FILES["html"]:
        return Response(render_refused(run_id, conf, failures), media_type=MEDIA_TYPES["html"], headers=headers)
    if path == REPORT_FILES["json"]:
        body = json.dumps({"run_id": run_id, "refused": True, "failures": failures})
        return Response(body, media_type=MEDIA_TYPES["json"], headers=headers)
    raise HTTPException(404, "the run's conf was refused: it has no thumbnails")
