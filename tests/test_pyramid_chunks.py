"""The pyramid's own chunk encoding and shard staging (``pyramid.chunks``).

Covered: JPEG and raw chunk encodings as the precomputed format lays them out; ``ShardWriter`` on a
1100×70×67 volume (two blocks, one top scale, short chunks at every far edge) read back through
tensorstore, with exactly the planned shard files, a scale written only once the writer moves past
it, and identical bytes on a re-run; the refusal of an off-grid origin and of scales out of order.
"""

from __future__ import annotations

import gzip
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from support.shard_files import difference
from support.volumes import psnr, smooth

from emprocess.pyramid import writers
from emprocess.pyramid.chunks import ShardWriter, encode_jpeg, encode_raw
from emprocess.pyramid.downsample import mean2
from emprocess.pyramid.layout import PyramidLayout
from emprocess.pyramid.meta import write_info

QUALITY = 90
LAYOUT = PyramidLayout((1100, 70, 67), (0, 0, 3), (8, 8, 8))


def levels(layout: PyramidLayout) -> dict[int, np.ndarray]:
    """Every scale of the test volume, (z, y, x), each the mean of the one below."""
    data = {0: smooth(tuple(reversed(layout.size)))}
    for scale in range(1, layout.num_scales):
        data[scale] = mean2(data[scale - 1])
    return data


def write_volume(root: Path, encoding: str, data: dict[int, np.ndarray]) -> str:
    url = f"file://{root}"
    quality = QUALITY if encoding == "jpeg" else None
    write_info(url, LAYOUT, encoding, quality)
    with ThreadPoolExecutor(4) as pool:
        writer = ShardWriter(url, LAYOUT, encoding, quality, pool)
        for scale, level in data.items():
            writer.write(scale, (0, 0, 0), level)
        writer.commit()
    return url


def shard_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.shard")}


@pytest.mark.parametrize("shape", [(64, 64, 64), (37, 20, 40)])
def test_jpeg_chunk_is_one_gray_image_x_wide_and_y_times_z_high(shape):
    chunk = smooth(shape)
    image = simplejpeg.decode_jpeg(encode_jpeg(chunk, QUALITY), colorspace="GRAY")
    depth, height, width = shape
    assert image.shape == (height * depth, width, 1)
    assert psnr(image.reshape(shape), chunk) >= 35


def test_raw_chunk_is_gzipped_voxels_x_fastest():
    chunk = smooth((37, 20, 40))
    voxels = gzip.decompress(encode_raw(chunk))
    assert voxels == chunk.tobytes(order="C")
    assert voxels == chunk.transpose(2, 1, 0).tobytes(order="F")  # (x, y, z) with x varying fastest


def test_raw_chunk_encoding_does_not_depend_on_the_clock():
    chunk = smooth((64, 64, 64))
    first = encode_raw(chunk)
    wait_for_next_second()
    assert encode_raw(chunk) == first


def wait_for_next_second() -> None:
    """Gzip headers store whole seconds: a re-run within the same second would hide a timestamp."""
    now = int(time.time())
    while int(time.time()) == now:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def volume_levels():
    return levels(LAYOUT)


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_written_scales_read_back_through_tensorstore(tmp_path, volume_levels, encoding):
    url = write_volume(tmp_path, encoding, volume_levels)
    assert LAYOUT.num_scales == 6 and list(LAYOUT.top_scales) == [5]
    for scale, expected in volume_levels.items():
        quality = QUALITY if encoding == "jpeg" else None
        read = writers.open_scale(url, LAYOUT, scale, encoding, quality).read().result().transpose(2, 1, 0)
        assert read.shape == expected.shape, scale
        if encoding == "raw":
            assert np.array_equal(read, expected), scale
        else:
            assert psnr(read, expected) >= 35, scale
            assert np.abs(read[-1].astype(int) - expected[-1]).mean() < 4, scale  # last (short) z chunk


def test_shard_files_are_exactly_the_planned_ones(tmp_path, volume_levels):
    write_volume(tmp_path, "raw", volume_levels)
    planned = {p for block in LAYOUT.blocks() for p in LAYOUT.block_shard_paths(block)} | set(LAYOUT.top_shard_paths())
    assert len(LAYOUT.blocks()) == 2 and len(planned) == 2 * 5 + 1
    assert set(shard_files(tmp_path)) == planned


def test_a_scale_is_written_once_the_writer_moves_past_it(tmp_path, volume_levels):
    url = f"file://{tmp_path}"
    write_info(url, LAYOUT, "raw", None)
    with ThreadPoolExecutor(2) as pool:
        writer = ShardWriter(url, LAYOUT, "raw", None, pool)
        writer.write(0, (0, 0, 0), volume_levels[0])
        assert shard_files(tmp_path) == {}
        writer.write(1, (0, 0, 0), volume_levels[1])
        with pytest.raises(ValueError, match="lowest first"):
            writer.write(0, (0, 0, 0), volume_levels[0])
        writer.commit()
    written = {Path(path).parts[0] for path in shard_files(tmp_path)}
    assert written == {LAYOUT.scale_key(0), LAYOUT.scale_key(1)}


def test_origin_off_the_chunk_grid_is_refused(tmp_path):
    write_info(f"file://{tmp_path}", LAYOUT, "raw", None)
    with ThreadPoolExecutor(1) as pool:
        writer = ShardWriter(f"file://{tmp_path}", LAYOUT, "raw", None, pool)
        with pytest.raises(ValueError, match="chunk grid"):
            writer.write(0, (64, 32, 0), np.zeros((64, 64, 64), np.uint8))


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_rewriting_the_same_data_rewrites_identical_bytes(tmp_path, volume_levels, encoding):
    write_volume(tmp_path, encoding, volume_levels)
    before = shard_files(tmp_path)
    wait_for_next_second()
    saved = {name: (tmp_path / name).read_bytes() for name in before}
    write_volume(tmp_path, encoding, volume_levels)
    changed = [name for name, digest in shard_files(tmp_path).items() if before.get(name) != digest]
    for name in changed:  # what differs, for a failure that no local repetition has reproduced
        (tmp_path / f"{name}.before").write_bytes(saved[name])
    assert not changed and shard_files(tmp_path).keys() == before.keys(), [
        difference(tmp_path / f"{name}.before", tmp_path / name) for name in changed]
