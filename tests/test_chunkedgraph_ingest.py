"""ChunkedGraph ingest on random segmentations: the graph invariants, test mode, status and re-runs."""

from __future__ import annotations

import numpy as np
import pytest
from support.chunkedgraph import (
    STAGE,
    active_components,
    body_table,
    chunk_files,
    make_context,
    read_labels,
    run_graph,
    run_stage,
    same_partition,
    voronoi_supervoxels,
    voxel_roots,
    write_volume,
)

from emprocess import storage
from emprocess.chunkedgraph.meta import read_meta
from emprocess.chunkedgraph.reader import ChunkedGraph
from emprocess.chunkedgraph.stages import MAX_LAYERS, STAGES, chunk_task, status

SHAPE = (96, 80, 72)
CHUNK = [16, 16, 16]
BIG_IDS = np.uint64(1 << 40)  # watershed ids beyond uint32


def build_inputs(tmp_path, shape=SHAPE, seed=1, dtype=np.uint64, test=False):
    supervoxels = voronoi_supervoxels(shape, count=7200, seed=seed)
    table = body_table(supervoxels, seed)
    if dtype == np.uint64:
        supervoxels = np.where(supervoxels != 0, supervoxels + BIG_IDS, 0).astype(np.uint64)
        table[:, 0] += BIG_IDS
    watershed = write_volume(f"file://{tmp_path}/watershed", supervoxels.astype(dtype))
    np.save(tmp_path / "bodies.npy", table)
    table_url = f"file://{tmp_path}/bodies.npy"
    segmentation = {"watershed": watershed, "agglomeration": table_url, "chunk_size": CHUNK, "test": test}
    return make_context(tmp_path, segmentation, depth=shape[2]), supervoxels, table


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    ctx, watershed, table = build_inputs(tmp_path_factory.mktemp("graph"))
    run_graph(ctx)
    return ctx, watershed, table


def test_random_data_has_bodies_crossing_many_chunks(built):
    ctx, watershed, table = built
    truth = active_components(watershed, table)
    x_chunks = [np.unique(np.nonzero(truth == label)[0] // CHUNK[0]).size for label in np.unique(truth[truth != 0])]
    assert max(x_chunks) == SHAPE[0] // CHUNK[0]
    assert read_meta(ctx.locations.chunkedgraph).n_layers == 5


def test_root_partition_equals_components_of_all_active_edges(built):
    ctx, watershed, table = built
    truth = active_components(watershed, table)
    flattened = read_labels(ctx.locations.segmentation)
    assert same_partition(flattened, truth)
    assert same_partition(voxel_roots(ctx), truth)


def test_layer2_nodes_are_maximal_connected_sets_within_their_chunk(built):
    ctx, watershed, table = built
    graph = ChunkedGraph(ctx.locations.chunkedgraph)
    supervoxels = read_labels(storage.join(ctx.locations.chunkedgraph, "supervoxels"))
    for x, y, z in read_meta(ctx.locations.chunkedgraph).chunks(2):
        box = tuple(slice(c * s, (c + 1) * s) for c, s in zip((x, y, z), CHUNK))
        expected = active_components(watershed[box], table)
        ids, inverse = np.unique(supervoxels[box], return_inverse=True)
        layer2 = np.array([graph.parent(int(sv)) if sv else 0 for sv in ids], dtype=np.uint64)
        assert set(graph.layout.layers(layer2[layer2 != 0]).tolist()) <= {2}
        assert same_partition(layer2[inverse.reshape(-1)], expected), (x, y, z)


def test_every_node_has_exactly_one_parent_in_its_ancestor_chunk(built):
    ctx, *_ = built
    layout = read_meta(ctx.locations.chunkedgraph).layout
    files = chunk_files(ctx)
    child = np.concatenate([f["child"] for f in files.values()])
    parent = np.concatenate([f["parent"] for f in files.values()])
    assert np.unique(child).size == child.size  # no node has two parents
    supervoxels = np.concatenate([f["supervoxels"] for key, f in files.items() if key[0] == 2])
    nodes = np.union1d(supervoxels, parent)
    below_root = nodes[layout.layers(nodes) < layout.n_layers]
    assert np.array_equal(np.sort(child), below_root)  # every non-root node has a parent
    child_layer, parent_layer = layout.layers(child), layout.layers(parent)
    assert (parent_layer > child_layer).all()
    inner = parent_layer < layout.n_layers
    home = np.maximum(child_layer[inner], 2)
    shift = (parent_layer[inner] - home)[:, None]
    assert np.array_equal(layout.chunks(parent[inner]), layout.chunks(child[inner]) >> shift)
    for root, node in zip(parent[~inner][:200], child[~inner][:200]):
        origin_layer, origin = layout.root_origin(int(root))
        node_home = max(int(layout.layers([node])[0]), 2)
        assert tuple(layout.chunks([node])[0] >> (origin_layer - node_home)) == origin


def test_reader_children_leaves_and_layer_agree(built):
    ctx, *_ = built
    graph = ChunkedGraph(ctx.locations.chunkedgraph)
    supervoxels = np.unique(read_labels(storage.join(ctx.locations.chunkedgraph, "supervoxels")))[1:]
    roots = graph.roots(supervoxels)
    values, counts = np.unique(roots, return_counts=True)
    largest = int(values[counts.argmax()])
    assert graph.layer(largest) == graph.meta.n_layers
    assert np.array_equal(graph.leaves(largest), supervoxels[roots == largest])
    for child in graph.children(largest):
        assert graph.parent(int(child)) == largest
        grandchildren = graph.children(int(child))
        assert all(graph.parent(int(g)) == int(child) for g in grandchildren[:20])
    assert graph.root(int(supervoxels[0])) == int(roots[0])
    assert graph.parent(largest) is None


def test_status_counts_cached_tasks_and_skips_layers_above_the_root(built):
    ctx, *_ = built
    report = status(ctx)
    assert list(report) == [stage.name for stage in STAGES]
    assert report["cg.layer2"] == {"done": 6 * 5 * 5, "total": 6 * 5 * 5}
    assert report["cg.layer5"] == {"done": 1, "total": 1}
    assert all(report[f"cg.layer{layer}"] == {"done": 0, "total": 0} for layer in range(6, MAX_LAYERS + 1))
    storage.delete(ctx.cache_url("cg.layer3", "3_1_1_1"))
    assert status(ctx)["cg.layer3"] == {"done": 26, "total": 27}
    run_stage(ctx, STAGE["cg.layer3"])
    assert status(ctx)["cg.layer3"] == {"done": 27, "total": 27}


def test_one_chunk_reruns_from_its_task_with_identical_bytes(built):
    ctx, *_ = built
    for layer, coords in ((2, (3, 2, 1)), (4, (1, 0, 1))):
        task = chunk_task(ctx, layer, coords)
        assert task["key"] == f"{layer}_{coords[0]}_{coords[1]}_{coords[2]}"
        url = storage.join(ctx.locations.chunkedgraph, f"layer_{layer}", "_".join(map(str, coords)))
        before = storage.read(url)
        STAGE[f"cg.layer{layer}"].execute(task["payload"])
        assert storage.read(url) == before
    with pytest.raises(ValueError, match="not built at layer 3"):
        chunk_task(ctx, 3, (9, 0, 0))


def test_resume_after_a_killed_worker_gives_the_uninterrupted_result(tmp_path, built):
    ctx, *_ = built
    resumed, *_ = build_inputs(tmp_path)
    for name in ("cg.meta", "cg.layer2"):
        run_stage(resumed, STAGE[name])
    stage = STAGE["cg.layer3"]
    tasks = stage.plan(resumed)
    run_stage(resumed, stage, tasks[:7])  # worker ran 7 chunks, then was killed during the 8th:
    stage.execute(tasks[7]["payload"])  # its file is written, its result never cached
    rerun = run_stage(resumed, stage)
    assert sorted(rerun) == sorted(task["key"] for task in tasks[7:])
    for name in [s.name for s in STAGES][3:]:
        run_stage(resumed, STAGE[name])
    uninterrupted = chunk_files(ctx)
    files = chunk_files(resumed)
    assert files.keys() == uninterrupted.keys()
    for key, arrays in files.items():
        assert arrays.keys() == uninterrupted[key].keys()
        assert all(np.array_equal(arrays[n], uninterrupted[key][n]) for n in arrays), key
    child = np.concatenate([f["child"] for f in files.values()])
    assert np.unique(child).size == child.size
    assert np.array_equal(read_labels(resumed.locations.segmentation), read_labels(ctx.locations.segmentation))


def test_test_mode_builds_eight_layer2_chunks_and_their_parents(tmp_path):
    ctx, watershed, table = build_inputs(tmp_path, seed=3, dtype=np.uint32, test=True)
    results = run_graph(ctx)
    assert len(results["cg.layer2"]) == 8
    assert len(results["cg.layer3"]) == len(results["cg.layer4"]) == len(results["cg.layer5"]) == 1
    files = sorted(chunk_files(ctx))
    assert files[:8] == [(2, x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)]
    assert files[8:] == [(layer, 0, 0, 0) for layer in (3, 4, 5)]
    box = tuple(slice(0, 2 * c) for c in CHUNK)
    flattened = read_labels(ctx.locations.segmentation)
    assert same_partition(flattened[box], active_components(watershed[box], table))
    assert not flattened[2 * CHUNK[0] :].any()


def test_plans_are_empty_when_the_graph_is_not_wanted(tmp_path):
    ctx, *_ = build_inputs(tmp_path)
    no_graph = make_context(tmp_path, None, depth=SHAPE[2], stages=("chunkedgraph",))
    other_stages = make_context(tmp_path, {"watershed": "file:///nowhere"}, depth=SHAPE[2], stages=("align",))
    for stage in STAGES:
        assert stage.plan(no_graph) == [] and stage.plan(other_stages) == []
    with pytest.raises(FileNotFoundError, match="cg.meta has not run"):
        STAGE["cg.layer2"].plan(ctx)
    assert status(ctx)["cg.layer2"] == {"done": 0, "total": None}


def test_offset_watershed_with_empty_chunks_and_no_table(tmp_path):
    watershed = voronoi_supervoxels((40, 36, 24), count=60, seed=5).astype(np.uint32)
    watershed[:16, :16, :] = 0  # whole chunks without a supervoxel
    url = write_volume(f"file://{tmp_path}/watershed", watershed, chunk=(7, 9, 5), offset=(5, 7, 3))
    ctx = make_context(tmp_path, {"watershed": url, "chunk_size": [16, 16, 16]}, depth=24)
    results = run_graph(ctx)
    assert results["cg.layer2"]["2_0_0_0"]["supervoxels"] == 0
    flattened = read_labels(ctx.locations.segmentation)
    assert same_partition(flattened, active_components(watershed, None))
    assert np.unique(flattened[flattened != 0]).size == np.unique(watershed[watershed != 0]).size
    info = storage.read_json(storage.join(ctx.locations.segmentation, "info"))
    assert info["scales"][0]["voxel_offset"] == [5, 7, 3] and info["scales"][0]["size"] == [40, 36, 24]


def test_cli_status_and_one_chunk_rerun(built, tmp_path, capsys):
    """``emprocess status RUN`` (like ``ingest status``) and ``emprocess work chunkedgraph --layer --chunk``
    (like ``ingest chunk``) on the built graph."""
    import json

    from emprocess.cli import main

    ctx, *_ = built
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(ctx.conf.to_json()))
    chunk = storage.join(ctx.locations.chunkedgraph, "layer_3", "2_1_0")
    before = storage.read(chunk)
    storage.delete(ctx.cache_url("cg.layer3", "3_2_1_0"))
    assert main(["-q", "status", ctx.run_id, "--conf", str(conf_path)]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert lines["cg.layer2"] == "150/150" and lines["cg.layer3"] == "26/27" and lines["cg.layer6"] == "0/0"
    assert main(["-q", "work", "chunkedgraph", "--layer", "3", "--chunk", "2", "1", "0", "--conf", str(conf_path),
                 "--run-id", ctx.run_id]) == 0
    assert storage.read(chunk) == before and storage.exists(ctx.cache_url("cg.layer3", "3_2_1_0"))
    assert main(["-q", "work", "chunkedgraph", "--layer", "3", "--conf", str(conf_path), "--run-id", ctx.run_id]) == 2
    assert "--chunk" in capsys.readouterr().err
