"""The batch HTTP operator against a real local HTTP server that fails on purpose."""

from __future__ import annotations

import datetime
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support.airflow_dags import FLAKY, FLAKY_DAG, FLAKY_STAGE, FLAKY_WIDTH
from support.json_replies import send_json

from emprocess import storage
from emprocess.batch import run_share
from emprocess.stages import RunContext
from emprocess.workflow.service_client import PermanentError, ServiceClient


class FlakyServer:
    """Per key, a script of failures ("503", "429", "timeout", "reset", "400") before success."""

    def __init__(self, scripts: dict[str, list[str]], slow_s: float = 1.5):
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.calls: Counter = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = body["key"]
                with server.lock:
                    server.calls[key] += 1
                    script = server.scripts.get(key, [])
                    step = script.pop(0) if script and script[0] != "400" else (script[0] if script else "ok")
                if step == "timeout":
                    time.sleep(slow_s)
                    step = "ok"
                if step == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    return
                status, reply = {
                    "ok": (200, {"echo": key}),
                    "503": (503, {"detail": "busy"}),
                    "429": (429, {"detail": "slow down"}),
                    "400": (400, {"detail": f"slice {key} is not an image"}),
                }[step]
                send_json(self, status, reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ctx(tmp_path):
    conf = {"id": "flaky", "image": "img%03d.png", "minz": 0, "maxz": 9, "source": f"file://{tmp_path}/src"}
    return RunContext.create(conf, "manual__flaky")


def cached_keys(ctx) -> list[str]:
    return [k.removesuffix(".json") for k in storage.listdir(storage.join(ctx.locations.process, "cache", FLAKY_STAGE))]


def test_retries_transient_failures_then_caches_every_result(ctx):
    stage = FLAKY
    server = FlakyServer({"k000": ["503", "503"], "k001": ["timeout"], "k002": ["reset"], "k003": ["429"]})
    try:
        client = ServiceClient(server.url, timeout_s=0.5, backoff_base_s=0.01)
        summary = run_share(stage, ctx, 0, 1, lambda t: client.post("/flaky", t["payload"]), threads=3)
    finally:
        server.close()
    assert (summary.total, summary.cached, summary.done) == (10, 0, 10)
    assert server.calls["k000"] == 3 and server.calls["k001"] == 2
    assert server.calls["k002"] == 2 and server.calls["k003"] == 2
    assert all(server.calls[f"k{z:03d}"] == 1 for z in range(4, 10))
    assert cached_keys(ctx) == [f"k{z:03d}" for z in range(10)]
    entry = storage.read_json(ctx.cache_url(FLAKY_STAGE, "k001"))
    assert entry.pop("timing")["seconds"] >= 0 and entry == {"echo": "k001"}


def test_4xx_fails_at_once_with_the_message_and_rerun_calls_only_unfinished(ctx):
    stage = FLAKY
    server = FlakyServer({"k005": ["400"]})
    try:
        client = ServiceClient(server.url, timeout_s=5, backoff_base_s=0.01)
        call = lambda t: client.post("/flaky", t["payload"])  # noqa: E731
        with pytest.raises(PermanentError, match="slice k005 is not an image"):
            run_share(stage, ctx, 0, 1, call, threads=1)
        assert server.calls["k005"] == 1  # never retried
        finished = cached_keys(ctx)
        assert "k005" not in finished and finished == [f"k{z:03d}" for z in range(5)]
        server.scripts["k005"] = []  # the input was fixed
        before = Counter(server.calls)
        summary = run_share(stage, ctx, 0, 1, call, threads=2)
    finally:
        server.close()
    rerun = server.calls - before
    assert set(rerun) == {f"k{z:03d}" for z in range(5, 10)} and all(n == 1 for n in rerun.values())
    assert (summary.cached, summary.done) == (5, 5)
    assert cached_keys(ctx) == [f"k{z:03d}" for z in range(10)]


def test_worker_share_is_index_mod_width(ctx):
    stage = FLAKY
    seen = []
    run_share(stage, ctx, 1, 3, lambda t: seen.append(t["key"]) or {"echo": t["key"]}, threads=1)
    assert sorted(seen) == ["k001", "k004", "k007"]


def test_stop_event_halts_retries_promptly(ctx):
    stage = FLAKY
    server = FlakyServer({f"k{z:03d}": ["503"] * 50 for z in range(10)})
    stop = threading.Event()
    try:
        client = ServiceClient(server.url, timeout_s=5, backoff_base_s=5.0, max_attempts=50, stop=stop)
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="stop"):
            run_share(stage, ctx, 0, 1, lambda t: client.post("/flaky", t["payload"]), threads=2, stop=stop)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed < 4.5  # well under one backoff cap: threads stopped waiting
    assert sum(server.calls.values()) <= 4
    assert cached_keys(ctx) == []


def clear_failed_tasks(dag, logical_date) -> None:
    """What "Clear → only failed" does in the Airflow UI: failed tasks and their run go back to running."""
    from airflow.serialization.definitions.dag import SerializedDAG
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState

    serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    cleared = SerializedDAG.clear_dags(
        [serialized], start_date=logical_date, end_date=logical_date, only_failed=True,
        dag_run_state=DagRunState.RUNNING,
    )
    assert cleared == 1


def test_operator_in_a_real_dag_run(airflow_db, tmp_path, monkeypatch):
    """Through Airflow: two workers share the mini-tasks; a 4xx fails its worker with the message;
    clearing the failed task re-runs it, and it calls only its unfinished mini-tasks."""

    from support.airflow_dags import build_test_dags

    from emprocess.workflow.local_run import run_dag_test

    dag = build_test_dags()[FLAKY_DAG]
    server = FlakyServer({"k000": ["503"], "k003": ["400"]})
    monkeypatch.setenv("AIRFLOW_CONN_ALIGN_CLOUD_RUN", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": int(server.url.rsplit(":", 1)[1]),
         "extra": {"timeout": 5, "backoff_base": 0.01}}))
    conf = {"id": "flaky", "image": "img%03d.png", "minz": 0, "maxz": 9, "source": f"file://{tmp_path}/src"}
    try:
        first = run_dag_test(dag, conf)
        assert first.state == "failed"
        assert [task for task, _ in first.failed] == ["flaky[1]"]  # k003 is worker 1's (3 mod 2)
        assert "slice k003 is not an image" in first.failed[0][1]
        assert server.calls["k003"] == 1 and server.calls["k000"] == 2
        ctx = RunContext.create(conf, first.run_id)
        finished_before_clear = cached_keys(ctx)
        assert "k003" not in finished_before_clear and {"k000", "k002", "k004"} <= set(finished_before_clear)
        server.scripts["k003"] = []
        before = Counter(server.calls)
        logical_date = datetime.datetime.fromisoformat(first.run_id.split("__")[1])
        clear_failed_tasks(dag, logical_date)
        second = run_dag_test(dag, conf, logical_date=logical_date)
    finally:
        server.close()
    assert second.state == "success" and second.run_id == first.run_id
    rerun = server.calls - before
    assert "k003" in rerun and set(rerun) <= {f"k{z:03d}" for z in range(1, 10, FLAKY_WIDTH)}
    assert not set(rerun) & set(finished_before_clear)
    assert cached_keys(ctx) == [f"k{z:03d}" for z in range(10)]


def test_a_permanent_error_fails_the_worker_without_airflow_s_retries(airflow_db, tmp_path, monkeypatch):
    """A 4xx means the input is wrong: the worker fails at once instead of being retried by Airflow
    (which would only call the service again and delay the failure by the retry delays)."""
    from support.airflow_dags import build_test_dags

    dag = build_test_dags()[FLAKY_DAG]
    for task in dag.tasks:
        task.retries, task.retry_delay = 2, datetime.timedelta(0)
    server = FlakyServer({"k003": ["400", "400", "400"]})
    monkeypatch.setenv("AIRFLOW_CONN_ALIGN_CLOUD_RUN", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": int(server.url.rsplit(":", 1)[1]),
         "extra": {"timeout": 5, "backoff_base": 0.01}}))
    conf = {"id": "permanent", "image": "img%03d.png", "minz": 0, "maxz": 9, "source": f"file://{tmp_path}/src"}
    try:
        dag_run = dag.test(run_conf=conf)
    finally:
        server.close()
    assert str(dag_run.state) == "failed"
    assert server.calls["k003"] == 1
    assert all(server.calls[f"k{z:03d}"] == 1 for z in range(0, 10, 2)), server.calls  # worker 0's, all done
    assert max(server.calls.values()) == 1, server.calls  # worker 1 stopped at k003: none was called again


def test_transient_failures_are_retried_for_the_retry_window_then_fail(ctx):
    server = FlakyServer({"k000": ["503"] * 400})  # more than a 1 s window can use up
    try:
        short = ServiceClient(server.url, timeout_s=5, backoff_base_s=0.01, backoff_cap_s=0.05, retry_window_s=1.0)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"attempts; last: HTTP 503.* of a 1 s retry window"):
            short.post("/flaky", {"key": "k000"})
        assert 1.0 <= time.monotonic() - started < 5
        tried = server.calls["k000"]
        assert 5 < tried < 400
        patient = ServiceClient(server.url, timeout_s=5, backoff_base_s=0.01, backoff_cap_s=0.05, retry_window_s=60)
        assert patient.post("/flaky", {"key": "k000"}) == {"echo": "k000"}  # the outage ended within its window
    finally:
        server.close()
    assert server.calls["k000"] == 401
