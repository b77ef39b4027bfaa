"""The MESHING stages: mesh.meta → mesh.layer2 … mesh.layer{MAX_LAYERS} → mesh.shards, after the
ChunkedGraph.

Like the graph's, a layer stage exists for every possible layer so that the DAG's shape never
depends on the data; layers above the graph's root layer plan nothing. mesh.shards has one
mini-task per shard file (see ``shards``), ungrouped: a shard holds up to 2,048 bodies, so there are
fewer shards than layer-2 chunks wherever a chunk meets fewer bodies than that, as it typically
does. All run on the emwrite service. Plans read the graph meta that cg.meta wrote, and the mesh
info (its sharding) that mesh.meta wrote.
"""

from __future__ import annotations

from functools import partial

from emprocess import storage
from emprocess.registry import facts
from emprocess.chunkedgraph.layers import MAX_LAYERS
from emprocess.chunkedgraph.meta import chunk_url, read_meta
from emprocess.chunkedgraph.properties import count_bodies
from emprocess.chunkedgraph.volumes import name_in_info
from emprocess.meshing.contracts import (
    MeshLayerPayload,
    MeshLayerResult,
    MeshMetaPayload,
    MeshMetaResult,
    MeshShardPayload,
    MeshShardResult,
)
from emprocess.meshing.layout import MeshLayout, mesh_info_url, mesh_url, read_sharding
from emprocess.meshing.levels import mesh_chunk
from emprocess.meshing.shards import write_shard
from emprocess.run_layout import MESH_FOLDER
from emprocess.sharding import ShardingSpec
from emprocess.stages import MiniTask, RunContext, Stage


def plan_meta(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("meshing"):
        return []
    return [{"key": "meta", "payload": {"graph": ctx.locations.chunkedgraph,
                                        "segmentation": ctx.locations.segmentation}}]


def write_mesh_info(payload: MeshMetaPayload) -> MeshMetaResult:
    """mesh.meta work: the mesh ``info`` with its sharding, sized for the graph's bodies, and the
    segmentation's ``info`` pointing at it."""
    meta = read_meta(payload.graph)
    bodies = count_bodies(payload.graph, meta)
    sharding = ShardingSpec.for_keys(bodies)
    mesh = mesh_url(payload.segmentation)
    storage.write_json(mesh_info_url(mesh), MeshLayout.of(meta).info(sharding))
    name_in_info(payload.segmentation, "mesh", MESH_FOLDER)
    return MeshMetaResult(mesh=mesh, bodies=bodies, shards=sharding.shards)


def plan_layer(layer: int, ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("meshing"):
        return []
    meta = read_meta(ctx.locations.chunkedgraph)
    if layer > meta.n_layers:
        return []
    tasks = []
    for x, y, z in meta.chunks(layer):
        payload = {"graph": ctx.locations.chunkedgraph, "segmentation": ctx.locations.segmentation,
                   "mesh": ctx.locations.meshes, "pending": ctx.locations.pending_meshes, "layer": layer,
                   "chunk": [x, y, z], "simplification_factor": ctx.conf.segmentation.mesh.simplification_factor}
        tasks.append({"key": f"{layer}_{x}_{y}_{z}", "payload": payload})
    return tasks


def plan_shards(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("meshing"):
        return []
    payload = {"mesh": ctx.locations.meshes, "pending": ctx.locations.pending_meshes}
    return [{"key": f"shard_{shard}", "payload": {**payload, "shard": shard}}
            for shard in range(read_sharding(ctx.locations.meshes).shards)]


def _pending_written(payload: MeshLayerPayload, result: MeshLayerResult) -> bool:
    return storage.exists(chunk_url(payload.pending, payload.layer, payload.chunk))


def _shard_written(payload: MeshShardPayload, result: MeshShardResult) -> bool:
    return storage.exists(result.written)


STAGES = [
    Stage(**facts("mesh.meta"), plan=plan_meta, work=write_mesh_info, payload=MeshMetaPayload, result=MeshMetaResult),
    *(Stage(**facts(f"mesh.layer{layer}"), plan=partial(plan_layer, layer), work=mesh_chunk, payload=MeshLayerPayload,
            result=MeshLayerResult, check=_pending_written) for layer in range(2, MAX_LAYERS + 1)),
    Stage(**facts("mesh.shards"), plan=plan_shards, work=write_shard, payload=MeshShardPayload, result=MeshShardResult,
          check=_shard_written),
]
