"""Elastic maps: each slice's displacement on a grid of the aligned frame, and the flows they come from.

Format (``align/maps.zarr``, zarr v3, float32, shape (slices, ny, nx, 2), one chunk per slice, dimension
names z, gy, gx, d): entry [z − minz, i, j] is the displacement (dx, dy) in aligned-frame pixels at
grid point (j·stride, i·stride). The aligned slice z shows, at frame pixel g, its affinely aligned
self at g + u(g), u interpolated bicubically between grid points (``dense``); in source pixels that is
T⁻¹(g + u(g)) with T the slice's matrix in ``transforms.json``, whose ``elastic`` entry names the
maps' URL, stride, grid and first slice. The grid covers the frame: its last row and column lie at or
beyond the frame's last pixel.

A pair's flow (``stages.FlowResult``, on a grid of slice z's own pixels) is carried into the frame
by ``frame_flow``; ``relax`` turns the frame flows into maps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import cv2
import numpy as np

from emprocess import storage
from emprocess.align.compose import homogeneous
from emprocess.align.flow import STRIDE
from emprocess.align.models import apply
from emprocess.align.relax import BLOCK, relax, residuals, sample
from emprocess.pyramid.writers import TMP_CODECS, open_store
from emprocess.run_layout import ELASTIC_MAPS
from emprocess.stages import InputError

DIMENSIONS = ["z", "gy", "gx", "d"]
REACHES = (1, 2)  # flows to the next slice and to the one after it
FLOW_DOCUMENTS = 8  # align.pairs results kept in memory while relaxing (8 pairs each)
DECIMALS = 3  # the quality figures are rounded to a thousandth of a pixel
MIN_KNOWN_WEIGHT = 0.5  # share of the bilinear weight that known vectors must hold for a value
# A flow keeping fewer of its grid points is taken for chance and not used: ISBI 2012's serial sections,
# 50 nm apart, keep 0–30 %; real FIB-SEM neighbours under 8-px deformations 65–90 %.
MIN_FLOW_SHARE = 0.35
EXTRAPOLATED = 1.5  # flow grid units off the grid a flow is extrapolated to (a frame point just past the slice)


def flow_key(reach: int) -> str:
    """The key of a pair result's flow to slice z + ``reach``."""
    return f"flow{reach}"


FLOW_KEYS = tuple(flow_key(reach) for reach in REACHES)


def grid_shape(width: int, height: int, stride: int) -> tuple[int, int]:
    """(ny, nx) of a grid with ``stride`` covering a width × height frame."""
    return math.ceil((height - 1) / stride) + 1, math.ceil((width - 1) / stride) + 1


def grid_points(shape: tuple[int, int], stride: int) -> np.ndarray:
    """(ny·nx, 2) frame pixels (x, y) of the grid points, row by row."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]] * float(stride)
    return np.column_stack([xs.ravel(), ys.ravel()])


def dense(vectors: np.ndarray, origin: float, stride: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A complete (ny, nx, 2) grid of vectors (point (i, j) at pixel (origin + j·stride, origin + i·stride))
    at every pixel of the rows ``ys`` × columns ``xs`` (1-D): (rows, columns, 2) float32.
    Bicubic, the border's value beyond the grid: bilinear would miss a 250-px wave of 8 px by up to 1
    px between points 32 px apart, bicubic by a few hundredths."""
    grid_x = np.broadcast_to(((xs - origin) / stride).astype(np.float32), (len(ys), len(xs)))
    grid_y = np.broadcast_to(((ys - origin) / stride).astype(np.float32)[:, None], (len(ys), len(xs)))
    return cv2.remap(vectors.astype(np.float32), grid_x, grid_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def frame_flow(flow: dict, first: np.ndarray, second: np.ndarray, shape: tuple[int, int], stride: int) -> np.ndarray:
    """A pair's flow (slice z to z+k) as a field on the frame grid: F(g) with slice z's aligned self at
    g showing what slice z+k's shows at g + F(g). ``first`` and ``second`` are the two slices' 3×3
    matrices into the frame. NaN where the flow is unknown or the point falls outside slice z's grid."""
    points = grid_points(shape, stride)
    in_first = apply(np.linalg.inv(first), points)
    vectors = np.stack([np.array(flow["dx"], np.float64), np.array(flow["dy"], np.float64)], axis=-1)
    if vectors.ndim != 3 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        return np.full((*shape, 2), np.nan, np.float32)
    position = (in_first - np.asarray(flow["origin"], float)) / np.asarray(flow["stride"], float)
    moved = in_first + sample_known(vectors, position[:, 0], position[:, 1])
    into_frame = second @ np.linalg.inv(homogeneous(flow["prewarp"]))
    return (apply(into_frame, moved) - points).reshape(*shape, 2).astype(np.float32)


def sample_known(field: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a field with NaN holes over its known neighbours only (their weights
    renormalised): NaN where those hold less than MIN_KNOWN_WEIGHT of the weight, or further than
    EXTRAPOLATED grid units off the grid (up to there, extrapolated linearly from the border cell: the
    flow grid ends at the slice's edges, and a frame point may lie just past them). A filtered-out
    vector thus costs the points next to it nothing, not the four cells around it."""
    known = np.isfinite(field[..., :1]).astype(np.float64)
    weight = sample(known, gx, gy, EXTRAPOLATED)[..., 0]
    total = sample(np.where(known > 0, field, 0.0), gx, gy, EXTRAPOLATED)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((weight >= MIN_KNOWN_WEIGHT)[..., None], total / weight[..., None], np.nan)


def maps_spec(url: str, shape: tuple[int, ...] | None = None) -> dict:
    spec = {"driver": "zarr3", "kvstore": storage.kvstore_spec(url)}
    if shape is not None:
        spec["metadata"] = {
            "shape": list(shape),
            "data_type": "float32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, *shape[1:]]}},
            "chunk_key_encoding": {"name": "default"},
            "codecs": TMP_CODECS,
            "fill_value": 0,
            "dimension_names": DIMENSIONS,
        }
    return spec


def create_maps(url: str, slices: int, grid: tuple[int, int]):
    """The maps array at ``url`` for ``slices`` slices, created or opened (its shape must match)."""
    return open_store(maps_spec(url, (slices, *grid, 2)), url, create=True, open=True)


def read_map(url: str, index: int, grid: tuple[int, int]) -> np.ndarray:
    """Slice ``index``'s (ny, nx, 2) displacement grid."""
    maps = open_store(maps_spec(url), url, open=True)
    if tuple(maps.shape[1:]) != (*grid, 2) or not 0 <= index < maps.shape[0]:
        raise InputError(f"{url}: no {grid[0]}×{grid[1]} map for slice index {index} "
                                f"(the array is {tuple(maps.shape)})")
    return maps[index].read().result()


def make_maps(process: str, transforms: dict, flow_results: dict[int, str], replaced: Iterable[int] = (),
              bridge_flows: dict[int, tuple[int, str]] | None = None) -> tuple[dict, dict[int, dict]]:
    """Relax the stack's flows into its maps (written to ``process``/align/maps.zarr).

    ``transforms`` is the affine transforms.json document; ``flow_results`` names, for each pair's
    first slice, the align.pairs result holding its flows, read when the relaxation reaches it. Flows
    touching a ``replaced`` slice are left out; ``bridge_flows`` maps the good slice before a run of
    replaced slices to the one after it and the align.bridge result whose flow links them (used when
    it reaches at most max(REACHES) slices). Returns the ``elastic`` entry of transforms.json and the
    quality (``pair_quality``) of each pair that touches no replaced slice.
    """
    minz, maxz = transforms["minz"], transforms["maxz"]
    matrices = {z: homogeneous(transforms["transforms"][str(z)]) for z in range(minz, maxz + 1)}
    read = functools.lru_cache(maxsize=FLOW_DOCUMENTS)(storage.read_json)
    replaced, bridge_flows = set(replaced), bridge_flows or {}

    def pair_flow(z: int, reach: int) -> dict | None:
        """Slice z's flow to z + reach: a bridge's, or one of align.pairs' when no replaced slice is
        in the way."""
        if z in bridge_flows and bridge_flows[z][0] == z + reach:
            return read(bridge_flows[z][1])[flow_key(1)]
        if replaced & set(range(z, z + reach + 1)):
            return None
        document = read(flow_results[z])
        return next(p for p in document["pairs"] if p["z"] == z).get(flow_key(reach))

    first = next((flow for z in range(minz, maxz) for reach in REACHES
                  if z + reach <= maxz and (flow := pair_flow(z, reach)) is not None), None)
    stride = STRIDE if first is None else max(1, round(max(first["stride"])))  # no flow: the maps stay zero
    grid = grid_shape(transforms["width"], transforms["height"], stride)

    @functools.lru_cache(maxsize=len(REACHES) * (BLOCK + 2))  # a block's, read again for its residuals
    def flows(index: int, reach: int) -> np.ndarray | None:
        z = minz + index
        flow = pair_flow(z, reach) if z + reach <= maxz else None
        if flow is None or flow["valid"] < MIN_FLOW_SHARE:
            return None
        return frame_flow(flow, matrices[z], matrices[z + reach], grid, stride)

    url = storage.join(process, ELASTIC_MAPS)
    maps = create_maps(url, maxz - minz + 1, grid)
    quality, previous = {}, None
    for index, displacement in relax(grid, maxz - minz + 1, flows, spacing=stride):
        maps[index].write(displacement).result()
        z = minz + index - 1
        if previous is not None and not {z, z + 1} & replaced:
            flow = flows(index - 1, 1)
            residual = None if flow is None else residuals(previous, displacement, flow, spacing=stride)
            quality[z] = pair_quality(residual, pair_flow(z, 1)["valid"], pair_flow(z, 2) if z + 2 <= maxz else None)
        previous = displacement
    entry = {"maps": url, "minz": minz, "stride": stride, "grid": list(grid)}
    return entry, quality


def pair_quality(residual: np.ndarray | None, flow1_valid: float, flow2: dict | None) -> dict:
    """What the maps leave of a pair's flow to the next slice, in frame px: RMS and 95th percentile over
    the grid points where the flow is known, and the share of grid points where it is (no flow used:
    all None and 0)."""
    if residual is None:
        residual = np.full(1, np.nan)
    known = residual[np.isfinite(residual)]
    return {
        "residual_px": round(float(np.sqrt(np.mean(known**2))), DECIMALS) if known.size else None,
        "p95_px": round(float(np.percentile(known, 95)), DECIMALS) if known.size else None,
        "known": round(known.size / residual.size, DECIMALS),
        "flow1_valid": flow1_valid,
        "flow2_valid": None if flow2 is None else flow2["valid"],
    }
