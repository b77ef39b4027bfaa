"""The SKELETONS stages: skel.meta → skel.chunks → skel.merge, after the ChunkedGraph.

skel.meta sizes the sharding for the graph's bodies; skel.chunks has one mini-task per layer-2 chunk
of the graph (its memory bounded by the chunk); skel.merge one per shard of the output (so each
shard file is written by one job). All run on the emwrite service. Plans read the graph meta that
cg.meta wrote, and the skeleton info (its sharding) that skel.meta wrote.
"""

from __future__ import annotations

from emprocess import storage
from emprocess.chunkedgraph.meta import read_meta
from emprocess.chunkedgraph.properties import count_bodies
from emprocess.chunkedgraph.volumes import name_in_info
from emprocess.registry import facts
from emprocess.run_layout import SKELETON_FOLDER
from emprocess.sharding import ShardingSpec
from emprocess.skeletons.contracts import (
    SkeletonChunkPayload,
    SkeletonChunkResult,
    SkeletonMergePayload,
    SkeletonMergeResult,
    SkeletonMetaPayload,
    SkeletonMetaResult,
)
from emprocess.skeletons.layout import info, info_url, read_sharding
from emprocess.skeletons.merge import merge_shard
from emprocess.skeletons.pieces import skeletonize_chunk
from emprocess.stages import MiniTask, RunContext, Stage


def plan_meta(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("skeletons"):
        return []
    return [{"key": "meta", "payload": {"graph": ctx.locations.chunkedgraph,
                                        "segmentation": ctx.locations.segmentation}}]


def write_skeleton_info(payload: SkeletonMetaPayload) -> SkeletonMetaResult:
    """skel.meta work: the skeleton ``info`` with its sharding, sized for the graph's bodies, and the
    segmentation's ``info`` pointing at it."""
    bodies = count_bodies(payload.graph, read_meta(payload.graph))
    sharding = ShardingSpec.for_keys(bodies)
    skeletons = storage.join(payload.segmentation, SKELETON_FOLDER)
    storage.write_json(info_url(skeletons), info(sharding))
    name_in_info(payload.segmentation, "skeletons", SKELETON_FOLDER)
    return SkeletonMetaResult(skeletons=skeletons, bodies=bodies, shards=sharding.shards)


def plan_chunks(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("skeletons"):
        return []
    tasks = []
    for x, y, z in read_meta(ctx.locations.chunkedgraph).chunks(2):
        payload = {"graph": ctx.locations.chunkedgraph, "segmentation": ctx.locations.segmentation,
                   "skeletons": ctx.locations.skeletons, "pending": ctx.locations.pending_skeletons,
                   "chunk": [x, y, z]}
        tasks.append({"key": f"{x}_{y}_{z}", "payload": payload})
    return tasks


def plan_merge(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("skeletons"):
        return []
    payload = {"pending": ctx.locations.pending_skeletons, "skeletons": ctx.locations.skeletons}
    return [{"key": str(shard), "payload": {**payload, "shard": shard}}
            for shard in range(read_sharding(ctx.locations.skeletons).shards)]


def _shard_written(payload: SkeletonMergePayload, result: SkeletonMergeResult) -> bool:
    return result.written is None or storage.exists(result.written)


STAGES = [
    Stage(**facts("skel.meta"), plan=plan_meta, work=write_skeleton_info, payload=SkeletonMetaPayload,
          result=SkeletonMetaResult),
    Stage(**facts("skel.chunks"), plan=plan_chunks, work=skeletonize_chunk, payload=SkeletonChunkPayload,
          result=SkeletonChunkResult),
    Stage(**facts("skel.merge"), plan=plan_merge, work=merge_shard, payload=SkeletonMergePayload,
          result=SkeletonMergeResult, check=_shard_written),
]
