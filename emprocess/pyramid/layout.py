"""Geometry of the neuroglancer pyramid: scales, chunks, 1024³ blocks and their shard files.

Every scale halves the previous one in x, y and z (sizes round up) until one 64³ chunk covers the
volume. The sharding is chosen so that a 1024³ block of scale 0, and its footprint at each higher
scale while that footprint is at least one chunk (scales 0–4), is exactly one shard file: with the
identity hash, a chunk's shard is its compressed Morton code shifted right by the number of
Morton bits that address a chunk inside the footprint, so every chunk of a footprint lands in the
same shard and different footprints land in different shards. That makes the block mini-tasks
independent (no two write one file). Scales above 4 (a block covers less than one chunk) are built
by one final task and stored as one shard file per scale.

Coordinates here are (x, y, z) and relative to the volume's origin (``voxel_offset``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

CHUNK = 64
BLOCK = 1024
BLOCK_SCALES = int(math.log2(BLOCK // CHUNK)) + 1  # scales 0..4 belong to blocks
JPEG_SHARD_ENCODING = "raw"  # JPEG chunks are already compressed
RAW_SHARD_ENCODING = "gzip"

Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # (start xyz, stop xyz), stop exclusive


def compressed_morton(coords: tuple[int, ...], bits: tuple[int, ...]) -> int:
    """The neuroglancer compressed Morton code: interleave the coordinate bits, x first, skipping a
    dimension once its grid needs no more bits."""
    code, out_bit = 0, 0
    for level in range(max(bits, default=0)):
        for c, b in zip(coords, bits):
            if level < b:
                code |= ((c >> level) & 1) << out_bit
                out_bit += 1
    return code


def _bits(n: int) -> int:
    return max(0, (n - 1).bit_length())


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class PyramidLayout:
    """The pyramid of a volume of ``size`` voxels (x, y, z) at scale 0."""

    size: tuple[int, int, int]
    voxel_offset: tuple[int, int, int]
    resolution: tuple[float, float, float]

    def __post_init__(self):
        if len(self.size) != 3 or any(int(n) < 1 for n in self.size):
            raise ValueError(f"volume size {self.size} must be three positive integers")
        object.__setattr__(self, "size", tuple(int(n) for n in self.size))
        object.__setattr__(self, "voxel_offset", tuple(int(n) for n in self.voxel_offset))
        object.__setattr__(self, "resolution", tuple(float(r) for r in self.resolution))

    @classmethod
    def from_json(cls, value: dict) -> "PyramidLayout":
        return cls(tuple(value["size"]), tuple(value["voxel_offset"]), tuple(value["resolution"]))

    def to_json(self) -> dict:
        return {"size": list(self.size), "voxel_offset": list(self.voxel_offset), "resolution": list(self.resolution)}

    # scales ---------------------------------------------------------------------------------------

    @property
    def num_scales(self) -> int:
        """Scales until one chunk covers the volume."""
        return _bits(_ceil_div(max(self.size), CHUNK)) + 1

    @property
    def block_scales(self) -> range:
        """Scales written by the block tasks."""
        return range(min(BLOCK_SCALES, self.num_scales))

    @property
    def top_scales(self) -> range:
        """Scales written by the final task, from the last block scale."""
        return range(min(BLOCK_SCALES, self.num_scales), self.num_scales)

    def scale_size(self, scale: int) -> tuple[int, int, int]:
        return tuple(_ceil_div(n, 1 << scale) for n in self.size)

    def scale_offset(self, scale: int) -> tuple[int, int, int]:
        """Offsets round down at coarser scales (as CloudVolume does): at most one coarse voxel off."""
        return tuple(o >> scale for o in self.voxel_offset)

    def scale_resolution(self, scale: int) -> tuple[float, float, float]:
        return tuple(r * (1 << scale) for r in self.resolution)

    def scale_key(self, scale: int) -> str:
        return "_".join(f"{r:g}" for r in self.scale_resolution(scale))

    def grid(self, scale: int) -> tuple[int, int, int]:
        """Chunks per axis."""
        return tuple(_ceil_div(n, CHUNK) for n in self.scale_size(scale))

    def grid_bits(self, scale: int) -> tuple[int, int, int]:
        return tuple(_bits(n) for n in self.grid(scale))

    # sharding -------------------------------------------------------------------------------------

    def _footprint_bits(self, scale: int) -> int:
        """Morton bits addressing a chunk inside one shard: a block's footprint, or all of a top scale."""
        grid_bits = self.grid_bits(scale)
        if scale in self.top_scales:
            return sum(grid_bits)
        per_axis = BLOCK_SCALES - 1 - scale
        return sum(min(per_axis, b) for b in grid_bits)

    def sharding(self, scale: int, data_encoding: str) -> dict:
        low = self._footprint_bits(scale)
        minishard_bits = low // 2
        return {
            "@type": "neuroglancer_uint64_sharded_v1",
            "hash": "identity",
            "preshift_bits": low - minishard_bits,
            "minishard_bits": minishard_bits,
            "shard_bits": sum(self.grid_bits(scale)) - low,
            "minishard_index_encoding": "gzip",
            "data_encoding": data_encoding,
        }

    def shard_of_chunk(self, scale: int, chunk: tuple[int, int, int]) -> int:
        return compressed_morton(chunk, self.grid_bits(scale)) >> self._footprint_bits(scale)

    def shard_path(self, scale: int, shard: int) -> str:
        """The shard file relative to the volume root, named as the neuroglancer spec says."""
        digits = _ceil_div(sum(self.grid_bits(scale)) - self._footprint_bits(scale), 4)
        return f"{self.scale_key(scale)}/{shard:0{digits}x}.shard"

    # blocks ---------------------------------------------------------------------------------------

    @property
    def block_counts(self) -> tuple[int, int, int]:
        return tuple(_ceil_div(n, BLOCK) for n in self.size)

    def blocks(self) -> list[tuple[int, int, int]]:
        counts = self.block_counts
        return [(i, j, k) for k, j, i in product(range(counts[2]), range(counts[1]), range(counts[0]))]

    def has_block(self, block) -> bool:
        """Whether ``block`` (i, j, k) is one of ``blocks()``, without listing them."""
        return len(block) == 3 and all(0 <= b < n for b, n in zip(block, self.block_counts))

    def block_box(self, block: tuple[int, int, int], scale: int) -> Box:
        """The voxels of ``block``'s footprint at ``scale`` (short at the volume's far edges)."""
        side = BLOCK >> scale
        size = self.scale_size(scale)
        start = tuple(b * side for b in block)
        stop = tuple(min(s + side, n) for s, n in zip(start, size))
        if any(s >= e for s, e in zip(start, stop)):
            raise ValueError(f"block {block} is outside the volume {self.size}")
        return start, stop

    def chunks_in(self, box: Box, scale: int) -> list[tuple[int, int, int]]:
        start, stop = box
        ranges = [range(s // CHUNK, _ceil_div(e, CHUNK)) for s, e in zip(start, stop)]
        return [(x, y, z) for z, y, x in product(ranges[2], ranges[1], ranges[0])]

    def block_shard_paths(self, block: tuple[int, int, int]) -> list[str]:
        """The shard files a block task writes (one per block scale)."""
        paths = []
        for scale in self.block_scales:
            chunks = self.chunks_in(self.block_box(block, scale), scale)
            paths.append(self.shard_path(scale, self.shard_of_chunk(scale, chunks[0])))
        return paths

    def top_shard_paths(self) -> list[str]:
        return [self.shard_path(scale, 0) for scale in self.top_scales]

    # info -----------------------------------------------------------------------------------------

    def info(self, encoding: str, jpeg_quality: int | None = None) -> dict:
        """The precomputed ``info``: ``jpeg`` (sharded JPEG chunks) or ``raw`` (gzip-sharded raw)."""
        if encoding not in ("jpeg", "raw"):
            raise ValueError(f"unknown encoding {encoding!r}")
        return {
            "@type": "neuroglancer_multiscale_volume",
            "type": "image",
            "data_type": "uint8",
            "num_channels": 1,
            "scales": [self.scale_info(s, encoding, jpeg_quality) for s in range(self.num_scales)],
        }

    def scale_info(self, scale: int, encoding: str, jpeg_quality: int | None = None) -> dict:
        """One scale's entry; tensorstore also keeps ``jpeg_quality`` there (other readers ignore it)."""
        entry = {
            "key": self.scale_key(scale),
            "size": list(self.scale_size(scale)),
            "voxel_offset": list(self.scale_offset(scale)),
            "resolution": list(self.scale_resolution(scale)),
            "chunk_sizes": [[CHUNK, CHUNK, CHUNK]],
            "encoding": encoding,
            "sharding": self.sharding(scale, JPEG_SHARD_ENCODING if encoding == "jpeg" else RAW_SHARD_ENCODING),
        }
        if encoding == "jpeg":
            if jpeg_quality is None:
                raise ValueError("a JPEG scale needs a quality")
            entry["jpeg_quality"] = int(jpeg_quality)
        return entry
