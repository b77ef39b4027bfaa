"""The local viewer server answers Range requests with CORS, as neuroglancer needs for sharded volumes."""

import threading

import requests

from emprocess.serve import make_server


def test_range_requests_and_cors(tmp_path):
    data = bytes(range(256)) * 4
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "0.shard").write_bytes(data)
    server = make_server(str(tmp_path), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/vol/0.shard"
    try:
        part = requests.get(base, headers={"Range": "bytes=10-19", "Origin": "https://neuroglancer-demo.appspot.com"})
        suffix = requests.get(base, headers={"Range": "bytes=-16"})
        whole = requests.get(base)
        outside = requests.get(base, headers={"Range": "bytes=5000-"})
        preflight = requests.options(base, headers={"Access-Control-Request-Headers": "range"})
    finally:
        server.shutdown()
        server.server_close()
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert part.headers["Access-Control-Allow-Origin"] == "*"
    assert suffix.status_code == 206 and suffix.content == data[-16:]
    assert whole.status_code == 200 and whole.content == data
    assert outside.status_code == 416
    assert preflight.status_code == 204 and "Range" in preflight.headers["Access-Control-Allow-Headers"]


def test_viewer_links_point_at_served_paths(tmp_path):
    import json
    from urllib.parse import unquote

    from emprocess.serve import viewer_links

    def complete(run: str, finished: str, **outputs) -> None:
        folder = tmp_path / "sample_process" / run
        folder.mkdir(parents=True)
        outputs = {name: outputs.get(name) for name in ("jpeg", "raw", "segmentation")}
        (folder / "complete.json").write_text(json.dumps(
            {"run_id": run, "finished": finished, "conf": {"id": "sample"}, "outputs": outputs}))

    complete("images", "2026-01-01T00:00:00", jpeg=f"file://{tmp_path}/sample_ng_a/neuroglancer/jpeg",
             raw="file:///somewhere/else/raw")
    segmentation = tmp_path / "sample_ng_b/neuroglancer/segmentation"
    complete("graph", "2026-01-02T00:00:00", segmentation=f"file://{segmentation}")
    (segmentation / "segment_properties").mkdir(parents=True)
    bodies = {str(body): voxels for body, voxels in zip(range(1, 9), [5, 80, 7, 80, 3, 60, 9, 70])}
    (segmentation / "segment_properties" / "info").write_text(json.dumps({
        "@type": "neuroglancer_segment_properties", "inline": {"ids": list(bodies), "properties": [
            {"id": "voxel_count", "type": "number", "data_type": "uint32", "values": list(bodies.values())}]}}))
    links = dict(viewer_links(str(tmp_path), "http://127.0.0.1:9000"))
    assert set(links) == {"images", "graph"}
    images, graph = unquote(links["images"]), unquote(links["graph"])
    assert "precomputed://http://127.0.0.1:9000/sample_ng_a/neuroglancer/jpeg" in images
    assert "somewhere" not in images  # outside the served folder: not linked
    # the graph run's bodies are shown over the images of the earlier run of the same dataset
    assert "precomputed://http://127.0.0.1:9000/sample_ng_b/neuroglancer/segmentation" in graph
    assert "sample_ng_a/neuroglancer/jpeg" in graph
    # the largest bodies are selected, so their meshes and skeletons show at once (ties: lower id first)
    layer = next(layer for layer in json.loads(graph.split("#!", 1)[1])["layers"] if layer["name"] == "bodies")
    assert layer["segments"] == ["2", "4", "8", "6", "7"]
    assert "segments" not in next(layer for layer in json.loads(images.split("#!", 1)[1])["layers"])
