"""align.pairs in elastic mode: each pair's model, then patch flow from slice z to z+1 and to z+2.

The flow of slice z to z+k is measured on the slices as features see them (8-bit, downsampled by the
conf's factor), after slice z+k is mapped into slice z by the models chosen for the pairs between
them (``compose.choose``, the rule align.collect applies too), so the flow is only what the models
leave: a smooth deformation, a few pixels. It is returned in full-resolution pixels of slice z with
the mapping it was measured after (``prewarp``), so align.collect can carry it into the aligned
frame whatever model it was.

A mini-task of slices z0..zn is also given slice zn+1 (when the stack has it), so the flow zn−1 → zn+1
belongs to the task that holds its first slice; the pair zn → zn+1 is registered for that mapping
only and reported by the next task.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from emprocess.align.compose import choose
from emprocess.align.flow import MAX_DEVIATION, Flow, nearest_filled, patch_flow
from emprocess.align.maps import dense, flow_key
from emprocess.align.register import Slice, load_slice, register

DECIMALS = 3  # flow vectors are stored to a thousandth of a pixel
PASSES = (64, 64, 32, 32, 32)  # px: the patch side of each flow measurement, each after warping by the ones before
EARLY_PASS_DEVIATION = 8.0  # px: the consistency bound of the passes before the last (which holds flow.MAX_DEVIATION)
FOLLOW_ROWS = 512  # rows resampled at once when a pass's flow is applied (20 bytes a pixel); a multiple of:
FOLLOW_STEP = 4  # px between the points where that flow is interpolated bicubically


def register_run_elastic(urls: list[str], downsample: int, next_url: str | None) -> Iterator[dict]:
    """Pair results for (urls[i], urls[i+1]) as ``register.register_run`` gives, each with ``flow1``
    and ``flow2`` (None past the slices given); ``next_url`` only lends its slice to the last flow2."""
    window: list[Slice] = []  # the last three slices read
    models: list[np.ndarray] = []  # models[i]: slice i+1 → slice i (3×3)
    results: list[dict] = []
    for index, url in enumerate([*urls, next_url] if next_url else urls):
        window = [*window[-2:], load_slice(url, downsample)]
        if index == 0:
            continue
        pair = register(window[-2], window[-1])
        models.append(choose(pair).matrix)
        if index < len(urls):
            pair[flow_key(1)] = flow_json(window[-2], window[-1], models[-1], 1)
            pair[flow_key(2)] = None
            results.append(pair)
        if index >= 2:
            results[index - 2][flow_key(2)] = flow_json(window[-3], window[-1], models[-2] @ models[-1], 2)
    yield from results


def flow_json(fixed: Slice, moving: Slice, prewarp: np.ndarray, reach: int) -> dict:
    """The flow of ``fixed`` to ``moving`` after ``prewarp`` (3×3, moving px → fixed px, full resolution),
    in full-resolution pixels of ``fixed``; see ``stages.FlowResult`` for the fields."""
    scale_fixed, scale_moving = _scales(fixed), _scales(moving)
    working = _to_working(scale_fixed) @ prewarp @ np.linalg.inv(_to_working(scale_moving))
    height, width = fixed.prepared.shape
    warped = cv2.warpAffine(moving.prepared, working[:2], (width, height), flags=cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    flow = refined_flow(fixed.prepared, warped)
    return {
        "reach": reach,
        "prewarp": prewarp[:2].tolist(),
        "origin": [(flow.origin + 0.5) * s - 0.5 for s in scale_fixed],
        "stride": [flow.stride * s for s in scale_fixed],
        "dx": _rows(flow, 0, scale_fixed[0]),
        "dy": _rows(flow, 1, scale_fixed[1]),
        "valid": round(float(flow.valid.mean()), 4) if flow.valid.size else 0.0,
    }


def refined_flow(fixed: np.ndarray, moving: np.ndarray) -> Flow:
    """The patch flow, measured once per entry of PASSES (its patch side), each pass after ``moving`` is
    warped by the flow so far, so a later pass sees patches that nearly match, undistorted by the
    deformation's gradient across a patch, and adds its small correction. The 64-px passes find the
    deformation; the 32-px ones resolve what a 64-px patch averages over: on one real EM section under
    two 8 px fields of ~300 px waves, 2, 3 or 4 passes of 64 px leave 0.43, 0.36, 0.33 px (median),
    these passes 0.09 px (an error that alternates between neighbouring grid points is nearly invisible
    to a patch spanning three of them, so 64-px passes cannot correct it). Every pass has the grid that
    reaches the slice's edges (``patch_flow`` with ``edges``), so less than a grid step is left to
    extrapolation. Dropped vectors take their nearest kept neighbour's value for the warp, so the next
    pass measures there too: a vector is kept where the last pass kept it. The passes before the last,
    which a later one checks and corrects, hold the lenient EARLY_PASS_DEVIATION (8 px waves 260 px long
    move a 64-px patch's pixels ±2 px about its centre, and their crests fail flow.MAX_DEVIATION) and
    skip the sub-pixel steps."""
    flow = None
    for index, patch in enumerate(PASSES):
        last = index == len(PASSES) - 1
        options = {"max_deviation": MAX_DEVIATION if last else EARLY_PASS_DEVIATION, "edges": True, "sub_pixel": last}
        if flow is None:
            flow = patch_flow(fixed, moving, patch, **options)
            continue
        if not flow.valid.any():
            break
        filled = nearest_filled(flow.vectors, flow.valid)
        again = patch_flow(fixed, follow(moving, flow.origin, flow.stride, filled), patch, **options)
        flow = Flow(flow.origin, flow.stride, filled + again.vectors, again.peak, again.ratio)
    return flow


def follow(moving: np.ndarray, origin: float, stride: int, vectors: np.ndarray) -> np.ndarray:
    """``moving`` resampled so that pixel p shows what it showed at p + v(p), v the (ny, nx, 2) grid of
    ``vectors`` (point (i, j) at pixel (origin + j·stride, origin + i·stride)) interpolated by
    ``maps.dense`` at every FOLLOW_STEP-th pixel and linearly between (a field smooth over a 32-px grid
    is linear to a hundredth of a pixel over 4 px; the bicubic field at every pixel cost a fifth of a
    flow); in bands of FOLLOW_ROWS rows."""
    height, width = moving.shape
    out = np.empty_like(moving)
    xs = np.arange(width, dtype=np.float32)
    # lattice points at FOLLOW_STEP·k + (FOLLOW_STEP − 1)/2: where cv2.resize puts the source pixels' centres
    centre = (FOLLOW_STEP - 1) / 2
    lattice_x = np.arange(-(-width // FOLLOW_STEP), dtype=np.float32) * FOLLOW_STEP + centre
    for r0 in range(0, height, FOLLOW_ROWS):
        r1 = min(r0 + FOLLOW_ROWS, height)
        lattice_y = r0 + np.arange(-(-(r1 - r0) // FOLLOW_STEP), dtype=np.float32) * FOLLOW_STEP + centre
        coarse = dense(vectors, origin, stride, lattice_x, lattice_y)
        v = cv2.resize(coarse, (len(lattice_x) * FOLLOW_STEP, len(lattice_y) * FOLLOW_STEP),
                       interpolation=cv2.INTER_LINEAR)[: r1 - r0, :width]
        ys = np.arange(r0, r1, dtype=np.float32)[:, None]
        cv2.remap(moving, xs + v[..., 0], ys + v[..., 1], cv2.INTER_CUBIC, dst=out[r0:r1],
                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def _scales(image: Slice) -> tuple[float, float]:
    """Full-resolution px per working px along x and y."""
    return image.size[0] / image.prepared.shape[1], image.size[1] / image.prepared.shape[0]


def _to_working(scales: tuple[float, float]) -> np.ndarray:
    """Full-resolution px → working px (pixel centres at integers in both)."""
    sx, sy = scales
    return np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])


def _rows(flow: Flow, axis: int, scale: float) -> list[list[float | None]]:
    values = np.round(flow.vectors[..., axis].astype(np.float64) * scale, DECIMALS)
    return [[None if np.isnan(v) else float(v) for v in row] for row in values]
