"""The CHUNKEDGRAPH stages: cg.meta → cg.layer2 → cg.layer3 … cg.layer{MAX_LAYERS} → cg.flatten.

All run on the emwrite service. A layer stage exists for every possible layer so that the DAG's
shape never depends on the data; layers above this graph's root layer plan no mini-task (skipped,
not failed). Plans after cg.meta read the graph meta it wrote; a wanted stage whose meta is missing
raises FileNotFoundError (DAG order runs cg.meta first, so that means cg.meta did not finish).
"""

from __future__ import annotations

from functools import partial

from emprocess import storage
from emprocess.registry import facts
from emprocess.align import transforms_url
from emprocess.batch import stage_status
from emprocess.chunkedgraph.contracts import (
    ChunkResult,
    FlattenPayload,
    FlattenResult,
    GraphLayer2Payload,
    GraphLayer2Result,
    GraphLayerPayload,
    GraphLayerResult,
    GraphMetaPayload,
    GraphMetaResult,
)
from emprocess.chunkedgraph.flatten import flatten_chunk
from emprocess.chunkedgraph.layer2 import build_layer2_chunk
from emprocess.chunkedgraph.layers import MAX_LAYERS
from emprocess.chunkedgraph.meta import GraphMeta, chunk_url, read_meta
from emprocess.chunkedgraph.parents import build_parent_chunk
from emprocess.chunkedgraph.prepare import prepare_graph
from emprocess.chunkedgraph.properties import chunk_counts_url
from emprocess.stages import MiniTask, RunContext, Stage


__all__ = ["MAX_LAYERS", "STAGES", "chunk_task", "status"]


def plan_meta(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("chunkedgraph"):
        return []
    segmentation = ctx.conf.segmentation
    payload = {
        "graph": ctx.locations.chunkedgraph,
        "watershed": segmentation.watershed,
        "supervoxels": ctx.locations.supervoxels,
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
        payload.update(watershed=ctx.conf.segmentation.watershed, supervoxels=ctx.locations.supervoxels)
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
            "supervoxels": ctx.locations.supervoxels,
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


def _chunk_written(payload: GraphLayer2Payload | GraphLayerPayload, result: ChunkResult) -> bool:
    return storage.exists(chunk_url(payload.graph, payload.layer, payload.chunk))


def _counts_written(payload: FlattenPayload, result: FlattenResult) -> bool:
    return storage.exists(chunk_counts_url(payload.graph, payload.chunk))


def _layer_stage(layer: int) -> Stage:
    if layer == 2:
        contract = {"work": build_layer2_chunk, "payload": GraphLayer2Payload, "result": GraphLayer2Result}
    else:
        contract = {"work": build_parent_chunk, "payload": GraphLayerPayload, "result": GraphLayerResult}
    return Stage(**facts(f"cg.layer{layer}"), plan=partial(plan_layer, layer), **contract, check=_chunk_written)


STAGES = [
    Stage(**facts("cg.meta"), plan=plan_meta, work=prepare_graph, payload=GraphMetaPayload, result=GraphMetaResult),
    *(_layer_stage(layer) for layer in range(2, MAX_LAYERS + 1)),
    Stage(**facts("cg.flatten"), plan=plan_flatten, work=flatten_chunk, payload=FlattenPayload, result=FlattenResult,
          check=_counts_written),
]


def status(ctx: RunContext) -> dict[str, dict]:
    """``{stage: {"done", "total"}}`` in run order, one entry per layer (``ingest status``)."""
    return stage_status(ctx, STAGES)
