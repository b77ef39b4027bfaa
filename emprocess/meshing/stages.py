"""The MESHING stages: mesh.meta → mesh.layer2 … mesh.layer{MAX_LAYERS}, after the ChunkedGraph.

Like the graph's, a layer stage exists for every possible layer so that the DAG's shape never
depends on the data; layers above the graph's root layer plan nothing. All run on the emwrite
service. Plans read the graph meta that cg.meta wrote.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

from pydantic import Field

from emprocess import storage
from emprocess.chunkedgraph.layers import MAX_LAYERS
from emprocess.chunkedgraph.meta import chunk_url, read_meta
from emprocess.chunkedgraph.volumes import info_url
from emprocess.meshing.layout import MESH_DIRECTORY, MeshLayout, mesh_url
from emprocess.meshing.levels import mesh_chunk
from emprocess.payloads import Coords, Location, Payload, takes
from emprocess.stages import MiniTask, RunContext, Stage

SERVICE = "emwrite"


class MeshMetaPayload(Payload):
    """The mesh ``info`` of the root-ID layer at ``segmentation``, for the graph at ``graph``."""

    graph: Location
    segmentation: Location


class MeshLayerPayload(Payload):
    """The meshes of one chunk of one layer; fragments of unfinished bodies go to ``pending``."""

    graph: Location
    segmentation: Location
    mesh: Location
    pending: Location
    layer: Annotated[int, Field(ge=2, le=MAX_LAYERS)]
    chunk: Coords
    simplification_factor: Annotated[float, Field(gt=1, le=1e6)]


def _pending(ctx: RunContext) -> str:
    return storage.join(ctx.locations.tmp, "mesh")


def plan_meta(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("meshing"):
        return []
    return [{"key": "meta", "payload": {"graph": ctx.locations.chunkedgraph,
                                        "segmentation": ctx.locations.segmentation}}]


@takes(MeshMetaPayload)
def write_mesh_info(payload: dict) -> dict:
    """mesh.meta work: the mesh ``info``, and the segmentation's ``info`` pointing at it."""
    layout = MeshLayout.of(read_meta(payload["graph"]))
    mesh = mesh_url(payload["segmentation"])
    storage.write_json(storage.join(mesh, "info"), layout.info())
    segmentation_info = storage.read_json(info_url(payload["segmentation"]))
    if segmentation_info.get("mesh") != MESH_DIRECTORY:
        storage.write_json(info_url(payload["segmentation"]), {**segmentation_info, "mesh": MESH_DIRECTORY})
    return {"mesh": mesh}


def plan_layer(layer: int, ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("meshing"):
        return []
    meta = read_meta(ctx.locations.chunkedgraph)
    if layer > meta.n_layers:
        return []
    tasks = []
    for x, y, z in meta.chunks(layer):
        payload = {"graph": ctx.locations.chunkedgraph, "segmentation": ctx.locations.segmentation,
                   "mesh": mesh_url(ctx.locations.segmentation), "pending": _pending(ctx), "layer": layer,
                   "chunk": [x, y, z], "simplification_factor": ctx.conf.segmentation.mesh.simplification_factor}
        tasks.append({"key": f"{layer}_{x}_{y}_{z}", "payload": payload})
    return tasks


def _pending_written(payload: dict, result: dict) -> bool:
    return storage.exists(chunk_url(payload["pending"], payload["layer"], payload["chunk"]))


MESH_WORK = takes(MeshLayerPayload)(mesh_chunk)
STAGES = [
    Stage("mesh.meta", SERVICE, "/mesh/meta", plan_meta, write_mesh_info),
    *(Stage(f"mesh.layer{layer}", SERVICE, "/mesh/layer", partial(plan_layer, layer), MESH_WORK, _pending_written)
      for layer in range(2, MAX_LAYERS + 1)),
]
