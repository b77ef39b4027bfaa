"""Pyramid geometry: scales, the compressed Morton code and the one-shard-per-block sharding."""

from __future__ import annotations

import pytest

from emprocess.pyramid.layout import BLOCK, CHUNK, PyramidLayout, compressed_morton


def layout(size, offset=(0, 0, 0), resolution=(8, 8, 8)) -> PyramidLayout:
    return PyramidLayout(size, offset, resolution)


@pytest.mark.parametrize("size, scales", [
    ((64, 64, 64), 1),
    ((65, 1, 1), 2),
    ((1000, 777, 37), 5),
    ((1024, 1024, 1024), 5),
    ((2100, 1100, 20), 7),
    ((20000, 20000, 5000), 10),
])
def test_scales_stop_when_one_chunk_covers_the_volume(size, scales):
    pyramid = layout(size)
    assert pyramid.num_scales == scales
    assert all(n <= CHUNK for n in pyramid.scale_size(scales - 1))
    if scales > 1:
        assert any(n > CHUNK for n in pyramid.scale_size(scales - 2))


def test_scale_geometry_halves_and_rounds():
    pyramid = layout((1000, 777, 37), offset=(0, 0, 3), resolution=(4, 4, 40))
    assert pyramid.scale_size(1) == (500, 389, 19)
    assert pyramid.scale_size(4) == (63, 49, 3)
    assert pyramid.scale_offset(0) == (0, 0, 3)
    assert pyramid.scale_offset(1) == (0, 0, 1)
    assert pyramid.scale_resolution(2) == (16, 16, 160)
    assert pyramid.scale_key(0) == "4_4_40"
    assert pyramid.scale_key(3) == "32_32_320"


def test_block_and_top_scales_split_at_scale_4():
    assert list(layout((2100, 1100, 20)).block_scales) == [0, 1, 2, 3, 4]
    assert list(layout((2100, 1100, 20)).top_scales) == [5, 6]
    assert list(layout((1000, 777, 37)).block_scales) == [0, 1, 2, 3, 4]
    assert list(layout((1000, 777, 37)).top_scales) == []
    assert list(layout((100, 20, 3)).block_scales) == [0, 1]


def test_compressed_morton_interleaves_x_first_and_drops_exhausted_axes():
    assert compressed_morton((1, 0, 0), (2, 2, 2)) == 1
    assert compressed_morton((0, 1, 0), (2, 2, 2)) == 2
    assert compressed_morton((0, 0, 1), (2, 2, 2)) == 4
    assert compressed_morton((2, 0, 0), (2, 2, 2)) == 8
    assert compressed_morton((1, 1, 1), (2, 2, 2)) == 7
    # x has one bit, y three, z none: x0 y0 | y1 | y2
    assert compressed_morton((1, 5, 0), (1, 3, 0)) == 0b1011
    assert compressed_morton((0, 0, 0), (0, 0, 0)) == 0


def test_blocks_tile_the_volume_and_are_short_at_the_edges():
    pyramid = layout((2100, 1100, 20))
    blocks = pyramid.blocks()
    assert len(blocks) == 3 * 2 * 1 and len(set(blocks)) == 6
    assert pyramid.block_box((2, 1, 0), 0) == ((2048, 1024, 0), (2100, 1100, 20))
    assert pyramid.block_box((2, 1, 0), 4) == ((128, 64, 0), (132, 69, 2))
    boxes = [pyramid.block_box(b, 0) for b in blocks]
    covered = sum((e[0] - s[0]) * (e[1] - s[1]) * (e[2] - s[2]) for s, e in boxes)
    assert covered == 2100 * 1100 * 20
    with pytest.raises(ValueError, match="outside"):
        pyramid.block_box((3, 0, 0), 0)


@pytest.mark.parametrize("size", [(1000, 777, 37), (2100, 1100, 20), (3000, 2100, 1100), (5000, 70, 2200)])
def test_each_block_footprint_is_exactly_one_shard_of_its_own(size):
    pyramid = layout(size)
    for scale in pyramid.block_scales:
        owner: dict[int, tuple] = {}
        for block in pyramid.blocks():
            chunks = pyramid.chunks_in(pyramid.block_box(block, scale), scale)
            shards = {pyramid.shard_of_chunk(scale, chunk) for chunk in chunks}
            assert len(shards) == 1, (scale, block, shards)
            shard = shards.pop()
            assert shard not in owner, f"scale {scale}: blocks {owner.get(shard)} and {block} share shard {shard}"
            owner[shard] = block
        sharding = pyramid.sharding(scale, "raw")
        assert max(owner) < 2 ** sharding["shard_bits"]
        # every chunk of the scale belongs to some block's shard: nothing is left for another writer
        all_chunks = pyramid.chunks_in(((0, 0, 0), pyramid.scale_size(scale)), scale)
        assert {pyramid.shard_of_chunk(scale, c) for c in all_chunks} == set(owner)


def test_full_block_has_4096_chunks_per_scale_0_shard():
    pyramid = layout((2 * BLOCK, 2 * BLOCK, 2 * BLOCK))
    sharding = pyramid.sharding(0, "gzip")
    assert sharding["preshift_bits"] + sharding["minishard_bits"] == 12
    assert sharding["shard_bits"] == 3
    assert pyramid.block_shard_paths((1, 1, 1))[0] == "8_8_8/7.shard"


def test_top_scales_are_single_shards():
    pyramid = layout((2100, 1100, 20))
    for scale in pyramid.top_scales:
        assert pyramid.sharding(scale, "raw")["shard_bits"] == 0
        chunks = pyramid.chunks_in(((0, 0, 0), pyramid.scale_size(scale)), scale)
        assert {pyramid.shard_of_chunk(scale, c) for c in chunks} == {0}
    assert pyramid.top_shard_paths() == ["256_256_256/0.shard", "512_512_512/0.shard"]


def test_info_describes_every_scale():
    pyramid = layout((1000, 777, 37), offset=(0, 0, 3))
    info = pyramid.info("jpeg", 90)
    assert info["type"] == "image" and info["data_type"] == "uint8" and info["num_channels"] == 1
    assert [s["key"] for s in info["scales"]] == ["8_8_8", "16_16_16", "32_32_32", "64_64_64", "128_128_128"]
    assert all(s["chunk_sizes"] == [[64, 64, 64]] and s["jpeg_quality"] == 90 for s in info["scales"])
    assert info["scales"][0]["voxel_offset"] == [0, 0, 3]
    raw = pyramid.info("raw")
    assert all(s["encoding"] == "raw" and s["sharding"]["data_encoding"] == "gzip" for s in raw["scales"])
    with pytest.raises(ValueError):
        pyramid.info("png")
