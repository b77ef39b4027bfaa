"""Neuroglancer precomputed segmentation volumes through tensorstore (watershed, supervoxels, roots).

Arrays are indexed (x, y, z) in the graph's frame, i.e. relative to the volume's ``voxel_offset``.
"""

from __future__ import annotations

import numpy as np
import tensorstore as ts

from emprocess import storage

STORAGE_CHUNK = 64  # largest storage chunk side we write; graph chunks are multiples of it or smaller


def info_url(volume: str) -> str:
    return storage.join(volume, "info")


def segmentation_info(scales: list[dict]) -> dict:
    return {
        "@type": "neuroglancer_multiscale_volume",
        "type": "segmentation",
        "data_type": "uint64",
        "num_channels": 1,
        "scales": scales,
    }


def segmentation_scale(size, voxel_offset, resolution, chunk) -> dict:
    """One compressed_segmentation scale; ``key`` follows the usual ``<res x>_<res y>_<res z>``."""
    return {
        "key": "_".join(f"{r:g}" for r in resolution),
        "size": [int(s) for s in size],
        "voxel_offset": [int(o) for o in voxel_offset],
        "resolution": [float(r) for r in resolution],
        "chunk_sizes": [[int(c) for c in chunk]],
        "encoding": "compressed_segmentation",
        "compressed_segmentation_block_size": [8, 8, 8],
    }


def open_scale(volume: str, scale_index: int = 0) -> ts.TensorStore:
    """The scale as a (x, y, z) array translated to origin 0 (channel dropped)."""
    spec = {"driver": "neuroglancer_precomputed", "kvstore": storage.kvstore_spec(volume), "scale_index": scale_index}
    try:
        store = ts.open(spec, context=storage.context()).result()
    except ValueError:
        if not storage.exists(info_url(volume)):
            raise FileNotFoundError(f"{info_url(volume)}: not found") from None
        raise
    return store[..., 0].translate_to[0, 0, 0]


def read(store: ts.TensorStore, lo, hi) -> np.ndarray:
    """Voxels [lo, hi) as uint64, in Fortran order: precomputed chunks are stored x-fastest, and
    cc3d and fastremap run several times faster on x-fastest arrays."""
    return np.asarray(read_later(store, lo, hi).result(), dtype=np.uint64)


def read_later(store: ts.TensorStore, lo, hi) -> ts.Future:
    """Start reading voxels [lo, hi) (Fortran order, the volume's dtype); tensorstore's threads
    decode while the caller works on a previous block."""
    return store[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))].read(order="F")


def write(store: ts.TensorStore, lo, labels: np.ndarray) -> None:
    store[tuple(slice(int(a), int(a) + n) for a, n in zip(lo, labels.shape))].write(labels).result()
