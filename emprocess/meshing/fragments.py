"""Mesh fragments of neuroglancer's multi-resolution format (``neuroglancer_multilod_draco``).

A fragment is one object's mesh inside one octree cell: at level of detail ``lod`` the cells are the
graph's layer-(lod + 2) chunks. Vertices are "stored model" coordinates: nanometres of voxel
centres (voxel ``v`` at ``v · resolution``), which the mesh info's transform moves by half a voxel
onto neuroglancer's voxel corners. In a fragment they are integers in [0, 2^16 − 1] spanning the
cell; Draco stores them losslessly (its quantization over exactly that range is the identity).
"""

from __future__ import annotations

import struct

import DracoPy
import numpy as np

QUANTIZATION_BITS = 16
LEVELS = (1 << QUANTIZATION_BITS) - 1
DRACO_COMPRESSION_LEVEL = 7


def encode(vertices: np.ndarray, faces: np.ndarray, origin: np.ndarray, shape: np.ndarray) -> bytes:
    """Draco bytes of a mesh whose vertices lie in the cell [origin, origin + shape] (outliers are
    clamped onto it); an empty mesh is an empty fragment."""
    if len(faces) == 0:
        return b""
    if not np.isfinite(vertices).all():
        raise ValueError("a mesh fragment has vertices that are not finite")
    quantized = np.clip(np.rint((vertices - origin) / shape * LEVELS), 0, LEVELS)
    return DracoPy.encode(quantized.astype(np.float32), np.asarray(faces, np.uint32),
                          quantization_bits=QUANTIZATION_BITS, quantization_range=LEVELS,
                          quantization_origin=(0.0, 0.0, 0.0), compression_level=DRACO_COMPRESSION_LEVEL)


def decode(data: bytes, origin: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vertices, faces) of a fragment of the cell [origin, origin + shape], with one vertex per
    position: parts that were joined side by side share their seam vertices again, and triangles
    that quantization collapsed are dropped."""
    if not data:
        return np.zeros((0, 3), np.float64), np.zeros((0, 3), np.uint32)
    mesh = DracoPy.decode(data)
    quantized = np.asarray(mesh.points).reshape(-1, 3).astype(np.uint64)
    keys = quantized[:, 0] << np.uint64(2 * QUANTIZATION_BITS) | quantized[:, 1] << np.uint64(QUANTIZATION_BITS) \
        | quantized[:, 2]
    unique, merged = np.unique(keys, return_index=True, return_inverse=True)[1:]
    faces = merged.reshape(-1)[np.asarray(mesh.faces, np.int64).reshape(-1, 3)]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    return origin + quantized[unique].astype(np.float64) / LEVELS * shape, faces.astype(np.uint32)


def _spread(values: np.ndarray) -> np.ndarray:
    """The bits of each value (< 2^21) moved to every third bit."""
    v = values.astype(np.uint64) & np.uint64(0x1FFFFF)
    for shift, mask in ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                        (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)):
        v = (v | v << np.uint64(shift)) & np.uint64(mask)
    return v


def zorder(positions) -> np.ndarray:
    """Indices that sort (N, 3) cell positions in x, y, z Z-curve order (x the fastest bit), as the
    manifest requires."""
    positions = np.asarray(positions, np.uint64).reshape(-1, 3)
    if len(positions) < 2:
        return np.arange(len(positions))
    x, y, z = (_spread(positions[:, axis]) for axis in range(3))
    codes = x | y << np.uint64(1) | z << np.uint64(2)
    return np.argsort(codes, kind="stable")


def manifest(chunk_shape, grid_origin, lod_scales: list[float], positions: list[np.ndarray],
             sizes: list[np.ndarray]) -> bytes:
    """A segment's manifest: per level of detail its fragments' cell positions (in Z-curve order) and
    byte sizes, in the order their bytes follow one another just before the manifest."""
    lods = len(lod_scales)
    parts = [struct.pack("<3f", *chunk_shape), struct.pack("<3f", *grid_origin), struct.pack("<I", lods),
             np.asarray(lod_scales, "<f4").tobytes(), np.zeros((lods, 3), "<f4").tobytes(),
             np.asarray([len(s) for s in sizes], "<u4").tobytes()]
    for lod_positions, lod_sizes in zip(positions, sizes):
        parts.append(np.ascontiguousarray(np.asarray(lod_positions, "<u4").reshape(-1, 3).T).tobytes())
        parts.append(np.asarray(lod_sizes, "<u4").tobytes())
    return b"".join(parts)
