"""The cg.flatten job: the root-ID segmentation (precomputed, compressed_segmentation) of one graph chunk.

Each job maps its chunk's supervoxels to their roots and writes the chunk at every scale, downsampling
by mode within the chunk. Storage chunks never straddle two graph chunks at any scale (they are at
most the graph chunk's footprint there), so no two jobs write one file. Scales stop when a graph
chunk would shrink below ``MIN_BLOCK_XY`` voxels in x or y, or when one storage chunk holds the volume.
Axes are halved while their resolution is below twice the finest one, which keeps anisotropic
(serial-section) data from being flattened in z first. Last, the job writes its chunk's voxel and
supervoxel counts per root (properties.py), so that file exists only once the chunk is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import fastremap
import numpy as np

from emprocess import corrupt, storage
from emprocess.chunkedgraph import volumes
from emprocess.chunkedgraph.contracts import FlattenPayload, FlattenResult
from emprocess.chunkedgraph.downsample import downsample_mode
from emprocess.chunkedgraph.meta import GraphMeta, read_meta
from emprocess.chunkedgraph.properties import write_chunk_counts
from emprocess.chunkedgraph.reader import ChunkedGraph
from emprocess.stages import InputError

MIN_BLOCK_XY = 16


@dataclass(frozen=True)
class Scale:
    info: dict  # the scale's entry in the precomputed info
    step: tuple[int, int, int]  # downsampling from the previous scale
    factor: tuple[int, int, int]  # downsampling from scale 0


def flatten_scales(meta: GraphMeta) -> list[Scale]:
    resolution, block, factor = list(meta.resolution), list(meta.chunk_size), [1, 1, 1]
    scales = []
    step = (1, 1, 1)
    while True:
        size = [math.ceil(s / f) for s, f in zip(meta.size, factor)]
        chunk = [min(b, volumes.STORAGE_CHUNK) for b in block]
        offset = [o // f for o, f in zip(meta.voxel_offset, factor)]
        scales.append(Scale(volumes.segmentation_scale(size, offset, resolution, chunk), step, tuple(factor)))
        if all(s <= c for s, c in zip(size, chunk)):
            return scales
        finest = min(resolution)
        step = tuple(2 if r < 2 * finest and b % 2 == 0 else 1 for r, b in zip(resolution, block))
        block = [b // s for b, s in zip(block, step)]
        if step == (1, 1, 1) or min(block[:2]) < MIN_BLOCK_XY:
            return scales
        resolution = [r * s for r, s in zip(resolution, step)]
        factor = [f * s for f, s in zip(factor, step)]


def flatten_chunk(payload: FlattenPayload) -> FlattenResult:
    """cg.flatten work."""
    graph, segmentation = payload.graph, payload.segmentation
    meta = read_meta(graph)
    coords = meta.check_chunk(2, payload.chunk)
    scales = flatten_scales(meta)
    _ensure_info(segmentation, scales)
    lo, hi = meta.chunk_bounds(coords)
    labels = volumes.read(volumes.open_scale(payload.supervoxels), lo, hi)
    supervoxels, voxels = fastremap.unique(labels, return_counts=True)
    reader = ChunkedGraph(graph)
    roots = reader.roots(supervoxels)
    labels = fastremap.remap(labels, dict(zip(supervoxels.tolist(), roots.tolist())), in_place=True)
    for index, scale in enumerate(scales):
        if index:
            labels = downsample_mode(labels, scale.step)
        volumes.write(volumes.open_scale(segmentation, index), lo // np.array(scale.factor), labels)
    body = supervoxels != 0
    write_chunk_counts(graph, coords, supervoxels[body], voxels[body], roots[body], reader.chunk_file(2, coords))
    return FlattenResult(
        chunk=list(coords),
        supervoxels=int(np.count_nonzero(supervoxels)),
        roots=int(np.unique(roots[roots != 0]).size),
        scales=len(scales),
    )


def _ensure_info(segmentation: str, scales: list[Scale]) -> None:
    """Write the info once; every job computes the same one, and keys others add (mesh) are kept."""
    url = volumes.info_url(segmentation)
    wanted = volumes.segmentation_info([s.info for s in scales])
    data = storage.read_if_exists(url)
    if data is None:
        storage.write_json(url, wanted)
        return
    existing = corrupt.parse_json(data, url)
    if not isinstance(existing, dict) or existing.get("scales") != wanted["scales"]:
        raise InputError(f"{url}: an info with other scales exists there; delete it or use a new run")
