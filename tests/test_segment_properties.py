"""The root-ID layer's segment properties, against direct counts over the whole small volume.

The graph is built in-process (as in the chunkedgraph tests) on a volume whose chunks do not divide
it, with watershed ids beyond uint32 and supervoxels cut by chunk faces; ``publish`` merges the
flatten jobs' counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from cloudfiles import CloudFiles
from cloudvolume import CloudVolume
from support.chunkedgraph import (
    STAGE,
    body_table,
    make_context,
    read_labels,
    run_graph,
    run_stage,
    voronoi_supervoxels,
    write_volume,
)

from emprocess import storage
from emprocess.chunkedgraph.meta import read_meta
from emprocess.chunkedgraph.properties import (
    chunk_counts_url,
    properties_document,
    properties_url,
    write_segment_properties,
)
from emprocess.chunkedgraph.volumes import info_url
from emprocess.lifecycle import publish

SHAPE, CHUNK = (90, 70, 40), (32, 32, 16)
BIG_IDS = np.uint64(1 << 40)
NUMBER_TYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32"}  # neuroglancer's, less uint64


def build(tmp_path):
    supervoxels = voronoi_supervoxels(SHAPE, count=60, seed=3)
    watershed = np.where(supervoxels != 0, supervoxels + BIG_IDS, 0).astype(np.uint64)
    table = body_table(supervoxels, seed=4)
    table[:, 0] += BIG_IDS
    np.save(tmp_path / "bodies.npy", table)
    segmentation = {"watershed": write_volume(f"file://{tmp_path}/watershed", watershed),
                    "agglomeration": f"file://{tmp_path}/bodies.npy", "chunk_size": list(CHUNK)}
    ctx = make_context(tmp_path, segmentation, depth=SHAPE[2])
    run_graph(ctx)
    return ctx, watershed, table


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    ctx, watershed, table = build(tmp_path_factory.mktemp("properties"))
    publish(ctx)
    document = storage.read_json(properties_url(ctx.locations.segmentation))
    return ctx, watershed, table, read_labels(ctx.locations.segmentation), document


def by_root(document: dict) -> dict[str, dict[int, object]]:
    inline = document["inline"]
    ids = [int(i) for i in inline["ids"]]
    return {p["id"]: dict(zip(ids, p["values"])) for p in inline["properties"]}


def test_every_root_has_its_voxel_count(published):
    ctx, _, _, roots, document = published
    ids, counts = np.unique(roots[roots != 0], return_counts=True)
    assert ids.size > 20
    assert document["inline"]["ids"] == [str(i) for i in ids.tolist()]
    assert by_root(document)["voxel_count"] == dict(zip(ids.tolist(), counts.tolist()))


def test_supervoxel_count_is_the_watershed_ids_of_each_root(published):
    _, watershed, _, roots, document = published
    body = roots != 0
    pairs = np.unique(np.stack([roots[body], watershed[body]], axis=1), axis=0)
    ids, counts = np.unique(pairs[:, 0], return_counts=True)
    supervoxel_count = by_root(document)["supervoxel_count"]
    assert supervoxel_count == dict(zip(ids.tolist(), counts.tolist()))
    assert max(supervoxel_count.values()) > 1


def test_graph_pieces_of_one_supervoxel_count_once(published):
    """Supervoxels cut by chunk faces are several graph supervoxels but one watershed id."""
    ctx, watershed, _, roots, document = published
    graph_supervoxels = read_labels(storage.join(ctx.locations.chunkedgraph, "supervoxels"))
    body = roots != 0
    pieces = np.unique(np.stack([roots[body], graph_supervoxels[body]], axis=1), axis=0)
    pieces_per_root = dict(zip(*(a.tolist() for a in np.unique(pieces[:, 0], return_counts=True))))
    supervoxel_count = by_root(document)["supervoxel_count"]
    assert any(pieces_per_root[r] > n for r, n in supervoxel_count.items())


def test_labels_name_the_agglomeration_body_or_the_lone_supervoxel(published):
    _, watershed, table, roots, document = published
    bodies = dict(zip(table[:, 0].tolist(), table[:, 1].tolist()))
    labels = by_root(document)["label"]
    kinds = set()
    for root, label in labels.items():
        supervoxel = int(watershed[roots == root][0])
        expected = f"body {bodies[supervoxel]}" if supervoxel in bodies else f"supervoxel {supervoxel}"
        assert label == expected
        kinds.add(label.split()[0])
    assert kinds == {"body", "supervoxel"}


def test_info_follows_neuroglancers_format_and_cloudvolume_finds_it(published):
    ctx, _, _, _, document = published
    cv = CloudVolume("precomputed://" + ctx.locations.segmentation, progress=False)
    assert cv.info["segment_properties"] == "segment_properties"
    read = CloudFiles(cv.cloudpath).get_json(f"{cv.info['segment_properties']}/info")
    assert read == document
    assert read["@type"] == "neuroglancer_segment_properties"
    ids = read["inline"]["ids"]
    assert all(isinstance(i, str) and 0 < int(i) < 2**64 for i in ids)
    properties = {p["id"]: p for p in read["inline"]["properties"]}
    assert [p["type"] for p in properties.values()] == ["label", "number", "number"]
    assert all(len(p["values"]) == len(ids) for p in properties.values())
    assert all(isinstance(v, str) for v in properties["label"]["values"])
    for name in ("voxel_count", "supervoxel_count"):
        assert properties[name]["data_type"] == "uint32"
        assert all(isinstance(v, int) and 0 < v < 2**32 for v in properties[name]["values"])


def test_rerun_rewrites_identical_bytes(published):
    ctx, *_ = published
    graph, segmentation = ctx.locations.chunkedgraph, ctx.locations.segmentation
    counts = [chunk_counts_url(graph, c) for c in read_meta(graph).chunks(2)]
    urls = [properties_url(segmentation), info_url(segmentation), *counts]
    before = {url: storage.read(url) for url in urls}
    for key in [t["key"] for t in STAGE["cg.flatten"].plan(ctx)]:
        storage.delete(ctx.cache_url("cg.flatten", key))
    assert len(run_stage(ctx, STAGE["cg.flatten"])) == len(counts)
    publish(ctx)
    assert {url: storage.read(url) for url in urls} == before


def test_nothing_is_written_while_a_flatten_job_is_unfinished(tmp_path):
    ctx, _, _ = build(tmp_path)
    graph, segmentation = ctx.locations.chunkedgraph, ctx.locations.segmentation
    missing = chunk_counts_url(graph, read_meta(graph).chunks(2)[-1])
    storage.delete(missing)
    with pytest.raises(FileNotFoundError, match=missing):
        write_segment_properties(graph, segmentation)
    assert not storage.exists(properties_url(segmentation))
    assert "segment_properties" not in storage.read_json(info_url(segmentation))


def test_counts_beyond_uint32_are_float32():
    document = properties_document(np.array([5, 9], np.uint64), ["a", "b"], np.array([2**33, 1], np.uint64),
                                   np.array([3, 1], np.uint64))
    voxel_count, supervoxel_count = document["inline"]["properties"][1:]
    assert (voxel_count["data_type"], voxel_count["values"]) == ("float32", [2.0**33, 1.0])
    assert (supervoxel_count["data_type"], supervoxel_count["values"]) == ("uint32", [3, 1])
