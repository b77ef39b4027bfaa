"""The aligned volume as OME-Zarr 0.5, written by the pyramid's own tasks beside the precomputed volumes.

``<url>/zarr.json`` is the group, with the ``ome`` multiscales; ``<url>/<s>/`` is scale ``s`` of the
pyramid (the same voxels as the raw volume's), a zarr v3 (z, y, x) uint8 array of 64³ chunks
(zstd) in ``sharding_indexed`` shards. A shard is one 64-slice slab of a 1024³ block's footprint at
that scale: (64, 1024 >> s, 1024 >> s), clipped to the scale's size rounded up to 64; a top scale is
one shard. Footprints start at multiples of their side, so each shard lies in one block's footprint
and only that block's task writes it; each slab the task reads at scale 0 is exactly one shard.

Level ``s`` maps voxel index i to ((voxel_offset + i·2^s + 2^s/2) · resolution) nm per axis: the
centre of the precomputed voxel (i · 2^s) at that scale, whose corner is (voxel_offset + i·2^s) ·
resolution. OME-Zarr tools (neuroglancer among them) read a voxel's coordinates as its centre, so
the levels overlay each other, and the precomputed volume, exactly.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import tensorstore as ts

from emprocess import corrupt, storage
from emprocess.pyramid.layout import BLOCK, CHUNK, PyramidLayout
from emprocess.pyramid.writers import open_store, zarr_chunk_key, zyx

VERSION = "0.5"
METADATA_FILE = "zarr.json"
ZSTD_LEVEL = 1  # noisy EM keeps most of its bytes at any level (see writers.TMP_CODECS); level 1 is the fastest
AXES = ("z", "y", "x")


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def shard_shape(layout: PyramidLayout, scale: int) -> tuple[int, int, int]:
    """(z, y, x) voxels of one shard of ``scale``: a slab of a block's footprint, or all of a top scale."""
    whole = tuple(_round_up(n, CHUNK) for n in zyx(layout.scale_size(scale)))
    if scale in layout.top_scales:
        return whole
    side = BLOCK >> scale
    return tuple(min(n, w) for n, w in zip((CHUNK, side, side), whole))


def array_metadata(layout: PyramidLayout, scale: int) -> dict:
    """Scale ``scale``'s ``zarr.json``."""
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(zyx(layout.scale_size(scale))),
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shard_shape(layout, scale))}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [CHUNK] * 3,
            "codecs": [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}}],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "end",
        }}],
        "dimension_names": list(AXES),
    }


def level_transforms(layout: PyramidLayout, scale: int) -> list[dict]:
    """Scale ``scale``'s voxel → nm transform (z, y, x), voxel centres: see the module's docstring."""
    resolution, offset = zyx(layout.resolution), zyx(layout.voxel_offset)
    factor = 1 << scale
    return [{"type": "scale", "scale": [r * factor for r in resolution]},
            {"type": "translation", "translation": [(o + factor / 2) * r for o, r in zip(offset, resolution)]}]


def group_metadata(layout: PyramidLayout) -> dict:
    """The group's ``zarr.json``: one multiscale image, every scale of the pyramid."""
    return {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": VERSION, "multiscales": [{
        "axes": [{"name": axis, "type": "space", "unit": "nanometer"} for axis in AXES],
        "datasets": [{"path": str(s), "coordinateTransformations": level_transforms(layout, s)}
                     for s in range(layout.num_scales)],
        "type": "mean",
    }]}}}


def metadata_paths(layout: PyramidLayout) -> list[str]:
    """The group's and every scale's ``zarr.json``, relative to the volume's root."""
    return [METADATA_FILE] + [f"{s}/{METADATA_FILE}" for s in range(layout.num_scales)]


def write_metadata(url: str, layout: PyramidLayout) -> list[str]:
    """Write every ``zarr.json`` whole (the same bytes on every run), before any block opens a scale."""
    documents = [group_metadata(layout)] + [array_metadata(layout, s) for s in range(layout.num_scales)]
    written = []
    for path, document in zip(metadata_paths(layout), documents):
        written.append(storage.join(url, path))
        storage.write_json(written[-1], document)
    return written


def _shard_paths(layout: PyramidLayout, scale: int, start: tuple[int, ...], stop: tuple[int, ...]) -> list[str]:
    """The shard files of ``scale`` that (z, y, x) voxels ``start``..``stop`` touch."""
    ranges = [range(a // n, -(-b // n)) for a, b, n in zip(start, stop, shard_shape(layout, scale))]
    return [f"{scale}/{zarr_chunk_key(index)}" for index in product(*ranges)]


def block_shard_paths(layout: PyramidLayout, block: tuple[int, int, int]) -> list[str]:
    """The shard files block ``block``'s task writes, every block scale."""
    paths = []
    for scale in layout.block_scales:
        start, stop = layout.block_box(block, scale)
        paths += _shard_paths(layout, scale, zyx(start), zyx(stop))
    return paths


def top_shard_paths(layout: PyramidLayout) -> list[str]:
    return [path for s in layout.top_scales for path in _shard_paths(layout, s, (0, 0, 0), zyx(layout.scale_size(s)))]


def open_level(url: str, layout: PyramidLayout, scale: int) -> ts.TensorStore:
    """Scale ``scale`` at ``url``, written by ``write_metadata``; metadata from another layout is refused."""
    scale_url = storage.join(url, str(scale))
    spec = {"driver": "zarr3", "kvstore": storage.kvstore_spec(scale_url), "metadata": array_metadata(layout, scale),
            "store_data_equal_to_fill_value": True}
    return open_store(spec, scale_url, open=True)


class OmeZarrWriter:
    """Writes scales of the OME-Zarr volume at ``url``, with ``ShardWriter``'s calls.

    Each slab of shards (64 slices; a top scale's one shard) is its own transaction, so each shard is
    encoded and written once, whole, in the background. Once a slab is staged, the one before it
    must be stored, so at most two slabs are held at once. ``write`` returns once ``data`` is
    copied; ``commit`` waits for every shard to be written."""

    def __init__(self, url: str, layout: PyramidLayout):
        self._url, self._layout = url, layout
        self._levels: dict[int, ts.TensorStore] = {}
        self._commits: list[tuple[int, ts.Future]] = []  # (scale, its shard files being written)

    def write(self, scale: int, origin: tuple[int, int, int], data: np.ndarray) -> None:
        """Write ``data``, (z, y, x) voxels of ``scale`` from ``origin`` (x, y, z)."""
        if scale not in self._levels:
            self._levels[scale] = open_level(self._url, self._layout, scale)
        x0, y0, z0 = origin
        _, height, width = data.shape
        step = shard_shape(self._layout, scale)[0]  # origins are on the shard grid: blocks start on it
        for start in range(0, len(data), step):
            slab = data[start:start + step]
            transaction = ts.Transaction()
            target = self._levels[scale].with_transaction(transaction)
            target[z0 + start:z0 + start + len(slab), y0:y0 + height, x0:x0 + width].write(slab).result()
            self._commits.append((scale, transaction.commit_async()))
            self._wait(keep=1)

    def _wait(self, keep: int) -> None:
        while len(self._commits) > keep:
            scale, done = self._commits.pop(0)
            # a partly covered shard that exists is read to be merged: one that does not decode fails every re-run
            existing = f"OME-Zarr {self._url} scale {scale}, an existing shard file (delete it to rewrite it)"
            with corrupt.reading(existing):
                done.result()

    def commit(self) -> None:
        """Wait until every write's shard files are written."""
        self._wait(keep=0)
