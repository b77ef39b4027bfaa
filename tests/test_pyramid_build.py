"""One block's pyramid (``pyramid.build.build_block``) on a block several slabs deep.

The block work overlaps reading the next slab with encoding the last ones, and reuses two slab
buffers; the encoders are slowed down here so that any slab read into a buffer whose chunks are
still being encoded would show in the output.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from support.volumes import psnr, smooth

from emprocess.pyramid import chunks
from emprocess.pyramid.build import SLAB, build_block
from emprocess.pyramid.downsample import mean2
from emprocess.pyramid.layout import PyramidLayout
from emprocess.pyramid.meta import write_info
from emprocess.pyramid.writers import ALIGNED_CHUNKS, open_scale, open_zarr

QUALITY = 90
LAYOUT = PyramidLayout((200, 130, 3 * SLAB + 8), (0, 0, 0), (8, 8, 8))


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """The block's aligned slices (z, y, x) and the URLs of its JPEG and raw volumes."""
    root = tmp_path_factory.mktemp("block")
    slices = smooth(tuple(reversed(LAYOUT.size)), seed=4)
    aligned = f"file://{root}/aligned"
    open_zarr(aligned, slices.shape, ALIGNED_CHUNKS, create=True).write(slices).result()
    jpeg, raw = f"file://{root}/jpeg", f"file://{root}/raw"
    write_info(jpeg, LAYOUT, "jpeg", QUALITY)
    write_info(raw, LAYOUT, "raw", None)

    mp = pytest.MonkeyPatch()
    for name in ("encode_jpeg", "encode_raw"):
        encode = getattr(chunks, name)
        mp.setattr(chunks, name, lambda *args, encode=encode: time.sleep(0.002) or encode(*args))
    try:
        build_block(aligned, jpeg, raw, None, LAYOUT, (0, 0, 0), QUALITY)
    finally:
        mp.undo()
    return slices, jpeg, raw


def read(url: str, scale: int, encoding: str) -> np.ndarray:
    quality = QUALITY if encoding == "jpeg" else None
    return open_scale(url, LAYOUT, scale, encoding, quality).read().result().transpose(2, 1, 0)


def test_every_slab_reaches_raw_scale_0_exactly(block):
    slices, _, raw = block
    assert LAYOUT.size[2] > 3 * SLAB
    assert np.array_equal(read(raw, 0, "raw"), slices)


def test_each_raw_scale_is_the_mean_of_the_one_below(block):
    slices, _, raw = block
    below = slices
    for scale in LAYOUT.block_scales[1:]:
        level = read(raw, scale, "raw")
        assert np.array_equal(level, mean2(below)), scale
        below = level


def test_jpeg_scales_follow_the_raw_ones(block):
    """Within JPEG tolerance (the coarse scales of this texture are rougher than EM); a slab of other
    data would read ~10 dB."""
    _, jpeg, raw = block
    assert psnr(read(jpeg, 0, "jpeg"), read(raw, 0, "raw")) >= 38
    for scale in LAYOUT.block_scales[1:]:
        assert psnr(read(jpeg, scale, "jpeg"), read(raw, scale, "raw")) >= 32, scale
