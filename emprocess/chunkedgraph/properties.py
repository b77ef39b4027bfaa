"""The root-ID layer's segment properties: each body's label, voxel count and supervoxel count.

The cg.flatten job of a chunk already holds what they need: the chunk's supervoxels, their voxel
counts and their roots. It writes them as one small file (``chunk_counts_url``; one row per
graph supervoxel: root, watershed id, voxels), and ``write_segment_properties``, run once by
``publish`` after every flatten job is done, merges them into neuroglancer's inline
``segment_properties`` beside the segmentation, then names that folder in the segmentation's
``info``, so a viewer never finds a partial file. A supervoxel is one of the watershed's ids: one
cut by chunk faces into several graph (layer-1) pieces counts once. A body's label is its body id in
the agglomeration table ("body 7": a body in pieces that do not touch is several roots of one label),
or "supervoxel <id>" for a supervoxel the table does not list.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from emprocess import storage
from emprocess.chunkedgraph import chunkfile
from emprocess.chunkedgraph.agglomeration import lookup_bodies
from emprocess.chunkedgraph.meta import GraphMeta, read_meta
from emprocess.chunkedgraph.volumes import name_in_info
from emprocess.run_layout import BODY_COUNTS, SEGMENT_PROPERTIES
from emprocess.stages import InputError

UINT32_MAX = np.iinfo(np.uint32).max
COUNT_READERS = 16  # small counts files read at once (I/O bound)


def chunk_counts_url(graph: str, coords) -> str:
    x, y, z = (int(c) for c in coords)
    return storage.join(graph, BODY_COUNTS, f"{x}_{y}_{z}")


def properties_url(segmentation: str) -> str:
    return storage.join(segmentation, SEGMENT_PROPERTIES, "info")


def write_chunk_counts(graph: str, coords, supervoxels: np.ndarray, voxels: np.ndarray, roots: np.ndarray,
                       layer2_file: dict[str, np.ndarray]) -> None:
    """The chunk's nonzero graph ``supervoxels`` (sorted) with their ``voxels`` and ``roots``; their
    watershed ids come from the chunk's layer-2 file (``layer2_file``), which made them."""
    known = layer2_file["supervoxels"]
    if not np.isin(supervoxels, known).all():
        raise InputError(f"layer-2 chunk {[int(c) for c in coords]} of {graph}: its supervoxel volume holds "
                         "ids its layer-2 file does not list")
    watershed = layer2_file["watershed"][np.searchsorted(known, supervoxels)]
    order = np.lexsort((watershed, roots))
    arrays = {"root": roots[order], "watershed": watershed[order], "voxels": voxels[order]}
    chunkfile.write(chunk_counts_url(graph, coords), {k: v.astype(np.uint64) for k, v in arrays.items()})


def _chunk_counts(graph: str, meta: GraphMeta):
    """Every cg.flatten job's counts, chunk by chunk, read several at once (small files)."""
    urls = [chunk_counts_url(graph, coords) for coords in meta.chunks(2)]
    with ThreadPoolExecutor(COUNT_READERS) as pool:
        yield from pool.map(chunkfile.read, urls)


def count_bodies(graph: str, meta: GraphMeta) -> int:
    """The roots with voxels (those that get a mesh), from the counts every cg.flatten job wrote."""
    roots = [np.unique(arrays["root"]) for arrays in _chunk_counts(graph, meta)]
    return int(np.unique(np.concatenate([np.zeros(0, np.uint64), *roots])).size)


def write_segment_properties(graph: str, segmentation: str) -> None:
    """Merge every flatten job's counts into the segment properties. A missing chunk's counts
    (its flatten job not done) are a FileNotFoundError naming them, and nothing is written."""
    meta = read_meta(graph)
    parts = list(_chunk_counts(graph, meta))
    root, watershed, voxels = (np.concatenate([np.zeros(0, np.uint64), *(p[k] for p in parts)])
                               for k in ("root", "watershed", "voxels"))
    roots, first, inverse = np.unique(root, return_index=True, return_inverse=True)
    voxel_count = np.zeros(roots.size, np.uint64)
    np.add.at(voxel_count, inverse.reshape(-1), voxels)
    pairs = np.unique(np.stack([root, watershed], axis=1), axis=0)
    supervoxel_count = np.unique(pairs[:, 0], return_counts=True)[1]
    labels = _labels(graph, meta.table, watershed[first])
    document = properties_document(roots, labels, voxel_count, supervoxel_count)
    storage.write(properties_url(segmentation), json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
    name_in_info(segmentation, "segment_properties", SEGMENT_PROPERTIES)


def largest_bodies(segmentation: str, count: int) -> list[int]:
    """The ``count`` bodies with the most voxels, by the segment properties (none before they are
    written): the bodies a viewer link selects, so their meshes and skeletons show at once."""
    document = storage.read_json_if_exists(properties_url(segmentation))
    if document is None:
        return []
    ids = document["inline"]["ids"]
    voxels = next(p["values"] for p in document["inline"]["properties"] if p["id"] == "voxel_count")
    ranked = sorted(zip(voxels, ids), key=lambda pair: (-pair[0], int(pair[1])))
    return [int(body) for _, body in ranked[:count]]


def _labels(graph: str, table: dict | None, watershed: np.ndarray) -> list[str]:
    """Each root's label from one of its watershed ids: its body in the agglomeration table (a
    root's supervoxels all have one), else that supervoxel, which is then its own body."""
    bodies, listed = lookup_bodies(graph, table, watershed)
    return [f"body {b}" if is_listed else f"supervoxel {w}"
            for b, is_listed, w in zip(bodies.tolist(), listed.tolist(), watershed.tolist())]


def properties_document(roots: np.ndarray, labels: list[str], voxel_count: np.ndarray,
                        supervoxel_count: np.ndarray) -> dict:
    """The ``neuroglancer_segment_properties`` info, every property inline, ids sorted."""
    return {
        "@type": "neuroglancer_segment_properties",
        "inline": {
            "ids": [str(r) for r in roots.tolist()],
            "properties": [
                {"id": "label", "type": "label", "values": labels},
                _number("voxel_count", "voxels of the body at full resolution", voxel_count),
                _number("supervoxel_count", "watershed supervoxels in the body", supervoxel_count),
            ],
        },
    }


def _number(name: str, description: str, values: np.ndarray) -> dict:
    """A number property: uint32 when every value fits, else float32 (neuroglancer has no 64-bit
    integer property), which rounds values above 2^24."""
    fits = not values.size or int(values.max()) <= UINT32_MAX
    data_type, cast = ("uint32", np.uint32) if fits else ("float32", np.float32)
    return {"id": name, "type": "number", "data_type": data_type, "description": description,
            "values": values.astype(cast).tolist()}
