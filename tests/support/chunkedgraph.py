"""Helpers shared by the chunkedgraph tests: contexts, volumes, in-process stage runs, ground truth.

The ground truth is computed the direct way, on the whole volume in one array: contacts between
watershed supervoxels (cc3d), active when both are listed with the same body, components by scipy.
"""

from __future__ import annotations

from pathlib import Path

import cc3d
import numpy as np
import tensorstore as ts
from scipy.ndimage import distance_transform_edt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from emprocess import storage
from emprocess.batch import run_and_cache
from emprocess.chunkedgraph import chunkfile
from emprocess.chunkedgraph.reader import ChunkedGraph
from emprocess.chunkedgraph.stages import STAGES
from emprocess.stages import RunContext, Stage

STAGE = {stage.name: stage for stage in STAGES}


def make_context(tmp_path: Path, segmentation: dict | None, depth: int, stages=("chunkedgraph",)) -> RunContext:
    conf = {
        "id": "cgtest",
        "image": "img%03d.png",
        "minz": 0,
        "maxz": depth - 1,
        "source": f"file://{tmp_path}/src",
        "stages": list(stages),
        "segmentation": segmentation,
    }
    return RunContext.create(conf, "cg-test")


def graph_of_bodies(folder: Path, shape, count: int, seed: int, chunk_size, stages, resolution=(8, 8, 8),
                    offset=(0, 0, 0)) -> tuple[RunContext, np.ndarray]:
    """A ChunkedGraph built in-process in ``folder`` over ``count`` Voronoi supervoxels joined into
    bodies by a table (seeds ``seed`` and ``seed + 1``): the context, for the stages after it, and the
    supervoxels."""
    supervoxels = voronoi_supervoxels(shape, count=count, seed=seed)
    np.save(folder / "bodies.npy", body_table(supervoxels, seed=seed + 1))
    watershed = write_volume(f"file://{folder}/watershed", supervoxels, chunk=(16, 16, 16),
                             resolution=resolution, offset=offset)
    segmentation = {"watershed": watershed, "agglomeration": f"file://{folder}/bodies.npy",
                    "chunk_size": list(chunk_size)}
    ctx = make_context(folder, segmentation, depth=shape[2], stages=stages)
    run_graph(ctx)
    return ctx, supervoxels


def write_volume(
    url: str, labels: np.ndarray, chunk=(13, 11, 7), resolution=(8, 8, 8), kind="segmentation", offset=(0, 0, 0)
) -> str:
    """A single-scale precomputed volume (raw encoding) holding ``labels`` (x, y, z)."""
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": storage.kvstore_spec(url),
        "multiscale_metadata": {"type": kind, "data_type": str(labels.dtype), "num_channels": 1},
        "scale_metadata": {
            "size": list(labels.shape),
            "voxel_offset": list(offset),
            "resolution": list(resolution),
            "chunk_size": list(chunk),
            "encoding": "raw",
        },
        "create": True,
    }
    store = ts.open(spec, context=storage.context()).result()
    store[..., 0].write(labels).result()
    return url


def write_transforms(ctx: RunContext, width: int, height: int, depth: int) -> None:
    transforms = {"minz": 0, "maxz": depth - 1, "width": width, "height": height, "transforms": {}, "source_sizes": {}}
    storage.write_json(storage.join(ctx.locations.process, "align", "transforms.json"), transforms)


def run_stage(ctx: RunContext, stage: Stage, tasks=None) -> dict[str, dict]:
    """Run a stage in-process like the orchestrator: skip keys whose cache file exists."""
    results = {}
    for task in stage.plan(ctx) if tasks is None else tasks:
        cache = ctx.cache_url(stage.name, task["key"])
        if storage.exists(cache):
            continue
        results[task["key"]] = run_and_cache(stage, ctx, task, lambda task: stage.execute(task["payload"]))
    return results


def run_graph(ctx: RunContext) -> dict[str, dict]:
    return {stage.name: run_stage(ctx, stage) for stage in STAGES}


def read_labels(url: str, scale_index: int = 0) -> np.ndarray:
    """The whole scale as (x, y, z), whatever its voxel_offset."""
    spec = {"driver": "neuroglancer_precomputed", "kvstore": storage.kvstore_spec(url), "scale_index": scale_index}
    return np.asarray(ts.open(spec, context=storage.context()).result()[..., 0].read().result())


def voxel_roots(ctx: RunContext) -> np.ndarray:
    """The root of every voxel's supervoxel, through the reader API (0 stays 0), flattened."""
    supervoxels = read_labels(storage.join(ctx.locations.chunkedgraph, "supervoxels"))
    ids, inverse = np.unique(supervoxels, return_inverse=True)
    return ChunkedGraph(ctx.locations.chunkedgraph).roots(ids)[inverse.reshape(-1)]


def voronoi_supervoxels(shape, count: int, seed: int, membrane: float = 0.15) -> np.ndarray:
    """Compact, 6-connected supervoxels (Voronoi cells split into connected pieces), some voxels 0."""
    rng = np.random.default_rng(seed)
    seeds = np.ones(shape, dtype=bool)
    seeds[tuple(rng.integers(0, s, count) for s in shape)] = False
    _, nearest = distance_transform_edt(seeds, return_indices=True)
    cells = np.ravel_multi_index(tuple(nearest), shape).astype(np.uint32) + 1
    cells[rng.random(shape) < membrane] = 0
    return cc3d.connected_components(cells, connectivity=6).astype(np.uint64)


def body_table(supervoxels: np.ndarray, seed: int) -> np.ndarray:
    """(sv, body) rows: long bodies along x (rods of supervoxels sharing y//6, z//6), random extra
    merges, and ~10 % of supervoxels left out of the table (their own body)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(supervoxels[supervoxels != 0])
    stats = cc3d.statistics(supervoxels.astype(np.uint32))
    centroids = stats["centroids"][ids.astype(np.int64)]
    rods = (centroids[:, 1] // 6).astype(np.int64) * 1000 + (centroids[:, 2] // 6).astype(np.int64)
    merged = rng.integers(0, 5, rods.size) == 0
    rods[merged] = rng.integers(0, 4, merged.sum())  # a few sprawling bodies
    listed = rng.random(ids.size) > 0.1
    return np.stack([ids[listed], rods[listed].astype(np.uint64) + 7], axis=1)


def active_components(watershed: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    """Voxel labels of the connected components of all active edges (0 stays 0)."""
    ids = np.unique(watershed)
    ids = ids[ids != 0]
    body = np.zeros(ids.size, dtype=np.uint64)
    listed = np.zeros(ids.size, dtype=bool)
    if table is not None and table.size:
        pos = np.searchsorted(ids, table[:, 0])
        inside = pos < ids.size
        inside[inside] = ids[pos[inside]] == table[inside, 0]
        body[pos[inside]], listed[pos[inside]] = table[inside, 1], True
    pairs = np.array(list(cc3d.contacts(watershed, connectivity=6, surface_area=False)), dtype=np.uint64).reshape(-1, 2)
    a, b = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
    active = listed[a] & listed[b] & (body[a] == body[b])
    matrix = coo_matrix((np.ones(active.sum()), (a[active], b[active])), shape=(ids.size, ids.size))
    labels = connected_components(matrix, directed=False)[1] + 1
    return _map(watershed, ids, labels)


def _map(volume: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(volume.shape, dtype=np.int64)
    nonzero = volume != 0
    out[nonzero] = values[np.searchsorted(keys, volume[nonzero])]
    return out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label arrays group the same elements together (labels may differ; 0 ↔ 0)."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if not np.array_equal(a == 0, b == 0):
        return False
    a, b = (np.unique(x[x != 0], return_inverse=True)[1].reshape(-1).astype(np.int64) for x in (a, b))
    pairs = np.unique(a * (b.max(initial=0) + 1) + b)  # one key per (a label, b label) pair
    return pairs.size == np.unique(a).size == np.unique(b).size


def chunk_files(ctx: RunContext) -> dict[tuple, dict[str, np.ndarray]]:
    """Every chunk file of the graph, keyed (layer, x, y, z)."""
    files = {}
    for name in storage.listdir(ctx.locations.chunkedgraph):
        if name.startswith("layer_"):
            layer, coords = name.split("/")
            key = (int(layer.removeprefix("layer_")), *(int(c) for c in coords.split("_")))
            files[key] = chunkfile.read(storage.join(ctx.locations.chunkedgraph, name))
    return files

