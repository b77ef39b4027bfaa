"""The skel.chunks job: kimimaro over one layer-2 chunk of the root-ID layer, its pieces handed on.

The chunk is read with ``OVERLAP`` voxel past its far faces, so that neighbouring chunks share a
plane of voxels. kimimaro's ``fix_borders`` ends every body's piece that touches a face at the same
voxel of each 2D component of the body on that face, whichever chunk traces it; the two pieces then
share that vertex, and the merge joins them there. Vertices are voxel centres in nm in the volume's
frame (``voxel_offset`` included), computed from integer voxel indices so that both chunks store a
shared vertex as the same float32 coordinates.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from emprocess import storage
from emprocess.chunkedgraph import volumes
from emprocess.chunkedgraph.meta import GraphMeta, read_meta
from emprocess.skeletons.contracts import SkeletonChunkPayload, SkeletonChunkResult
from emprocess.skeletons.layout import RADIUS, encode_pieces, pending_url, read_sharding

if TYPE_CHECKING:
    from osteoid import Skeleton

OVERLAP = 1  # voxels read past a chunk's far faces: one shared plane is what fix_borders needs
TEASAR = {"scale": 4, "const": 500}  # igneous' defaults: invalidation radius 4 × DBF + 500 nm


def skeletonize_chunk(payload: SkeletonChunkPayload) -> SkeletonChunkResult:
    """skel.chunks work. kimimaro (and osteoid, networkx) load here, not with the stage table that
    every service, the moc server and the CLI import."""
    import kimimaro

    meta = read_meta(payload.graph)
    coords = meta.check_chunk(2, payload.chunk)
    lo, hi = meta.chunk_bounds(coords)
    labels = volumes.read(volumes.open_scale(payload.segmentation), lo, np.minimum(hi + OVERLAP, meta.size))
    traced = kimimaro.skeletonize(labels, TEASAR, anisotropy=meta.resolution, dust_threshold=0, fix_borders=True,
                                  progress=False, parallel=1, in_place=True)
    roots = sorted(traced)
    shards = read_sharding(payload.skeletons).locate(roots)[0].tolist() if roots else []
    by_shard: dict[int, dict[int, bytes]] = defaultdict(dict)
    for root, shard in zip(roots, shards):
        by_shard[shard][root] = in_volume(traced[root], lo, meta).to_precomputed()
    for shard, pieces in by_shard.items():
        storage.write(pending_url(payload.pending, shard, coords), encode_pieces(pieces))
    return SkeletonChunkResult(chunk=list(coords), bodies=len(traced), shards=len(by_shard))


def in_volume(piece: Skeleton, lo: np.ndarray, meta: GraphMeta) -> Skeleton:
    """A piece traced in the chunk at ``lo`` (vertices in nm from the chunk's first voxel) with its
    vertices at the voxel centres of the volume's frame, and its radius as its only attribute."""
    from osteoid import Skeleton

    resolution = np.asarray(meta.resolution, np.float64)
    voxels = np.rint(piece.vertices / resolution.astype(np.float32)).astype(np.int64) + lo + meta.voxel_offset
    vertices = ((voxels + 0.5) * resolution).astype(np.float32)
    return Skeleton(vertices, piece.edges.astype(np.uint32), radii=piece.radius.astype(np.float32), segid=piece.id,
                    extra_attributes=[RADIUS], space="physical")
