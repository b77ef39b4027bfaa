"""What each SKELETONS stage's work takes and gives: its payload and result models.

The services publish them as the stages' request and response schemas.
"""

from __future__ import annotations

from emprocess.chunkedgraph.contracts import Count, Triple
from emprocess.payloads import Coords, Location, Payload
from emprocess.stages import Result


class SkeletonMetaPayload(Payload):
    """The skeleton ``info`` of the root-ID layer at ``segmentation``, for the graph at ``graph``."""

    graph: Location
    segmentation: Location


class SkeletonMetaResult(Result):
    """Where the skeletons go (the folder the segmentation's ``info`` names), and the shards sized
    for the graph's bodies."""

    skeletons: str
    bodies: Count
    shards: Count


class SkeletonChunkPayload(Payload):
    """Trace the bodies in one layer-2 chunk of the graph; their pieces go to ``pending``, by the
    shards of the sharding in the skeleton ``info`` at ``skeletons``."""

    graph: Location
    segmentation: Location
    skeletons: Location
    pending: Location
    chunk: Coords


class SkeletonChunkResult(Result):
    """How many bodies this chunk holds a piece of, and how many shards' pending files it wrote."""

    chunk: Triple
    bodies: Count
    shards: Count


class SkeletonMergePayload(Payload):
    """Merge the pieces of the bodies hashing to ``shard`` and write that shard's file."""

    pending: Location
    skeletons: Location
    shard: Count


class SkeletonMergeResult(Result):
    """The skeletons the shard holds, and its file (None when no body hashes to it)."""

    shard: Count
    bodies: Count
    written: str | None
