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
from emprocess.align.flow import Flow, nearest_filled, patch_flow
from emprocess.align.maps import dense, flow_key
from emprocess.align.register import Slice, load_slice, register

DECIMALS = 3  # flow vectors are stored to a thousandth of a pixel
PASSES = 2  # flow measurements, each after warping by the last
FIRST_PASS_DEVIATION = 8.0  # px: the first pass's consistency bound; later passes hold flow.MAX_DEVIATION
FOLLOW_ROWS = 512  # rows resampled at once when the first flow is applied (20 bytes a pixel)


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
    """The patch flow, measured PASSES times, each after ``moving`` is warped by the flow so far, so a
    later pass sees patches that nearly match, undistorted by the deformation's gradient across a patch (8 px
    waves 260 px long move a 64-px patch's pixels ±2 px about its centre, and their crests fail the
    neighbourhood check), and adds its small correction. The first flow's dropped vectors take their
    nearest kept neighbour's value for the warp, so the second pass measures there too: a vector is
    kept where the second pass kept it."""
    flow = patch_flow(fixed, moving, max_deviation=FIRST_PASS_DEVIATION)
    for _ in range(PASSES - 1):
        if not flow.valid.any():
            return flow
        filled = nearest_filled(flow.vectors, flow.valid)
        again = patch_flow(fixed, follow(moving, flow.origin, flow.stride, filled))
        flow = Flow(flow.origin, flow.stride, filled + again.vectors, again.peak, again.ratio)
    return flow


def follow(moving: np.ndarray, origin: float, stride: int, vectors: np.ndarray) -> np.ndarray:
    """``moving`` resampled so that pixel p shows what it showed at p + v(p), v the (ny, nx, 2) grid of
    ``vectors`` (point (i, j) at pixel (origin + j·stride, origin + i·stride)) interpolated by
    ``maps.dense``; in bands of FOLLOW_ROWS rows."""
    height, width = moving.shape
    out = np.empty_like(moving)
    xs = np.arange(width, dtype=np.float32)
    for r0 in range(0, height, FOLLOW_ROWS):
        r1 = min(r0 + FOLLOW_ROWS, height)
        ys = np.arange(r0, r1, dtype=np.float32)[:, None]
        v = dense(vectors, origin, stride, xs, ys[:, 0])
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
