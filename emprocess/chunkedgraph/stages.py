"""The CHUNKEDGRAPH stages: cg.meta → cg.layer2 → cg.layer3 … cg.layer{MAX_LAYERS} → cg.flatten.

All run on the emwrite service. A layer stage exists for every possible layer so that the DAG's
shape never depends on the data; layers above this graph's root layer plan no mini-task (skipped,
not failed). Plans after cg.meta read the graph meta it wrote; a wanted stage whose meta is missing
raises FileNotFoundError (DAG order runs cg.meta first, so that means cg.meta did not finish).
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from pydantic import Field

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.batch import stage_status
from emprocess.chunkedgraph.flatten import flatten_chunk
from emprocess.chunkedgraph.layer2 import build_layer2_chunk
from emprocess.chunkedgraph.layers import MAX_LAYERS
from emprocess.chunkedgraph.meta import GraphMeta, chunk_url, read_meta
from emprocess.chunkedgraph.parents import build_parent_chunk
from emprocess.chunkedgraph.prepare import prepare_graph
from emprocess.config import CHUNK_SIDES
from emprocess.payloads import Coords, Location, Payload, takes
from emprocess.stages import MiniTask, RunContext, Stage

SERVICE = "emwrite"


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


class GraphLayerPayload(Payload):
    """One chunk of one layer of the graph at ``graph``."""

    graph: Location
    layer: Annotated[int, Field(ge=3, le=MAX_LAYERS)]
    chunk: Coords


class GraphLayer2Payload(GraphLayerPayload):
    """One layer-2 chunk, built from the ``watershed`` and writing the graph's own ``supervoxels``."""

    layer: Literal[2]
    watershed: Location
    supervoxels: Location


class FlattenPayload(Payload):
    """One layer-2 chunk of the root-ID layer at ``segmentation``."""

    graph: Location
    supervoxels: Location
    segmentation: Location
    chunk: Coords

__all__ = ["MAX_LAYERS", "STAGES", "chunk_task", "status"]


def _supervoxels(ctx: RunContext) -> str:
    return storage.join(ctx.locations.chunkedgraph, "supervoxels")


def plan_meta(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("chunkedgraph"):
        return []
    segmentation = ctx.conf.segmentation
    payload = {
        "graph": ctx.locations.chunkedgraph,
        "watershed": segmentation.watershed,
        "supervoxels": _supervoxels(ctx),
        "agglomeration": segmentation.agglomeration,
        "chunk_size": list(segmentation.chunk_size),
        "test": segmentation.test,
        "transforms": transforms_url(ctx.locations.process),
        "require_transforms": ctx.wants("align") or ctx.wants("pyramid"),
    }
    return [{"key": "meta", "payload": payload}]


def _meta(ctx: RunContext) -> GraphMeta | None:
    return read_meta(ctx.locations.chunkedgraph) if ctx.wants("chunkedgraph") else None


def _task(ctx: RunContext, layer: int, coords) -> MiniTask:
    x, y, z = (int(c) for c in coords)
    payload = {"graph": ctx.locations.chunkedgraph, "layer": layer, "chunk": [x, y, z]}
    if layer == 2:
        payload.update(watershed=ctx.conf.segmentation.watershed, supervoxels=_supervoxels(ctx))
    return {"key": f"{layer}_{x}_{y}_{z}", "payload": payload}


def plan_layer(layer: int, ctx: RunContext) -> list[MiniTask]:
    meta = _meta(ctx)
    if meta is None or layer > meta.n_layers:
        return []
    return [_task(ctx, layer, coords) for coords in meta.chunks(layer)]


def plan_flatten(ctx: RunContext) -> list[MiniTask]:
    meta = _meta(ctx)
    if meta is None:
        return []
    tasks = []
    for x, y, z in meta.chunks(2):
        payload = {
            "graph": ctx.locations.chunkedgraph,
            "supervoxels": _supervoxels(ctx),
            "segmentation": ctx.locations.segmentation,
            "chunk": [x, y, z],
        }
        tasks.append({"key": f"{x}_{y}_{z}", "payload": payload})
    return tasks


def chunk_task(ctx: RunContext, layer: int, coords) -> MiniTask:
    """The mini-task of one chunk (``emprocess work chunkedgraph --layer L --chunk X Y Z``); run it
    with the work of stage ``f"cg.layer{layer}"``. Re-running a finished chunk rewrites identical bytes."""
    if not ctx.wants("chunkedgraph"):
        raise ValueError("this run's conf builds no chunkedgraph (no segmentation, or not in stages)")
    meta = read_meta(ctx.locations.chunkedgraph)
    return _task(ctx, layer, meta.check_chunk(layer, coords))


def _chunk_written(payload: dict, result: dict) -> bool:
    return storage.exists(chunk_url(payload["graph"], payload["layer"], payload["chunk"]))


def _layer_stage(layer: int) -> Stage:
    work = LAYER2_WORK if layer == 2 else PARENT_WORK
    endpoint = "/cg/layer2" if layer == 2 else "/cg/layer"
    return Stage(f"cg.layer{layer}", SERVICE, endpoint, partial(plan_layer, layer), work, _chunk_written)


LAYER2_WORK = takes(GraphLayer2Payload)(build_layer2_chunk)
PARENT_WORK = takes(GraphLayerPayload)(build_parent_chunk)
STAGES = [
    Stage("cg.meta", SERVICE, "/cg/meta", plan_meta, takes(GraphMetaPayload)(prepare_graph)),
    *(_layer_stage(layer) for layer in range(2, MAX_LAYERS + 1)),
    Stage("cg.flatten", SERVICE, "/cg/flatten", plan_flatten, takes(FlattenPayload)(flatten_chunk)),
]


def status(ctx: RunContext) -> dict[str, dict]:
    """``{stage: {"done", "total"}}`` in run order, one entry per layer (``ingest status``)."""
    return stage_status(ctx, STAGES)
