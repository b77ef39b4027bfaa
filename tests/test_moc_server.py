"""moc_server.py answers like the real services, and injects failures for drills."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

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
    assert requests.post(url + "/alignedslice", json={"z": 3}).json()["endpoint"] == "/alignedslice"


def test_fail_rate_one_always_fails_and_the_client_gives_up(moc):
    url = moc("--fail-rate", "1")
    assert requests.post(url + "/ngshard", json={}).status_code == 503
    client = ServiceClient(url, max_attempts=3, backoff_base_s=0.01)
    with pytest.raises(RuntimeError, match="after 3 attempts"):
        client.post("/ngshard", {})


def test_drill_with_some_failures_completes_through_retries(moc):
    url = moc("--fail-rate", "0.3", "--latency", "0.01", "--seed", "7")
    client = ServiceClient(url, max_attempts=10, backoff_base_s=0.01)
    results = [client.post("/cg/layer2", {"key": i}) for i in range(20)]
    assert all(r["moc"] for r in results)
