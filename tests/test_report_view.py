"""The run-report tab: Airflow's own API server (with the project's plugin, served by uvicorn on
127.0.0.1) serves a real DAG run's report to a user allowed to read it, and nothing else."""

from __future__ import annotations

import pytest
import requests
from support.airflow_dags import QUIET_DAG, build_test_dags
from support.serving import serving

from emprocess import registry, storage
from emprocess.lifecycle import create_env
from emprocess.report import write_report
from emprocess.stages import RunContext

DAG_ID = QUIET_DAG


@pytest.fixture(scope="module")
def reported_run(airflow_db, tmp_path_factory) -> tuple[str, RunContext]:
    """A finished run of a one-task DAG (its conf in Airflow's database) whose report is written."""
    conf = {"id": "viewed", "image": "s%03d.png", "minz": 0, "maxz": 1,
            "source": f"file://{tmp_path_factory.mktemp('view')}/src"}
    dag_run = build_test_dags()[QUIET_DAG].test(run_conf=conf)
    ctx = RunContext.create(conf, dag_run.run_id)
    create_env(ctx)
    storage.write(storage.join(ctx.locations.process, "align", "thumbnails", "0.png"), b"\x89PNG thumbnail")
    write_report(ctx, registry.pipeline())
    return dag_run.run_id, ctx


@pytest.fixture(scope="module")
def api_server(airflow_db):
    """Airflow's API server app, as ``airflow api-server`` builds it (plugins included)."""
    from airflow.api_fastapi.app import create_app

    with serving(create_app("core")) as url:
        yield url


def token(role: str | None) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="ann", role=role))


def report_url(api_server: str, run_id: str, path: str) -> str:
    """Where the tab asks for ``path`` of the run's report (the UI quotes the run id into it)."""
    return f"{api_server}/emprocess/dags/{DAG_ID}/runs/{requests.utils.quote(run_id, safe='')}/{path}"


def test_the_plugin_adds_a_report_tab_to_every_run(api_server):
    plugins = requests.get(f"{api_server}/api/v2/plugins", headers={"Authorization": f"Bearer {token('admin')}"})
    [plugin] = [p for p in plugins.json()["plugins"] if p["name"] == "emprocess"]
    [view] = plugin["external_views"]
    assert view["destination"] == "dag_run" and view["href"] == "emprocess/dags/{DAG_ID}/runs/{RUN_ID}/report.html"


def test_a_viewer_reads_the_report_and_its_thumbnails(api_server, reported_run):
    run_id, ctx = reported_run
    cookies = {"_token": token("viewer")}  # the UI's session cookie
    page = requests.get(report_url(api_server, run_id, "report.html"), cookies=cookies)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.content == storage.read(storage.join(ctx.locations.process, "report.html"))
    policy = dict(rule.strip().split(" ", 1) for rule in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and "script-src" not in policy  # no scripts run
    assert policy["img-src"].split() == ["'self'", "data:"]  # the embedded previews and the thumbnails show
    bearer = {"Authorization": f"Bearer {token('viewer')}"}
    summary = requests.get(report_url(api_server, run_id, "report.json"), headers=bearer)
    assert summary.json()["run_id"] == run_id
    thumbnail = requests.get(report_url(api_server, run_id, "align/thumbnails/0.png"), cookies=cookies)
    assert thumbnail.content == b"\x89PNG thumbnail" and thumbnail.headers["content-type"] == "image/png"


def test_no_session_or_no_right_to_read_runs_gets_nothing(api_server, reported_run):
    run_id, _ = reported_run
    url = report_url(api_server, run_id, "report.html")
    assert requests.get(url).status_code == 401
    assert requests.get(url, cookies={"_token": token(None)}).status_code == 403


@pytest.mark.parametrize("path", ["init.json", "cache/align.pairs/00000000.json", "align/transforms.json",
                                  "..%2F..%2Fetc%2Fpasswd", "align/thumbnails/0.png.json"])
def test_only_the_report_s_own_files_are_served(api_server, reported_run, path):
    run_id, _ = reported_run
    url = report_url(api_server, run_id, path)
    reply = requests.get(url, cookies={"_token": token("admin")})
    assert reply.status_code == 404 and "not a file of an emprocess run report" in reply.json()["detail"]


def test_a_run_without_a_report_yet_says_so(api_server, reported_run):
    run_id, ctx = reported_run
    storage.delete(storage.join(ctx.locations.process, "report.json"))
    reply = requests.get(report_url(api_server, run_id, "report.json"), cookies={"_token": token("viewer")})
    assert reply.status_code == 404 and "emprocess report" in reply.json()["detail"]
    unknown = report_url(api_server, "manual__nope", "report.json")
    assert "no run 'manual__nope'" in requests.get(unknown, cookies={"_token": token("viewer")}).json()["detail"]
