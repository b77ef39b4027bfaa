"""The cg.meta job: validate the segmentation inputs, then write the graph meta and what chunk jobs share.

Checks (the rules are in ``inputs``; ``validate`` runs them before the run writes anything), all
before any write: the watershed exists and is a single-channel uint32/uint64 ``segmentation``; its
size matches the run's volume; ``chunk_size`` entries are positive powers of two and the graph fits
the ID layout and the chunk bound; the agglomeration table is readable with one body per supervoxel.
Table ids absent from the watershed are only counted and reported (a table is often made for a
larger volume than the one ingested); counting them costs one pass over the watershed, block by
block, so only when a table is given.

The run's volume size is ``(width, height, maxz − minz + 1)`` of ``<process>/align/transforms.json``
when that exists. Without it the conf must exclude align and pyramid (``"stages": ["chunkedgraph"]``
against an existing volume): then the watershed's own size defines the frame, as nothing else does.
Only here is the exact size known after a pairwise alignment, whose canvas may be wider than a slice.

Writes: the sharded table, the supervoxel volume's ``info`` and, last, ``meta.json``.
"""

from __future__ import annotations

import itertools
import logging
import math

import fastremap
import numpy as np

from emprocess import storage
from emprocess.chunkedgraph import inputs, volumes
from emprocess.chunkedgraph.agglomeration import load_table, shard_index, write_shards
from emprocess.chunkedgraph.contracts import GraphMetaPayload, GraphMetaResult
from emprocess.chunkedgraph.ids import SPATIAL_BITS
from emprocess.chunkedgraph.meta import GraphMeta, meta_url, read_meta
from emprocess.stages import InputError

log = logging.getLogger(__name__)
SCAN_VOXELS = 1 << 24  # voxels per block when scanning the watershed for table ids


def prepare_graph(payload: GraphMetaPayload) -> GraphMetaResult:
    """cg.meta work."""
    graph, watershed, agglomeration = payload.graph, payload.watershed, payload.agglomeration
    chunk_size = inputs.check_chunk_size(payload.chunk_size)
    scale = inputs.watershed_scale(watershed)
    size = tuple(int(s) for s in scale["size"])
    frame = inputs.transforms_frame(payload.transforms, payload.require_transforms)
    if frame is not None:
        frame.check(watershed, size)
    grid, n_layers = inputs.check_grid(watershed, size, chunk_size)

    if agglomeration:
        supervoxels, bodies = load_table(agglomeration)
        unknown = _count_unknown(watershed, supervoxels, size, chunk_size)
    else:
        supervoxels = bodies = np.zeros(0, np.uint64)
        unknown = 0
    warnings = []
    if unknown:
        warnings.append(
            f"agglomeration {agglomeration}: {unknown} of {supervoxels.size} supervoxel ids "
            f"are not in watershed {watershed}; they are ignored"
        )
        log.warning(warnings[-1])

    meta = GraphMeta(
        watershed=watershed,
        supervoxels=payload.supervoxels,
        agglomeration=agglomeration,
        size=size,
        voxel_offset=tuple(int(o) for o in scale["voxel_offset"]),
        resolution=tuple(float(r) for r in scale["resolution"]),
        chunk_size=chunk_size,
        grid=grid,
        n_layers=n_layers,
        spatial_bits=SPATIAL_BITS,
        test=payload.test,
        table=shard_index(supervoxels) if supervoxels.size else None,
    )
    try:
        existing = read_meta(graph)
    except FileNotFoundError:
        existing = None
    if existing is not None and existing != meta:
        raise InputError(f"{meta_url(graph)}: a graph with another layout or input exists there; use a new run")

    if supervoxels.size:
        write_shards(graph, supervoxels, bodies)
    storage_chunk = [min(c, volumes.STORAGE_CHUNK) for c in chunk_size]
    scale0 = volumes.segmentation_scale(size, meta.voxel_offset, meta.resolution, storage_chunk)
    storage.write_json(volumes.info_url(meta.supervoxels), volumes.segmentation_info([scale0]))
    storage.write_json(meta_url(graph), meta.to_json())
    return GraphMetaResult(
        size=list(size),
        chunk_size=list(chunk_size),
        grid=list(grid),
        n_layers=n_layers,
        agglomeration_rows=int(supervoxels.size),
        unknown_supervoxels=int(unknown),
        warnings=warnings,
    )


def _count_unknown(watershed: str, supervoxels: np.ndarray, size: tuple, chunk_size: tuple) -> int:
    """How many table supervoxels never occur in the watershed (one pass, block by block)."""
    if not supervoxels.size:
        return 0
    store = volumes.open_scale(watershed)
    factor = 1
    while math.prod(c * factor * 2 for c in chunk_size) <= SCAN_VOXELS:
        factor *= 2
    block = [c * factor for c in chunk_size]
    seen = np.zeros(supervoxels.size, dtype=bool)
    starts = list(itertools.product(*(range(0, s, b) for s, b in zip(size, block))))
    reads = (volumes.read_later(store, lo, np.minimum(np.add(lo, block), size)) for lo in starts)
    upcoming = next(reads)
    for _ in starts:
        current, upcoming = upcoming, next(reads, None)  # the next block loads during this one's unique
        ids = fastremap.unique(current.result()).astype(np.uint64)
        pos = np.minimum(np.searchsorted(supervoxels, ids), supervoxels.size - 1)
        seen[pos[supervoxels[pos] == ids]] = True
    return int((~seen).sum())
