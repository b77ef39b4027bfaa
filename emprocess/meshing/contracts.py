"""What each MESHING stage's work takes and gives: its payload and result models.

They live apart from ``stages`` so that ``levels`` can name them without importing the plans. The
services publish them as the stages' request and response schemas.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from emprocess.chunkedgraph.contracts import Count, Triple
from emprocess.chunkedgraph.layers import MAX_LAYERS
from emprocess.payloads import Coords, Location, Payload
from emprocess.stages import Result


class MeshMetaPayload(Payload):
    """The mesh ``info`` of the root-ID layer at ``segmentation``, for the graph at ``graph``."""

    graph: Location
    segmentation: Location


class MeshMetaResult(Result):
    """Where the meshes go (the mesh directory the segmentation's ``info`` names), and the bodies and
    shard files its sharding was chosen for."""

    mesh: str
    bodies: Count
    shards: Count


class MeshLayerPayload(Payload):
    """The meshes of one chunk of one layer; fragments of unfinished bodies, and the shard entries of
    finished ones, go to ``pending``."""

    graph: Location
    segmentation: Location
    mesh: Location
    pending: Location
    layer: Annotated[int, Field(ge=2, le=MAX_LAYERS)]
    chunk: Coords
    simplification_factor: Annotated[float, Field(gt=1, le=1e6)]


class MeshLayerResult(Result):
    """The roots whose meshes this chunk finished, and those whose fragments it passed up."""

    layer: Count
    chunk: Triple
    roots: Count
    passed_up: Count


class MeshShardPayload(Payload):
    """Assemble shard file ``shard`` of the meshes at ``mesh`` from the entries every layer job left
    for it in ``pending``."""

    mesh: Location
    pending: Location
    shard: Count


class MeshShardResult(Result):
    """The bodies the shard holds, and its file (written even when empty)."""

    shard: Count
    bodies: Count
    written: str
