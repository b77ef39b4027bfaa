"""Skeletons of the graph's bodies, traced chunk by chunk and merged per body, read back with
CloudVolume (a third-party reader of sharded neuroglancer_skeletons).

The graph is built in-process (as in the chunkedgraph tests) on a volume whose voxel_offset is not
zero, in chunks small enough that the long bodies cross many chunk borders, with shards small enough
that the skeletons fill several.
"""

from __future__ import annotations

import hashlib

import cc3d
import numpy as np
import pytest
from cloudvolume import CloudVolume
from cloudvolume.exceptions import EmptyFileException
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from support.chunkedgraph import graph_of_bodies, make_context, read_labels, run_stage

from emprocess import storage
from emprocess.chunkedgraph.meta import read_meta
from emprocess import sharding
from emprocess.skeletons.layout import read_sharding
from emprocess.skeletons.stages import STAGES

SHAPE, OFFSET, RESOLUTION, CHUNK = (96, 80, 48), (3, 5, 7), (8, 8, 10), (16, 16, 16)
KEYS_PER_SHARD = 16  # a few dozen bodies fill several shards
MIN_VOXELS = 50  # bodies at least this large must have a skeleton (smaller ones may be a voxel or two)
STAGE = {stage.name: stage for stage in STAGES}


@pytest.fixture(scope="module")
def skeletonized(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("skeletons")
    ctx, supervoxels = graph_of_bodies(tmp_path, SHAPE, 90, 3, CHUNK, ("chunkedgraph", "skeletons"), RESOLUTION,
                                       OFFSET)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sharding, "KEYS_PER_SHARD", KEYS_PER_SHARD)
        results = {stage.name: run_stage(ctx, stage) for stage in STAGES}
    labels = read_labels(ctx.locations.segmentation)
    cv = CloudVolume("precomputed://" + ctx.locations.segmentation, progress=False)
    return ctx, labels, cv, results


def body_sizes(labels: np.ndarray) -> dict[int, int]:
    roots, counts = np.unique(labels[labels != 0], return_counts=True)
    return dict(zip(roots.tolist(), counts.tolist()))


def skeleton_roots(cv: CloudVolume, labels: np.ndarray) -> list[int]:
    """The bodies that have a skeleton."""
    roots = []
    for root in body_sizes(labels):
        try:
            cv.skeleton.get(root)
        except EmptyFileException:
            continue
        roots.append(root)
    return roots


def voxels_of(vertices: np.ndarray) -> np.ndarray:
    """The voxel (in the array's frame) each vertex (nm) lies in."""
    return np.floor(vertices / np.array(RESOLUTION)).astype(np.int64) - OFFSET


def skeleton_components(skeleton) -> int:
    n = len(skeleton.vertices)
    a, b = skeleton.edges[:, 0], skeleton.edges[:, 1]
    return connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)[0]


def test_every_body_above_a_size_has_a_skeleton_in_the_sharded_format(skeletonized):
    ctx, labels, cv, _ = skeletonized
    assert cv.info["skeletons"] == "skeletons"
    info = cv.skeleton.meta.info
    assert info["@type"] == "neuroglancer_skeletons"
    assert info["sharding"]["@type"] == "neuroglancer_uint64_sharded_v1"
    assert info["vertex_attributes"] == [{"id": "radius", "data_type": "float32", "num_components": 1}]
    large = [root for root, size in body_sizes(labels).items() if size >= MIN_VOXELS]
    assert len(large) > 30
    for root in large:
        skeleton = cv.skeleton.get(root)
        assert len(skeleton.vertices) >= 2 and len(skeleton.edges) >= 1, root
        assert skeleton.radius.dtype == np.float32 and (skeleton.radius > 0).all(), root


def test_vertices_lie_inside_their_body(skeletonized):
    """Every vertex is the centre of one of its body's voxels: no tolerance is needed, since the merge
    only joins pieces at vertices they share and adds none."""
    ctx, labels, cv, _ = skeletonized
    for root in skeleton_roots(cv, labels):  # a body of a voxel or two has none; larger ones do (test above)
        skeleton = cv.skeleton.get(root)
        voxels = voxels_of(skeleton.vertices)
        assert np.allclose(skeleton.vertices, (voxels + OFFSET + 0.5) * np.array(RESOLUTION)), root
        assert (labels[tuple(voxels.T)] == root).all(), root


def test_a_body_s_skeleton_is_connected_where_the_body_is(skeletonized):
    """One component per connected body (26-connected, as kimimaro traces), across chunk borders."""
    ctx, labels, cv, _ = skeletonized
    meta = read_meta(ctx.locations.chunkedgraph)
    crossing = 0
    for root, size in body_sizes(labels).items():
        if size < MIN_VOXELS:
            continue
        body = labels == root
        parts = cc3d.connected_components(body, connectivity=26, return_N=True)[1]
        skeleton = cv.skeleton.get(root)
        assert skeleton_components(skeleton) == parts, (root, parts)
        chunks = {tuple(c) for c in (np.argwhere(body) // meta.chunk_size).tolist()}
        crossing += len(chunks) > 1
    assert crossing > 20


def test_each_shard_is_written_by_exactly_one_merge_task(skeletonized):
    ctx, labels, cv, results = skeletonized
    spec = read_sharding(ctx.locations.skeletons)
    tasks = STAGE["skel.merge"].plan(ctx)
    shards = [task["payload"]["shard"] for task in tasks]
    assert len(shards) == len(set(shards)) >= 2
    written = [r["written"] for r in results["skel.merge"].values() if r["written"]]
    assert len(written) == len(set(written)) >= 2
    files = {name for name in storage.listdir(ctx.locations.skeletons) if name.endswith(".shard")}
    assert {url.rsplit("/", 1)[1] for url in written} == files
    for key, result in results["skel.merge"].items():  # each job wrote its own shard, holding its bodies
        if result["written"]:
            assert result["written"].endswith("/" + spec.shard_name(int(key)))
    roots = skeleton_roots(cv, labels)
    assert {int(key) for key, result in results["skel.merge"].items() if result["written"]} == \
        set(spec.locate(roots)[0].tolist())
    assert sum(result["bodies"] for result in results["skel.merge"].values()) == len(roots)


def test_a_rerun_rewrites_identical_bytes(skeletonized, monkeypatch):
    ctx, _, _, _ = skeletonized
    monkeypatch.setattr(sharding, "KEYS_PER_SHARD", KEYS_PER_SHARD)

    def digests() -> dict[str, str]:
        out = {}
        for location in (ctx.locations.skeletons, ctx.locations.pending_skeletons):
            for name in storage.listdir(location):
                out[f"{location}/{name}"] = hashlib.sha256(storage.read(storage.join(location, name))).hexdigest()
        return out

    before = digests()
    for name in ("skel.meta", "skel.chunks", "skel.merge"):
        stage = STAGE[name]
        for task in stage.plan(ctx):
            stage.execute(task["payload"])
    assert digests() == before


def test_skeletons_need_the_graph_and_a_segmentation(tmp_path):
    with pytest.raises(ValueError, match="skeletons needs chunkedgraph"):
        make_context(tmp_path, None, depth=4, stages=("skeletons",))
    ctx = make_context(tmp_path, None, depth=4, stages=("chunkedgraph", "skeletons"))
    assert not ctx.wants("skeletons") and all(stage.plan(ctx) == [] for stage in STAGES)
