"""moc_server.py answers like the real services, and injects failures for drills."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from emprocess import registry
from emprocess.workflow.local_run import free_port
from emprocess.workflow.service_client import ServiceClient

ROOT = Path(__file__).parents[1]


@pytest.fixture
def moc(request):
    def start(*args: str) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(ROOT / "moc_server.py"), "--port", str(port), *args])
        request.addfinalizer(proc.terminate)
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if requests.get(url + "/healthz", timeout=1).ok:
                    return url
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("moc server did not start")

    return start


def test_align_answers_both_forms_with_the_real_schema(moc):
    url = moc("--slice-size", "640", "480")
    plain = requests.post(url + "/align", json={"img1": "file:///a.png", "img2": "file:///b.png"}).json()
    batched = requests.post(url + "/align",
                            json={"images": ["file:///a", "file:///b", "file:///c"], "z": [4, 5, 6]}).json()
    assert plain["size1"] == [640, 480] and plain["affine"]["found"] and plain["translation"]["found"]
    assert [p["z"] for p in batched["pairs"]] == [4, 5]
    assert set(batched["pairs"][0]) == {"z", *plain}
    refused = requests.post(url + "/alignedslice", json={"z": 3})  # as the real service, it checks the payload
    assert refused.status_code == 422 and "'slice': Field required" in refused.json()["detail"]


def test_fail_rate_one_always_fails_and_the_client_gives_up(moc):
    url = moc("--fail-rate", "1")
    assert requests.post(url + "/ngshard", json={}).status_code == 503
    client = ServiceClient(url, max_attempts=3, backoff_base_s=0.01)
    with pytest.raises(RuntimeError, match="after 3 attempts"):
        client.post("/ngshard", {})


def test_drill_with_some_failures_completes_through_retries(moc):
    url = moc("--fail-rate", "0.3", "--latency", "0.01", "--seed", "7")
    client = ServiceClient(url, max_attempts=10, backoff_base_s=0.01)
    payloads = [{"graph": "file:///g", "layer": 2, "chunk": [i, 0, 0], "watershed": "file:///w",
                 "supervoxels": "file:///s"} for i in range(20)]
    results = [client.post("/cg/layer2", payload) for payload in payloads]
    assert all(set(r) == set(registry.get("cg.layer2").result.model_fields) for r in results)


@pytest.mark.parametrize("fail_rate", ["0", "0.2"])
def test_a_whole_dag_run_against_it_succeeds(moc, airflow_db, tmp_path, monkeypatch, fail_rate):
    """A dry run: the width-4 DAG, aligning and building the pyramid of a 4-slice stack, with every
    service call answered by the moc server (a fifth of them 503, retried by the client)."""
    from support.refusals import SIZE, SLICES, good_conf, write_stack

    from emprocess import storage
    from emprocess.align import transforms_url
    from emprocess.stages import RunContext
    from emprocess.workflow.dag_factory import build_dag
    from emprocess.workflow.local_run import run_dag_test

    url = moc("--slice-size", str(SIZE), str(SIZE), "--fail-rate", fail_rate, "--seed", "3")
    port = int(url.rsplit(":", 1)[1])
    for service in registry.SERVICES.values():
        monkeypatch.setenv(f"AIRFLOW_CONN_{service.connection}", json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": port, "extra": {"backoff_base": 0.01}}))
    write_stack(tmp_path / "src")
    conf = dict(good_conf(tmp_path / "src"), stages=["align", "pyramid"])
    result = run_dag_test(build_dag(4), conf)
    assert result.state == "success", result.failed
    process = RunContext.create(conf, result.run_id).locations.process
    transforms = storage.read_json(transforms_url(process))  # align.collect ran on the moc's identity pairs
    assert (transforms["width"], transforms["height"], transforms["maxz"]) == (SIZE, SIZE, SLICES - 1)
    assert storage.exists(storage.join(process, "complete.json"))
