"""The chunkedgraph stages over HTTP on the emwrite service: same work, same graph, 4xx for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support.chunkedgraph import (
    active_components,
    make_context,
    read_labels,
    same_partition,
    voronoi_supervoxels,
    write_volume,
)

from containers.service import build_app
from emprocess import storage
from emprocess.chunkedgraph.stages import STAGES


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("EMPROCESS_ALLOWED_PREFIXES", f"file://{tmp_path}")
    return TestClient(build_app("emwrite"))


def test_graph_built_over_http_matches_the_active_components(tmp_path, client):
    watershed = voronoi_supervoxels((24, 20, 16), count=120, seed=7)
    table = np.stack([np.unique(watershed)[1:], np.unique(watershed)[1:] % 5], axis=1)
    np.save(tmp_path / "bodies.npy", table)
    url = write_volume(f"file://{tmp_path}/watershed", watershed)
    segmentation = {"watershed": url, "agglomeration": f"file://{tmp_path}/bodies.npy", "chunk_size": [16, 16, 16]}
    ctx = make_context(tmp_path, segmentation, depth=16)
    endpoints = set()
    for stage in STAGES:
        for task in stage.plan(ctx):
            response = client.post(stage.endpoint, json=task["payload"])
            assert response.status_code == 200, response.text
            endpoints.add(stage.endpoint)
    assert endpoints == {"/cg/meta", "/cg/layer2", "/cg/layer", "/cg/flatten"}
    assert same_partition(read_labels(ctx.locations.segmentation), active_components(watershed, table))

    layer3 = {"graph": ctx.locations.chunkedgraph, "layer": 3, "chunk": [7, 0, 0]}
    response = client.post("/cg/layer", json=layer3)
    assert response.status_code == 422 and "chunk [7, 0, 0] is not built at layer 3" in response.json()["detail"]
    storage.delete(storage.join(ctx.locations.chunkedgraph, "layer_2", "0_0_0"))
    response = client.post("/cg/layer", json={**layer3, "chunk": [0, 0, 0]})
    assert response.status_code == 404 and "layer_2/0_0_0: not found" in response.json()["detail"]

