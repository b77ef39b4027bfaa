"""The ``align.warp`` work: one source slice → one z of the aligned zarr volume, plus its thumbnail.

The aligned volume is (z, y, x) uint8 with z = slice − minz, 1×1024×1024 chunks, uncompressed; the
pyramid blocks read it back 1024² tile by tile. The thumbnail is written last, so its presence means
the slice is complete. A 16-bit slice is first mapped to 8 bits by the stack's rule, which
align.intensity stored before any warp task runs.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from emprocess import storage
from emprocess.align.images import image_size, read_image
from emprocess.align.maps import read_map
from emprocess.pyramid.intensity import RuleResult, stored_rule
from emprocess.pyramid.warp import clahe, thumbnail_png, warp, warp_elastic
from emprocess.pyramid.writers import ALIGNED_CHUNKS, open_zarr, zarr_chunk_key
from emprocess.payloads import Axis, Index, Location, Payload
from emprocess.stages import InputError, Result

WRITE_ROWS = ALIGNED_CHUNKS[1]
# Peak memory of one slice, fitted to what was measured (1.7 GB for a 20k × 20k 16-bit slice): the
# decoded source at up to 2 bytes a pixel, and the warped and CLAHE'd 8-bit slices.
WARP_BASE_BYTES = 100_000_000
WARP_BYTES_PER_SOURCE_PIXEL = 2
WARP_BYTES_PER_ALIGNED_PIXEL = 2
Size = Annotated[list[Axis], Field(min_length=2, max_length=2)]


class ElasticMap(Payload):
    """Where a slice's elastic map is (see emprocess.align.maps): entry ``index`` of the array ``maps``."""

    maps: Location
    index: Index
    stride: Annotated[int, Field(ge=1)]
    grid: Size


class WarpPayload(Payload):
    """One slice ``z`` (at ``z_index`` of ``depth`` in the aligned volume) warped by ``transform`` into a
    ``width`` × ``height`` frame; ``intensity`` is where the stack's 16-bit → 8-bit rule is stored."""

    z: Index
    slice: Location
    source_size: Size | None = None
    transform: Annotated[list[Annotated[list[float], Field(max_length=3)]], Field(max_length=3)]
    width: Axis
    height: Axis
    depth: Axis
    z_index: Index
    clip_limit: Annotated[float, Field(ge=0, le=1)]
    aligned: Location
    thumbnail: Location
    intensity: Location
    elastic: ElasticMap | None = None

    @model_validator(mode="after")
    def _in_volume(self) -> "WarpPayload":
        matrix_of(self.transform, self.z)
        if self.z_index >= self.depth:
            raise ValueError(f"'z_index' {self.z_index} is outside the volume's {self.depth} slices")
        return self


def matrix_of(transform, z: int) -> np.ndarray:
    """The 2×3 source → aligned matrix of slice ``z``, or an InputError naming it."""
    try:
        matrix = np.asarray(transform, np.float64)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise InputError(f"slice {z}: transform {transform!r} is not a finite 2×3 matrix")
    if abs(np.linalg.det(matrix[:, :2])) < 1e-6:
        raise InputError(f"slice {z}: transform {transform!r} is singular")
    return matrix


def aligned_chunk_urls(aligned: str, z_index: int, width: int, height: int) -> list[str]:
    rows, cols = math.ceil(height / ALIGNED_CHUNKS[1]), math.ceil(width / ALIGNED_CHUNKS[2])
    return [storage.join(aligned, zarr_chunk_key((z_index, r, c))) for r in range(rows) for c in range(cols)]


class WarpResult(Result):
    """The slice's source type and size, the rule that mapped it to 8 bits (None for an 8-bit slice),
    and, as ``files``, its thumbnail: written last, it stands for the slice's chunks too, so the
    output check costs one request per slice, not one per chunk (~400 for a 20k² frame)."""

    z: Index
    thumbnail: str
    source_dtype: str
    source_size: Size
    intensity: RuleResult | None
    files: list[str]


def write_aligned_slice(payload: WarpPayload) -> WarpResult:
    """Warp one slice into the aligned frame, apply CLAHE, store it and its thumbnail."""
    z, url = payload.z, payload.slice
    width, height = payload.width, payload.height
    matrix = matrix_of(payload.transform, z)
    image = read_image(url)
    source_size = [image.shape[1], image.shape[0]]
    expected = payload.source_size
    if expected is not None and expected != source_size:
        raise InputError(f"{url}: slice {z} is {source_size[0]}×{source_size[1]}, "
                         f"but was aligned as {expected[0]}×{expected[1]}")
    source_dtype, rule = str(image.dtype), None
    if image.dtype == np.uint16:
        rule = stored_rule(payload.intensity, z)
        image = rule.apply(image)
    if payload.elastic is None:
        warped = warp(image, matrix, width, height)
    else:
        elastic = payload.elastic
        displacement = read_map(elastic.maps, elastic.index, tuple(elastic.grid))
        warped = warp_elastic(image, matrix, displacement, elastic.stride, width, height)
    del image
    out = clahe(warped, payload.clip_limit)
    del warped
    volume = open_zarr(payload.aligned, (payload.depth, height, width), ALIGNED_CHUNKS, create=True)
    for r0 in range(0, height, WRITE_ROWS):
        r1 = min(r0 + WRITE_ROWS, height)
        volume[payload.z_index, r0:r1, :].write(out[r0:r1]).result()
    storage.write(payload.thumbnail, thumbnail_png(out))
    return WarpResult(z=z, thumbnail=payload.thumbnail, source_dtype=source_dtype, source_size=source_size,
                      intensity=None if rule is None else RuleResult(low=rule.low, high=rule.high),
                      files=[payload.thumbnail])


def warp_memory(payload: WarpPayload) -> int:
    """Peak bytes of one slice: its source (size from the payload or the header) and aligned frame."""
    width, height = payload.source_size or image_size(payload.slice)
    return (WARP_BASE_BYTES + WARP_BYTES_PER_SOURCE_PIXEL * width * height
            + WARP_BYTES_PER_ALIGNED_PIXEL * payload.width * payload.height)


def warp_outputs(payload: WarpPayload) -> list[str]:
    """Every file the task writes: the slice's aligned chunks, then its thumbnail."""
    return [*aligned_chunk_urls(payload.aligned, payload.z_index, payload.width, payload.height), payload.thumbnail]
