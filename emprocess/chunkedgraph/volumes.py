"""Neuroglancer precomputed segmentation volumes through tensorstore (watershed, supervoxels, roots).

Arrays are indexed (x, y, z) in the graph's frame, i.e. relative to the volume's ``voxel_offset``.
An undecodable ``info`` or chunk (the user's watershed cut short, say) is an InputError naming the
volume and the voxels read; a failed transfer stays retryable (see ``emprocess.corrupt``).
"""

from __future__ import annotations

import numpy as np
import tensorstore as ts

from emprocess import corrupt, storage

STORAGE_CHUNK = 64  # largest storage chunk side we write; graph chunks are multiples of it or smaller


def info_url(volume: str) -> str:
    return storage.join(volume, "info")


def name_in_info(volume: str, key: str, folder: str) -> None:
    """Point ``volume``'s ``info`` at ``folder`` under ``key`` (its meshes, skeletons, segment
    properties), keeping its other keys; written only when it changes."""
    info = storage.read_json(info_url(volume))
    if info.get(key) != folder:
        storage.write_json(info_url(volume), {**info, key: folder})


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


def open_scale(volume: str, scale_index: int = 0, fill_missing: bool = True) -> ts.TensorStore:
    """The scale as a (x, y, z) array translated to origin 0 (channel dropped). A missing chunk
    reads as 0, or, without ``fill_missing``, fails with NOT_FOUND (to tell it from a present one)."""
    _check_scale_keys(volume)
    spec = {"driver": "neuroglancer_precomputed", "kvstore": storage.kvstore_spec(volume), "scale_index": scale_index,
            "fill_missing_data_reads": fill_missing}
    try:
        store = ts.open(spec, context=storage.context()).result()
    except ValueError as err:
        if not storage.exists(info_url(volume)):
            raise FileNotFoundError(f"{info_url(volume)}: not found") from None
        corrupt.raise_for(err, f"volume {volume}")
    return store[..., 0].translate_to[0, 0, 0]


def _check_scale_keys(volume: str) -> None:
    """Refuse an ``info`` whose scale keys lead elsewhere: tensorstore follows a key's '..' out of the
    volume, so a user's watershed could otherwise make a job read (or write) outside its location
    and, in a service, outside its allowed prefixes."""
    data = storage.read_if_exists(info_url(volume))
    info = None if data is None else corrupt.parse_json(data, f"volume {volume}: its {info_url(volume)}")
    for scale in info.get("scales", []) if isinstance(info, dict) else []:
        if isinstance(scale, dict) and isinstance(scale.get("key"), str):
            storage.allowed(storage.join(volume, scale["key"]))


def read(store: ts.TensorStore, lo, hi) -> np.ndarray:
    """Voxels [lo, hi) as uint64, in Fortran order: precomputed chunks are stored x-fastest, and
    cc3d and fastremap run several times faster on x-fastest arrays."""
    return np.asarray(read_later(store, lo, hi).result(), dtype=np.uint64)


def read_later(store: ts.TensorStore, lo, hi) -> "PendingRead":
    """Start reading voxels [lo, hi) (Fortran order, the volume's dtype); tensorstore's threads
    decode while the caller works on a previous block."""
    box = [slice(int(a), int(b)) for a, b in zip(lo, hi)]
    return PendingRead(store[tuple(box)].read(order="F"), store, box)


class PendingRead:
    """A read started by ``read_later``; ``result()`` waits for it, and raises InputError naming the
    volume and voxels when a chunk of them cannot be decoded (tensorstore's message names the chunk)."""

    def __init__(self, future: ts.Future, store: ts.TensorStore, box: list[slice]) -> None:
        self._future, self._store, self._box = future, store, box

    def result(self) -> np.ndarray:
        try:
            return self._future.result()
        except ValueError as err:
            lo, hi = [b.start for b in self._box], [b.stop for b in self._box]
            corrupt.raise_for(err, f"volume {_url(self._store)}, voxels {lo} to {hi}")


def _url(store: ts.TensorStore) -> str:
    """The URL of the volume ``store`` was opened from (its base kvstore)."""
    try:
        return store.kvstore.url.rstrip("/")
    except (AttributeError, ValueError):  # a kvstore without a URL form
        return str(store.kvstore.path)


def write(store: ts.TensorStore, lo, labels: np.ndarray) -> None:
    store[tuple(slice(int(a), int(a) + n) for a, n in zip(lo, labels.shape))].write(labels).result()
