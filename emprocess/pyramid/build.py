"""Building the pyramid: one 1024³ block's scales 0–4, then the scales above from the block seeds.

Memory for a full block stays near 1.5 GB: the block is streamed from the aligned volume in 64-slice
slabs whose chunks are encoded as they arrive, each scale's into a transaction that holds its encoded
shards until it is committed (in the background, while the next scale is encoded). The JPEG volume
(with the OME-Zarr one, when asked for, two slabs in flight) and the raw volume are written one after
the other (the raw pass reads the slabs again), and the coarser
scales (1/7 of the block) are kept in memory between the passes. Every coarser scale is the 2×2×2
mean of the exact scale below it, never of decoded JPEG. An aligned or seed chunk that does not
decode is an InputError naming the volume and slices (see ``emprocess.corrupt``), not retried.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorstore as ts

from emprocess import corrupt
from emprocess.cpus import usable_cpus
from emprocess.pyramid.chunks import ShardWriter
from emprocess.pyramid.downsample import mean2
from emprocess.pyramid.layout import CHUNK, Box, PyramidLayout
from emprocess.pyramid.memory import reuse_memory, reused_buffers
from emprocess.pyramid.ome_zarr import OmeZarrWriter
from emprocess.pyramid.writers import ALIGNED_CHUNKS, SEED_CHUNKS, open_zarr, zyx

SLAB = CHUNK  # scale-0 slices per read; a multiple of 16, so each block scale gets whole slices
Writer = ShardWriter | OmeZarrWriter  # write(scale, origin, data), then commit()


def _slabs(aligned: ts.TensorStore, aligned_url: str, box: Box,
           buffer: Callable[[str, Sequence[int]], np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """(first z, (z, y, x) data) of each slab of ``box``, reading the next slab while the last ones
    are encoded. Tensorstore reads straight into two slab buffers that take turns: fresh arrays, or
    reading the tiles as bytes, cost more than the copy itself. A slab stays valid until the slab
    after the next one is asked for, by when ``ShardWriter.write`` of the next one has encoded it."""
    (x0, y0, z0), (x1, y1, z1) = box
    buffers = [buffer(f"slab {i}", (min(SLAB, z1 - z0), y1 - y0, x1 - x0)) for i in range(2)]

    def read(i: int, z: int) -> tuple[np.ndarray, ts.WriteFutures]:
        slab = buffers[i % 2][:min(SLAB, z1 - z)]
        target = ts.array(slab, copy=False, write=True)
        return slab, target.write(aligned[z:z + len(slab), y0:y1, x0:x1])

    starts = list(range(z0, z1, SLAB))
    pending = read(0, starts[0])
    for i, z in enumerate(starts):
        slab, reading = pending
        with corrupt.reading(f"aligned volume {aligned_url}, z index {z}..{z + len(slab) - 1}"):
            reading.result()
        yield z, slab
        if i + 1 < len(starts):
            pending = read(i + 1, starts[i + 1])


def _write_volume(writers: list[Writer], boxes: dict[int, Box], slabs: Iterator[tuple[int, np.ndarray]],
                  coarse: dict[int, np.ndarray]) -> None:
    """Scale 0 from ``slabs``, then the scales in ``coarse``, to each of ``writers``; each scale's part
    of the block is whole shards, so nothing is read back. The last writes end with ``commit()``."""
    x0, y0, _ = boxes[0][0]
    for z, data in slabs:
        for writer in writers:
            writer.write(0, (x0, y0, z), data)
    for scale, data in coarse.items():
        for writer in writers:
            writer.write(scale, boxes[scale][0], data)


def build_block(aligned_url: str, jpeg_url: str, raw_url: str | None, seed_url: str | None, layout: PyramidLayout,
                block: tuple[int, int, int], jpeg_quality: int, ome_zarr_url: str | None = None) -> None:
    """Write every block scale of ``block`` to the JPEG (and raw, and OME-Zarr) volume, and its seed
    when needed.

    Order: JPEG and OME-Zarr (all scales, computing the coarse ones on the way), the seed, then raw
    (reading the slabs again). Each scale's shards are written in the background while the next is
    encoded."""
    reuse_memory()
    boxes = {s: layout.block_box(block, s) for s in layout.block_scales}
    aligned = open_zarr(aligned_url, zyx(layout.size), ALIGNED_CHUNKS, create=False)
    block_z0 = boxes[0][0][2]
    with reused_buffers() as buffer, ThreadPoolExecutor(usable_cpus()) as pool:
        coarse = {s: buffer(f"scale {s}", [e - b for b, e in zip(*boxes[s])][::-1]) for s in boxes if s > 0}

        def first_pass() -> Iterator[tuple[int, np.ndarray]]:
            for z, data in _slabs(aligned, aligned_url, boxes[0], buffer):
                yield z, data
                level = data
                for scale, target in coarse.items():
                    level = mean2(level)
                    start = (z - block_z0) >> scale
                    target[start:start + level.shape[0]] = level

        writers: list[Writer] = [ShardWriter(jpeg_url, layout, "jpeg", jpeg_quality, pool)]
        if ome_zarr_url is not None:
            writers.append(OmeZarrWriter(ome_zarr_url, layout))
        _write_volume(writers, boxes, first_pass(), coarse)
        if seed_url is not None:
            last = max(boxes)
            seed = open_zarr(seed_url, zyx(layout.scale_size(last)), SEED_CHUNKS, create=True)
            (x0, y0, z0), (x1, y1, z1) = boxes[last]
            seed[z0:z1, y0:y1, x0:x1].write(coarse[last]).result()
        if raw_url is not None:
            writers.append(ShardWriter(raw_url, layout, "raw", None, pool))
            _write_volume(writers[-1:], boxes, _slabs(aligned, aligned_url, boxes[0], buffer), coarse)
        for writer in writers:
            writer.commit()


def build_top(seed_url: str, jpeg_url: str, raw_url: str | None, layout: PyramidLayout, jpeg_quality: int,
              ome_zarr_url: str | None = None) -> None:
    """Write the top scales (one shard file each, per volume) by downsampling the seed, the exact last
    block scale, which holds 1/4096 of the volume."""
    last = layout.block_scales[-1]
    reading = open_zarr(seed_url, zyx(layout.scale_size(last)), SEED_CHUNKS, create=False).read()
    with corrupt.reading(f"pyramid seed {seed_url}"):
        level = reading.result()
    levels = {}
    for scale in layout.top_scales:
        level = levels[scale] = mean2(level)
    with ThreadPoolExecutor(usable_cpus()) as pool:
        writers: list[Writer] = [ShardWriter(url, layout, encoding, jpeg_quality if encoding == "jpeg" else None, pool)
                                 for url, encoding in ((jpeg_url, "jpeg"), (raw_url, "raw")) if url is not None]
        if ome_zarr_url is not None:
            writers.append(OmeZarrWriter(ome_zarr_url, layout))
        for writer in writers:
            for scale, data in levels.items():
                writer.write(scale, (0, 0, 0), data)
            writer.commit()
