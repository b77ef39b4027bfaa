"""Where meshes go and how their octree lies over the graph's chunks.

Level of detail ``lod`` has one octree cell per graph chunk of layer ``lod + 2`` (fanout 2, so each
cell splits into the 2×2×2 cells below it). The roots' meshes are written in shard files under
``<segmentation>/mesh/`` (see ``shards``), beside the mesh ``info`` that holds their sharding; the
per-chunk pending files of the jobs go to the run's tmp location, named as the graph names its chunk
files (``meta.chunk_url``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emprocess import storage
from emprocess.chunkedgraph.meta import GraphMeta
from emprocess.meshing.fragments import QUANTIZATION_BITS
from emprocess.sharding import ShardingSpec
from emprocess.run_layout import MESH_FOLDER


@dataclass(frozen=True)
class MeshLayout:
    chunk_shape: tuple[float, float, float]  # a layer-2 chunk, nm
    grid_origin: tuple[float, float, float]  # the centre of the volume's first voxel, nm
    resolution: tuple[float, float, float]

    @classmethod
    def of(cls, meta: GraphMeta) -> "MeshLayout":
        resolution = tuple(float(r) for r in meta.resolution)
        return cls(tuple(float(c) * r for c, r in zip(meta.chunk_size, resolution)),
                   tuple(float(o) * r for o, r in zip(meta.voxel_offset, resolution)), resolution)

    def cell(self, lod: int, position) -> tuple[np.ndarray, np.ndarray]:
        """(origin, shape) of the octree cell ``position`` at ``lod``, in stored model coordinates."""
        shape = np.asarray(self.chunk_shape) * (1 << lod)
        return np.asarray(self.grid_origin) + np.asarray(position, np.float64) * shape, shape

    def lod_scales(self, lods: int) -> list[float]:
        """The detail of each level: the finest voxel size, doubling per level."""
        return [min(self.resolution) * (1 << lod) for lod in range(lods)]

    def info(self, sharding: ShardingSpec) -> dict:
        """The mesh ``info``: its transform moves voxel centres (stored model) onto neuroglancer's
        voxel corners (model), half a voxel."""
        rx, ry, rz = (r / 2 for r in self.resolution)
        return {"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": QUANTIZATION_BITS,
                "transform": [1, 0, 0, rx, 0, 1, 0, ry, 0, 0, 1, rz], "lod_scale_multiplier": 1.0,
                "sharding": sharding.to_json()}


def mesh_url(segmentation: str) -> str:
    return storage.join(segmentation, MESH_FOLDER)


def mesh_info_url(mesh: str) -> str:
    return storage.join(mesh, "info")


def read_sharding(mesh: str) -> ShardingSpec:
    """The sharding mesh.meta chose, from the mesh ``info`` (what readers use too)."""
    return ShardingSpec.read(mesh_info_url(mesh))


def shard_url(mesh: str, spec: ShardingSpec, shard: int) -> str:
    return storage.join(mesh, spec.shard_name(shard))
