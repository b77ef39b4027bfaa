"""What each CHUNKEDGRAPH stage's work takes and gives: its payload and result models.

They live apart from ``stages`` so that the work modules can name them without importing the plans.
The services publish them as the stages' request and response schemas.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from emprocess.chunkedgraph.layers import MAX_LAYERS
from emprocess.config import CHUNK_SIDES
from emprocess.payloads import Coords, Location, Payload
from emprocess.stages import Result

Count = Annotated[int, Field(ge=0)]
Triple = Annotated[list[Count], Field(min_length=3, max_length=3)]  # (x, y, z): a size, a grid, a chunk


class GraphMetaPayload(Payload):
    """The graph at ``graph`` over the supervoxels of ``watershed`` (see prepare.prepare_graph)."""

    graph: Location
    watershed: Location
    supervoxels: Location
    agglomeration: Location | None = None
    chunk_size: Annotated[list[Annotated[int, Field(ge=CHUNK_SIDES[0], le=CHUNK_SIDES[1])]],
                          Field(min_length=3, max_length=3)]
    test: bool = False
    transforms: Location
    require_transforms: bool


class GraphMetaResult(Result):
    """The graph's layout, and what the agglomeration table held (rows, ids absent from the watershed)."""

    size: Triple
    chunk_size: Triple
    grid: Triple
    n_layers: Count
    agglomeration_rows: Count
    unknown_supervoxels: Count
    warnings: list[str]


class GraphLayerPayload(Payload):
    """One chunk of one layer of the graph at ``graph``."""

    graph: Location
    layer: Annotated[int, Field(ge=3, le=MAX_LAYERS)]
    chunk: Coords


class GraphLayer2Payload(Payload):
    """One layer-2 chunk, built from the ``watershed`` and writing the graph's own ``supervoxels``."""

    graph: Location
    layer: Literal[2]
    chunk: Coords
    watershed: Location
    supervoxels: Location


class ChunkResult(Result):
    """A graph chunk job's counts: its nodes, those left ``open`` for a higher layer, the roots named."""

    layer: Count
    chunk: Triple
    nodes: Count
    open: Count
    roots: Count


class GraphLayer2Result(ChunkResult):
    """Also the chunk's supervoxels and its edges, inside it and across its faces (all and active)."""

    supervoxels: Count
    edges: Count
    active_edges: Count
    cross_edges: Count
    active_cross_edges: Count


class GraphLayerResult(ChunkResult):
    """Also the ``candidates``: the children chunks' open nodes this job joined or carried up."""

    candidates: Count


class FlattenPayload(Payload):
    """One layer-2 chunk of the root-ID layer at ``segmentation``."""

    graph: Location
    supervoxels: Location
    segmentation: Location
    chunk: Coords


class FlattenResult(Result):
    """The chunk's supervoxels, the distinct roots they map to and the scales written."""

    chunk: Triple
    supervoxels: Count
    roots: Count
    scales: Count
