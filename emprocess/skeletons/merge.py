"""The skel.merge job: every body of one shard, its chunk pieces joined into one skeleton, written
as that shard's file, once, by this job alone.

Pieces of neighbouring chunks share their border vertices (see ``pieces``), so concatenating a
body's pieces and merging coincident vertices (osteoid's ``simple_merge`` and ``consolidate``)
connects them; nothing else is added, so every vertex stays a voxel centre of the body. The shard's
bytes come from ``emprocess.sharding``, which lays entries out by key, so a re-run writes identical
bytes. The job holds one shard's skeletons: the sharding keeps a shard to a few thousand bodies.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from emprocess import storage
from emprocess.skeletons.contracts import SkeletonMergePayload, SkeletonMergeResult
from emprocess.skeletons.layout import RADIUS, decode_pieces, pending_folder, read_sharding
from emprocess.stages import InputError

if TYPE_CHECKING:
    from osteoid import Skeleton


def merge_shard(payload: SkeletonMergePayload) -> SkeletonMergeResult:
    """skel.merge work. osteoid (and networkx) load here, not with the stage table (see ``pieces``)."""
    from osteoid import Skeleton

    spec = read_sharding(payload.skeletons)
    if payload.shard >= spec.shards:
        raise InputError(f"shard {payload.shard} is not one of the {spec.shards} of {payload.skeletons}")
    pieces: dict[int, list[Skeleton]] = defaultdict(list)
    folder = pending_folder(payload.pending, payload.shard)
    for name in storage.listdir(folder):
        url = storage.join(folder, name)
        for root, data in decode_pieces(storage.read(url), url).items():
            pieces[root].append(Skeleton.from_precomputed(data, segid=root, vertex_attributes=[RADIUS]))
    entries = []
    for root in sorted(pieces):
        skeleton = merged(pieces.pop(root))
        if len(skeleton.edges):  # a body too small to trace an edge in (a voxel or two) gets none
            entries.append((root, skeleton.to_precomputed(), 0))
    if not entries:
        return SkeletonMergeResult(shard=payload.shard, bodies=0, written=None)
    url = storage.join(payload.skeletons, spec.shard_name(payload.shard))
    storage.write(url, spec.shard_file(entries))
    return SkeletonMergeResult(shard=payload.shard, bodies=len(entries), written=url)


def merged(pieces: list[Skeleton]) -> Skeleton:
    """One body's pieces joined where they share vertices; vertices without an edge are dropped."""
    from osteoid import Skeleton

    skeleton = Skeleton.simple_merge(pieces).consolidate()
    skeleton.extra_attributes = [RADIUS]
    return skeleton
