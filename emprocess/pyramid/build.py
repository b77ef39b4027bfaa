"""Building the pyramid: one 1024³ block's scales 0–4, then the scales above from the block seeds.

Memory for a full block stays near 2 GB: the block is streamed from the aligned volume in 64-slice
slabs into a tensorstore transaction that holds one volume's scale-0 shard (1 GiB uncompressed, plus
its encoded chunks) until it is committed, so the JPEG and raw volumes are written one after the
other (the raw pass reads the slabs again) and the coarser scales (1/7 of the block) are kept in
memory between the passes. Every coarser scale is the 2×2×2 mean of the exact scale below it, never
of decoded JPEG.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Iterator

import numpy as np
import tensorstore as ts

from emprocess.pyramid.downsample import mean2
from emprocess.pyramid.layout import CHUNK, Box, PyramidLayout
from emprocess.pyramid.writers import ALIGNED_CHUNKS, SEED_CHUNKS, open_scale, open_zarr, zyx

SLAB = CHUNK  # scale-0 slices per read; a multiple of 16, so each block scale gets whole slices
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


def release_memory() -> None:
    """Return freed heap pages to the OS. glibc keeps a committed transaction's chunk buffers in its
    per-thread arenas, where the next pass does not reuse them: without this the raw pass stacks on
    the JPEG pass (a full block peaked at 2.9 GB instead of 2.3 GB)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _region(box: Box) -> tuple[slice, slice, slice]:
    """``box`` (x, y, z) as (x, y, z) index slices."""
    (x0, y0, z0), (x1, y1, z1) = box
    return slice(x0, x1), slice(y0, y1), slice(z0, z1)


def _slabs(aligned: ts.TensorStore, box: Box) -> Iterator[tuple[int, np.ndarray]]:
    """(first z, (z, y, x) data) of each slab of ``box``, reading the next slab while one is used."""
    (x0, y0, z0), (x1, y1, z1) = box
    starts = list(range(z0, z1, SLAB))
    read = lambda z: aligned[z:min(z + SLAB, z1), y0:y1, x0:x1].read()  # noqa: E731
    pending = read(starts[0])
    for i, z in enumerate(starts):
        data = pending.result()
        if i + 1 < len(starts):
            pending = read(starts[i + 1])
        yield z, data


def _write_shards(url: str, encoding: str, jpeg_quality: int | None, layout: PyramidLayout, boxes: dict[int, Box],
                  slabs: Iterator[tuple[int, np.ndarray]] | None, coarse: dict[int, np.ndarray]) -> None:
    """One transaction: scale 0 from ``slabs`` (if given) and the scales in ``coarse``; each scale's
    part of the block is one whole shard, so nothing is read back."""
    txn = ts.Transaction()
    scales = ([0] if slabs is not None else []) + list(coarse)
    views = {s: open_scale(url, layout, s, encoding, jpeg_quality, txn) for s in scales}
    x, y, _ = _region(boxes[0])
    for z, data in slabs or ():
        views[0][x, y, z:z + data.shape[0]].write(data.transpose(2, 1, 0)).result()
    for scale, data in coarse.items():
        views[scale][_region(boxes[scale])].write(data.transpose(2, 1, 0)).result()
    txn.commit_async().result()
    del txn, views
    release_memory()


def build_block(aligned_url: str, jpeg_url: str, raw_url: str | None, seed_url: str | None, layout: PyramidLayout,
                block: tuple[int, int, int], jpeg_quality: int) -> None:
    """Write every block scale of ``block`` to the JPEG (and raw) volume, and its seed when needed.

    Order: JPEG (all scales, computing the coarse ones on the way), the seed, raw coarse scales,
    then raw scale 0 alone, so the largest transaction never shares memory with the coarse scales."""
    boxes = {s: layout.block_box(block, s) for s in layout.block_scales}
    aligned = open_zarr(aligned_url, zyx(layout.size), ALIGNED_CHUNKS, create=False)
    coarse = {s: np.empty([e - b for b, e in zip(*boxes[s])][::-1], np.uint8) for s in boxes if s > 0}
    block_z0 = boxes[0][0][2]

    def first_pass() -> Iterator[tuple[int, np.ndarray]]:
        for z, data in _slabs(aligned, boxes[0]):
            yield z, data
            level = data
            for scale, target in coarse.items():
                level = mean2(level)
                start = (z - block_z0) >> scale
                target[start:start + level.shape[0]] = level

    _write_shards(jpeg_url, "jpeg", jpeg_quality, layout, boxes, first_pass(), coarse)
    if seed_url is not None:
        last = max(boxes)
        seed = open_zarr(seed_url, zyx(layout.scale_size(last)), SEED_CHUNKS, create=True)
        (x0, y0, z0), (x1, y1, z1) = boxes[last]
        seed[z0:z1, y0:y1, x0:x1].write(coarse[last]).result()
    if raw_url is not None:
        _write_shards(raw_url, "raw", None, layout, boxes, None, coarse)
        coarse.clear()
        _write_shards(raw_url, "raw", None, layout, boxes, _slabs(aligned, boxes[0]), {})


def build_top(seed_url: str, jpeg_url: str, raw_url: str | None, layout: PyramidLayout, jpeg_quality: int) -> None:
    """Write the top scales (one shard file each) by downsampling the seed, the exact last block scale,
    which holds 1/4096 of the volume."""
    last = layout.block_scales[-1]
    level = open_zarr(seed_url, zyx(layout.scale_size(last)), SEED_CHUNKS, create=False).read().result()
    for scale in layout.top_scales:
        level = mean2(level)
        for url, encoding in ((jpeg_url, "jpeg"), (raw_url, "raw")):
            if url is None:
                continue
            txn = ts.Transaction()
            view = open_scale(url, layout, scale, encoding, jpeg_quality if encoding == "jpeg" else None, txn)
            view.write(level.transpose(2, 1, 0)).result()
            txn.commit_async().result()
