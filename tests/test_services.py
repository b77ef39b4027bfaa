"""Both FastAPI services, started with uvicorn on 127.0.0.1: URL prefixes, errors, a real alignment."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import requests

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
    assert requests.post(fiji + "/align", json={"img1": sneaky, "img2": sneaky}).status_code in (400, 403)


def test_missing_and_unreadable_images_answer_4xx_naming_the_url(fiji, stack):
    missing = f"file://{stack}/nope.png"
    reply = requests.post(fiji + "/align", json={"img1": missing, "img2": f"file://{stack}/a.png"})
    assert reply.status_code == 404 and missing in reply.json()["detail"]
    (stack / "junk.png").write_bytes(b"not an image at all")
    junk = f"file://{stack}/junk.png"
    reply = requests.post(fiji + "/align", json={"img1": junk, "img2": f"file://{stack}/a.png"})
    assert reply.status_code == 422 and junk in reply.json()["detail"]
