"""Both FastAPI services, started with uvicorn on 127.0.0.1: URL prefixes, errors, a real alignment,
and how many mini-tasks a service process runs at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import requests
from support.serving import serving

from containers.service import build_app
from emprocess.payloads import Payload
from emprocess.stages import Result, Stage
from emprocess.workflow.local_run import service


@pytest.fixture
def stack(tmp_path):
    """Two neighbouring slices of a smooth random texture, the second shifted by (7, -4) px."""
    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur(rng.integers(0, 255, (420, 420)).astype(np.float32), (0, 0), 3)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    src = tmp_path / "data" / "stack"
    src.mkdir(parents=True)
    cv2.imwrite(str(src / "a.png"), base[50:370, 50:370])
    cv2.imwrite(str(src / "b.png"), base[54:374, 43:363])
    return src


@pytest.fixture
def fiji(stack, tmp_path):
    with service("fiji", [f"file://{tmp_path / 'data'}"], tmp_path) as url:
        yield url


def test_healthz_and_routes(fiji, tmp_path):
    assert requests.get(fiji + "/healthz").json()["service"] == "fiji"
    with service("emwrite", [f"file://{tmp_path / 'data'}"], tmp_path) as emwrite:
        paths = set(requests.get(emwrite + "/openapi.json").json()["paths"])
    assert {"/alignedslice", "/ngmeta", "/ngshard", "/ngtop"} <= paths


def test_align_over_http_recovers_the_shift(fiji, stack):
    reply = requests.post(fiji + "/align", json={"img1": f"file://{stack}/a.png", "img2": f"file://{stack}/b.png"})
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["translation"]["found"]
    matrix = np.array(result["translation"]["matrix"])
    # img2 pixel (x, y) shows the texture at (x + 43 - 50, y + 54 - 50) of img1's frame
    assert np.allclose(matrix[:, 2], [-7, 4], atol=0.5)


def test_urls_outside_the_allowed_prefixes_are_refused(fiji, tmp_path):
    outside = tmp_path / "elsewhere.png"
    reply = requests.post(fiji + "/align", json={"img1": f"file://{outside}", "img2": f"file://{outside}"})
    assert reply.status_code == 403 and str(outside) in reply.json()["detail"]
    sneaky = f"file://{tmp_path / 'data'}/../elsewhere.png"
    reply = requests.post(fiji + "/align", json={"img1": sneaky, "img2": sneaky})
    assert reply.status_code == 422 and "'img1'" in reply.json()["detail"] and "'..'" in reply.json()["detail"]


def test_missing_and_unreadable_images_answer_4xx_naming_the_url(fiji, stack):
    missing = f"file://{stack}/nope.png"
    reply = requests.post(fiji + "/align", json={"img1": missing, "img2": f"file://{stack}/a.png"})
    assert reply.status_code == 404 and missing in reply.json()["detail"]
    (stack / "junk.png").write_bytes(b"not an image at all")
    junk = f"file://{stack}/junk.png"
    reply = requests.post(fiji + "/align", json={"img1": junk, "img2": f"file://{stack}/a.png"})
    assert reply.status_code == 422 and junk in reply.json()["detail"]


def probe_stage(running: list[int], release: threading.Event) -> Stage:
    """A stage whose mini-tasks hold their requests until ``release`` is set, recording how many ran
    at once each time one started."""
    lock = threading.Lock()
    now = [0]

    class ProbePayload(Payload):
        key: int

    class ProbeResult(Result):
        key: int

    def work(payload: ProbePayload) -> ProbeResult:
        with lock:
            now[0] += 1
            running.append(now[0])
        release.wait(30)
        with lock:
            now[0] -= 1
        return ProbeResult(key=payload.key)

    return Stage(name="probe", group="test", task="probe", service="probe", endpoint="/probe", plan=lambda ctx: [],
                 work=work, payload=ProbePayload, result=ProbeResult)


@pytest.mark.parametrize("limit", [1, 3])
def test_a_process_runs_at_most_its_concurrent_requests(monkeypatch, limit):
    monkeypatch.setenv("EMPROCESS_CONCURRENT_REQUESTS", str(limit))
    running: list[int] = []
    release = threading.Event()
    with serving(build_app("probe", [probe_stage(running, release)])) as url, ThreadPoolExecutor(4) as clients:
        replies = [clients.submit(requests.post, url + "/probe", json={"key": k}, timeout=30) for k in range(4)]
        try:
            while len(running) < limit:
                time.sleep(0.01)
            time.sleep(0.3)  # time enough for a request beyond the limit to start, were it let in
            assert len(running) == limit
            assert requests.get(url + "/healthz", timeout=5).ok  # answered while requests wait their turn
        finally:
            release.set()
        assert [r.result().json()["key"] for r in replies] == list(range(4))
    assert len(running) == 4 and max(running) == limit


def test_a_bad_concurrency_setting_is_refused(monkeypatch):
    monkeypatch.setenv("EMPROCESS_CONCURRENT_REQUESTS", "0")
    with pytest.raises(ValueError, match="EMPROCESS_CONCURRENT_REQUESTS"):
        build_app("probe", [])


def test_a_bad_allowed_prefix_stops_the_service_at_start(monkeypatch):
    monkeypatch.setenv("EMPROCESS_ALLOWED_PREFIXES", "gs://em-data_*,s3://")
    with pytest.raises(ValueError, match="EMPROCESS_ALLOWED_PREFIXES: 's3://'"):
        build_app("probe", [])


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG claiming ``width`` × ``height`` 8-bit gray pixels (no pixel data)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def test_a_call_that_cannot_fit_in_memory_is_refused_before_any_work(tmp_path, monkeypatch, stack):
    monkeypatch.setenv("EMPROCESS_MEMORY_LIMIT", "2Gi")
    monkeypatch.setenv("EMPROCESS_CONCURRENT_REQUESTS", "2")  # 1 GiB a call
    data = tmp_path / "data"
    (stack / "huge.png").write_bytes(png_header(200_000, 200_000))
    warp = {"z": 0, "slice": f"file://{stack}/a.png", "transform": [[1, 0, 0], [0, 1, 0]], "width": 200_000,
            "height": 200_000, "depth": 1, "z_index": 0, "clip_limit": 0.0, "aligned": f"file://{data}/aligned",
            "thumbnail": f"file://{data}/0.png",
            "intensity": f"file://{data}/i.json"}
    with service("emwrite", [f"file://{data}"], tmp_path) as emwrite, \
            service("fiji", [f"file://{data}"], tmp_path) as fiji:
        refused = requests.post(emwrite + "/alignedslice", json=warp, timeout=30)
        assert refused.status_code == 413, refused.text
        assert "EMPROCESS_MEMORY_LIMIT" in refused.json()["detail"] and "1.1 GB this service gives one call" in \
            refused.json()["detail"]
        assert not (data / "aligned").exists() and not (data / "0.png").exists()
        small = requests.post(emwrite + "/alignedslice", json={**warp, "width": 320, "height": 320}, timeout=60)
        assert small.status_code == 200, small.text
        pair = {"img1": f"file://{stack}/a.png", "img2": f"file://{stack}/huge.png"}  # sized from its header
        refused = requests.post(fiji + "/align", json=pair, timeout=30)
        assert refused.status_code == 413 and "align.pairs" in refused.json()["detail"]


def test_oversized_and_deeply_nested_bodies_are_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setenv("EMPROCESS_MAX_BODY_BYTES", "4096")
    with service("emwrite", [f"file://{tmp_path}"], tmp_path) as emwrite:
        big = requests.post(emwrite + "/cg/layer", data=b"[" + b"1," * 4096 + b"1]",
                            headers={"content-type": "application/json"}, timeout=30)
        assert big.status_code == 413 and "EMPROCESS_MAX_BODY_BYTES" in big.json()["detail"]
        chunked = requests.post(emwrite + "/cg/layer", data=iter([b"[" + b"1," * 1024] * 8 + [b"1]"]),
                                headers={"content-type": "application/json"}, timeout=30)  # no Content-Length
        assert chunked.status_code == 413
        deep = requests.post(emwrite + "/cg/layer", data=b"[" * 900 + b"]" * 900,
                             headers={"content-type": "application/json"}, timeout=30)
        assert deep.status_code == 422 and "deeper than 32" in deep.json()["detail"]
        quoted = requests.post(emwrite + "/cg/layer", json={"graph": "[" * 900, "layer": 3, "chunk": [0, 0, 0]},
                               timeout=30)  # brackets inside a string do not nest
        assert quoted.status_code == 422 and "'graph'" in quoted.json()["detail"]
        layout = {"size": [10**63, 1, 1], "voxel_offset": [0, 0, 0], "resolution": [8, 8, 8]}
        huge = requests.post(emwrite + "/ngtop", json={"seed": f"file://{tmp_path}/s", "jpeg": f"file://{tmp_path}/j",
                                                       "layout": layout, "jpeg_quality": 90}, timeout=30)
        assert huge.status_code == 422 and "'layout.size.0'" in huge.json()["detail"]


@pytest.mark.parametrize(("setting", "value"), [("EMPROCESS_MEMORY_LIMIT", "lots"), ("EMPROCESS_MAX_BODY_BYTES", "0")])
def test_a_bad_limit_stops_the_service_at_start(monkeypatch, setting, value):
    monkeypatch.setenv(setting, value)
    with pytest.raises(ValueError, match=setting):
        build_app("probe", [])


def test_memory_limit_sizes():
    from containers.settings import memory_limit

    with pytest.MonkeyPatch.context() as env:
        for raw, size in [("4Gi", 4 << 30), ("1.5G", 1_500_000_000), ("512Mi", 512 << 20), ("123", 123)]:
            env.setenv("EMPROCESS_MEMORY_LIMIT", raw)
            assert memory_limit() == size
        env.delenv("EMPROCESS_MEMORY_LIMIT")
        assert 0 < memory_limit() <= __import__("psutil").virtual_memory().total
