"""Corrupt stored data is bad input (InputError, HTTP 422 naming the file), not a retried 500.

Each test builds a small real graph (and meshes, or one pyramid block), cuts short or overwrites one
file on disk, and runs again the work that reads it. Failed transfers, which tensorstore reports
with other status codes, must stay retryable; that is checked on errors tensorstore really raises.
"""

from __future__ import annotations

import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorstore as ts
from support.chunkedgraph import (
    STAGE,
    make_context,
    run_graph,
    run_stage,
    voronoi_supervoxels,
    write_transforms,
)

from emprocess import corrupt, storage
from emprocess.chunkedgraph.agglomeration import load_table
from emprocess.chunkedgraph.meta import chunk_url, meta_url, read_meta
from emprocess.meshing.stages import STAGES as MESH_STAGES
from emprocess.pyramid.build import build_block, build_top
from emprocess.pyramid.layout import PyramidLayout
from emprocess.pyramid.meta import write_info
from emprocess.pyramid.writers import ALIGNED_CHUNKS, open_zarr, zyx
from emprocess.stages import InputError
from emprocess.workflow.local_run import service

SHAPE, CHUNK, STORAGE = (48, 40, 32), [16, 16, 16], (16, 16, 16)
FIRST_CHUNK = "8_8_8/0-16_0-16_0-16"  # the watershed's storage chunk under graph chunk (0, 0, 0)
MESH_STAGE = {stage.name: stage for stage in MESH_STAGES}


def write_watershed(url: str, labels: np.ndarray, encoding: str) -> str:
    """A single-scale precomputed segmentation with 16³ storage chunks."""
    scale = {"size": list(labels.shape), "voxel_offset": [0, 0, 0], "resolution": [8, 8, 8],
             "chunk_size": list(STORAGE), "encoding": encoding}
    if encoding == "compressed_segmentation":
        scale["compressed_segmentation_block_size"] = [8, 8, 8]
    spec = {"driver": "neuroglancer_precomputed", "kvstore": storage.kvstore_spec(url), "create": True,
            "multiscale_metadata": {"type": "segmentation", "data_type": str(labels.dtype), "num_channels": 1},
            "scale_metadata": scale}
    ts.open(spec, context=storage.context()).result()[..., 0].write(labels).result()
    return url


def graph_inputs(tmp_path: Path, encoding: str = "raw", stages=("chunkedgraph",)):
    """The run context of a small watershed (and body table) under ``tmp_path``."""
    labels = voronoi_supervoxels(SHAPE, count=40, seed=3)
    watershed = write_watershed(f"file://{tmp_path}/watershed", labels, encoding)
    ids = np.unique(labels[labels != 0])
    np.save(tmp_path / "bodies.npy", np.stack([ids, ids % 4 + 1], axis=1))
    segmentation = {"watershed": watershed, "agglomeration": f"file://{tmp_path}/bodies.npy", "chunk_size": CHUNK}
    return make_context(tmp_path, segmentation, depth=SHAPE[2], stages=stages)


def task(ctx, stage: str, key: str) -> dict:
    return next(t for t in (STAGE.get(stage) or MESH_STAGE[stage]).plan(ctx) if t["key"] == key)["payload"]


def spoil(path: Path, how: str) -> None:
    """Cut the file to half its bytes, or overwrite it with as many random ones."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(len(data)))


def message_of(excinfo) -> str:
    return str(excinfo.value)


# ---- the user's watershed --------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "how"), [("raw", "truncated"), ("compressed_segmentation", "truncated"),
                                               ("compressed_segmentation", "garbage")])
def test_a_corrupt_watershed_chunk_fails_layer2_naming_the_volume_and_chunk(tmp_path, encoding, how):
    """(Garbage of a raw chunk's exact length is indistinguishable from labels, so not tested.)"""
    ctx = graph_inputs(tmp_path, encoding)
    run_stage(ctx, STAGE["cg.meta"])
    spoil(tmp_path / "watershed" / FIRST_CHUNK, how)
    with pytest.raises(InputError) as excinfo:
        STAGE["cg.layer2"].execute(task(ctx, "cg.layer2", "2_0_0_0"))
    assert f"volume file://{tmp_path}/watershed, voxels [0, 0, 0] to [16, 16, 16]" in message_of(excinfo)
    assert f"{tmp_path}/watershed/{FIRST_CHUNK}" in message_of(excinfo)
    assert not storage.exists(chunk_url(ctx.locations.chunkedgraph, 2, (0, 0, 0)))
    # a chunk whose reads miss the spoilt one still builds
    assert STAGE["cg.layer2"].execute(task(ctx, "cg.layer2", "2_2_0_0"))["chunk"] == [2, 0, 0]


def test_a_corrupt_watershed_chunk_fails_the_table_scan_of_cg_meta(tmp_path):
    ctx = graph_inputs(tmp_path)
    spoil(tmp_path / "watershed" / FIRST_CHUNK, "truncated")
    with pytest.raises(InputError, match=f"volume file://{tmp_path}/watershed, voxels .*{FIRST_CHUNK}"):
        STAGE["cg.meta"].execute(task(ctx, "cg.meta", "meta"))


@pytest.mark.parametrize("info", [b"{not json", b'{"type": "segmentation", "data_type": "uint32", "scales": [{}]}'])
def test_a_corrupt_watershed_info_is_input_error_in_meta_and_layer2(tmp_path, info):
    ctx = graph_inputs(tmp_path)
    payload = task(ctx, "cg.meta", "meta")
    run_stage(ctx, STAGE["cg.meta"])
    (tmp_path / "watershed" / "info").write_bytes(info)
    with pytest.raises(InputError, match=f"file://{tmp_path}/watershed"):
        STAGE["cg.meta"].execute(payload)
    with pytest.raises(InputError, match=f"volume file://{tmp_path}/watershed: .*info"):
        STAGE["cg.layer2"].execute(task(ctx, "cg.layer2", "2_0_0_0"))


@pytest.mark.parametrize("content", [b"{not json", b"{}", b'{"minz": 0, "maxz": "x", "width": 1, "height": 1}'])
def test_corrupt_transforms_fail_cg_meta_naming_them(tmp_path, content):
    ctx = graph_inputs(tmp_path)
    write_transforms(ctx, *SHAPE)
    url = storage.join(ctx.locations.process, "align", "transforms.json")
    local(url).write_bytes(content)
    with pytest.raises(InputError, match=re.escape(url)):
        STAGE["cg.meta"].execute(task(ctx, "cg.meta", "meta"))


@pytest.mark.parametrize(("name", "content"), [("empty.npy", b""), ("cut.npz", None), ("junk.npy", None)])
def test_a_corrupt_agglomeration_table_names_its_url(tmp_path, name, content):
    rows = np.array([[1, 5], [2, 5]], np.uint64)
    np.save(tmp_path / "t.npy", rows)
    np.savez_compressed(tmp_path / "t.npz", rows)
    if content is None:
        source = (tmp_path / ("t.npz" if name.endswith(".npz") else "t.npy")).read_bytes()
        content = source[: len(source) // 2] if name.startswith("cut") else source[:10] + os.urandom(200)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=f"agglomeration file://{tmp_path}/{re.escape(name)}: cannot read it"):
        load_table(f"file://{tmp_path}/{name}")


# ---- files the graph's own jobs wrote --------------------------------------------------------------


@pytest.fixture
def built(tmp_path):
    """A graph with its root-ID layer and meshes, built in-process."""
    ctx = graph_inputs(tmp_path, stages=("chunkedgraph", "meshing"))
    run_graph(ctx)
    for stage in MESH_STAGES:
        run_stage(ctx, stage)
    return ctx


def local(url: str) -> Path:
    return Path(storage.parse(url).path)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_corrupt_chunk_file_fails_the_layer_above_naming_it(built, how):
    ctx = built
    spoilt = chunk_url(ctx.locations.chunkedgraph, 2, (0, 0, 0))
    spoil(local(spoilt), how)
    with pytest.raises(InputError, match=f"{re.escape(spoilt)}: (not a|corrupt) chunkedgraph chunk file"):
        STAGE["cg.layer3"].execute(task(ctx, "cg.layer3", "3_0_0_0"))


def test_a_corrupt_agglomeration_shard_fails_layer2_naming_it(built):
    ctx = built
    shard = storage.join(ctx.locations.chunkedgraph, "agglomeration", "0")
    spoil(local(shard), "truncated")
    with pytest.raises(InputError, match=f"{re.escape(shard)}: corrupt chunkedgraph chunk file"):
        STAGE["cg.layer2"].execute(task(ctx, "cg.layer2", "2_0_0_0"))


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"format": "emprocess-chunkedgraph/1"}'])
def test_a_corrupt_graph_meta_is_input_error(built, content):
    ctx = built
    local(meta_url(ctx.locations.chunkedgraph)).write_bytes(content)
    with pytest.raises(InputError, match=re.escape(meta_url(ctx.locations.chunkedgraph))):
        read_meta(ctx.locations.chunkedgraph)


def test_a_corrupt_supervoxel_chunk_fails_flatten_naming_the_volume(built):
    ctx = built
    supervoxels = storage.join(ctx.locations.chunkedgraph, "supervoxels")
    spoil(local(supervoxels) / FIRST_CHUNK, "garbage")
    with pytest.raises(InputError, match=f"volume {re.escape(supervoxels)}, voxels .*0-16_0-16_0-16"):
        STAGE["cg.flatten"].execute(task(ctx, "cg.flatten", "0_0_0"))


def test_a_corrupt_root_id_chunk_fails_the_mesh_job_naming_the_volume(built):
    ctx = built
    spoil(local(ctx.locations.segmentation) / FIRST_CHUNK, "truncated")
    with pytest.raises(InputError, match=f"volume {re.escape(ctx.locations.segmentation)}, voxels"):
        MESH_STAGE["mesh.layer2"].execute(task(ctx, "mesh.layer2", "2_0_0_0"))


def test_a_corrupt_mesh_pending_file_fails_the_layer_above_naming_it(built):
    ctx = built
    payload = task(ctx, "mesh.layer3", "3_0_0_0")
    pending = chunk_url(payload["pending"], 2, (0, 0, 0))
    spoil(local(pending), "truncated")
    with pytest.raises(InputError, match=re.escape(pending)):
        MESH_STAGE["mesh.layer3"].execute(payload)


# ---- the pyramid's aligned volume and seed ---------------------------------------------------------

LAYOUT = PyramidLayout((1100, 64, 40), (0, 0, 0), (8, 8, 8))  # two blocks along x: a top scale and a seed


@pytest.fixture
def aligned(tmp_path):
    slices = np.random.default_rng(0).integers(0, 255, zyx(LAYOUT.size), dtype=np.uint8)
    url = f"file://{tmp_path}/aligned"
    open_zarr(url, slices.shape, ALIGNED_CHUNKS, create=True).write(slices).result()
    jpeg = f"file://{tmp_path}/jpeg"
    write_info(jpeg, LAYOUT, "jpeg", 90)
    return url, jpeg, f"file://{tmp_path}/seed"


@pytest.mark.parametrize("how", ["truncated", "longer"])
def test_a_corrupt_aligned_chunk_fails_the_block_naming_the_volume(aligned, how):
    url, jpeg, _ = aligned
    chunk = local(url) / "c" / "5" / "0" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:100] if how == "truncated" else data + b"\0")
    with pytest.raises(InputError, match=f"aligned volume {re.escape(url)}, z index 0..39: .*c/5/0/0"):
        build_block(url, jpeg, None, None, LAYOUT, (0, 0, 0), 90)


def test_a_corrupt_seed_chunk_fails_the_top_naming_it(aligned):
    url, jpeg, seed = aligned
    assert LAYOUT.top_scales
    for block in LAYOUT.blocks():
        build_block(url, jpeg, None, seed, LAYOUT, block, 90)
    build_top(seed, jpeg, None, LAYOUT, 90)
    spoil(local(seed) / "c" / "0" / "0" / "1", "truncated")  # the seed of block (1, 0, 0)
    with pytest.raises(InputError, match=f"pyramid seed {re.escape(seed)}: .*c/0/0/1"):
        build_top(seed, jpeg, None, LAYOUT, 90)


def test_a_corrupt_existing_output_shard_names_it_on_rerun(aligned):
    url, jpeg, _ = aligned
    build_block(url, jpeg, None, None, LAYOUT, (0, 0, 0), 90)
    shard = local(jpeg) / LAYOUT.scale_key(0) / "0.shard"
    spoil(shard, "truncated")
    with pytest.raises(InputError, match=f"volume {re.escape(jpeg)} scale 0, an existing shard file .*/0.shard"):
        build_block(url, jpeg, None, None, LAYOUT, (0, 0, 0), 90)


# ---- the slices, in-process (``emprocess work``) ---------------------------------------------------

RUN_ID = "manual__2026-01-01T00:00:00+00:00"


def corrupt_pixels(path: Path) -> None:
    """Zero a stretch of a PNG's compressed pixels, leaving its chunks' frame: validate passes it."""
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8: idat + 200] = bytes(192)
    path.write_bytes(bytes(data))


def work(stage: str, conf: Path, capsys) -> tuple[int, str]:
    """``emprocess work`` on every mini-task of ``stage``, in this process: its status and stderr."""
    from emprocess.cli import main

    status = main(["--quiet", "work", stage, "--conf", str(conf), "--run-id", RUN_ID])
    return status, capsys.readouterr().err


def test_a_slice_with_corrupt_pixels_fails_align_pairs_and_warp_in_process_naming_it(tmp_path, capsys):
    from emprocess.sample import write_sample

    conf = write_sample(tmp_path / "sample", size=256, n_slices=4, seed=5)
    conf_file = tmp_path / "sample" / "conf.json"
    slice_path = Path(storage.parse(conf["source"]).path) / (conf["image"] % 2)
    good = slice_path.read_bytes()
    corrupt_pixels(slice_path)
    status, err = work("align.pairs", conf_file, capsys)
    assert status == 2 and f"error: file://{slice_path}: " in err and "Traceback" not in err, err
    slice_path.write_bytes(good)
    assert work("align.pairs", conf_file, capsys)[0] == work("align.collect", conf_file, capsys)[0] == 0
    corrupt_pixels(slice_path)
    status, err = work("align.warp", conf_file, capsys)
    assert status == 2 and f"error: file://{slice_path}: " in err and "Traceback" not in err, err


# ---- failed transfers stay retryable ---------------------------------------------------------------


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def unavailable_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("endpoint", ["unavailable", "closed port"])
def test_transfer_failures_are_not_taken_for_corrupt_data(monkeypatch, unavailable_endpoint, endpoint):
    """What tensorstore really raises when a store answers 503 or nobody listens, with few retries."""
    for name, value in (("AWS_ACCESS_KEY_ID", "t"), ("AWS_SECRET_ACCESS_KEY", "t"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    url = unavailable_endpoint if endpoint == "unavailable" else "http://127.0.0.1:9"
    context = ts.Context({"s3_request_retries": {"max_retries": 2, "initial_delay": "1ms", "max_delay": "2ms"}})
    spec = {"driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "s3", "bucket": "em-test", "path": "ws/", "endpoint": url, "aws_region": "us-east-1"}}
    with pytest.raises(ValueError) as excinfo:
        ts.open(spec, context=context).result()
    assert not storage.is_permanent(excinfo.value), storage.tensorstore_message(excinfo.value)
    with pytest.raises(ValueError) as reraised:
        with corrupt.reading("volume s3://em-test/ws"):
            ts.open(spec, context=context).result()
    assert not isinstance(reraised.value, InputError)


# ---- over HTTP: the emwrite service answers 422 ----------------------------------------------------


def test_the_service_answers_422_naming_the_corrupt_watershed_chunk(tmp_path):
    ctx = graph_inputs(tmp_path)
    run_stage(ctx, STAGE["cg.meta"])
    spoil(tmp_path / "watershed" / FIRST_CHUNK, "truncated")
    payload = task(ctx, "cg.layer2", "2_0_0_0")
    logs = tmp_path / "logs"
    logs.mkdir()
    with service("emwrite", [f"file://{tmp_path}"], logs) as base:
        response = requests.post(base + STAGE["cg.layer2"].endpoint, json=payload, timeout=120)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert f"volume file://{tmp_path}/watershed, voxels [0, 0, 0] to [16, 16, 16]" in detail
    assert FIRST_CHUNK in detail
