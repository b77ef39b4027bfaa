"""From pairwise results to one transform per slice (pure functions, no I/O).

Conventions: 3×3 homogeneous matrices; pixel centres at integer coordinates, so a w×h slice covers
[-0.5, w-0.5] × [-0.5, h-0.5]. A pair result's matrices map slice z+1 pixels into slice z pixels.

Model choice per pair (z, z+1), in order:
  * affine and translation both found, and the affine departs negligibly from the translation
    (the largest displacement between the two models over slice z+1's four corners — the maximum over
    the whole slice, since their difference is affine — is below NEGLIGIBLE_PX = 0.5 px) → translation;
  * affine found → affine;
  * only translation found → translation, flagged as a fallback;
  * nothing found → identity, flagged as a fallback.
A model found ``deformed`` (a large consensus whose residual is a smooth local deformation, see
``models``) is used all the same, and the pair is flagged ``deformed`` with its residuals as the reason:
the best affine fit is far closer than identity, and only an elastic alignment would do better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emprocess.align.models import apply

NEGLIGIBLE_PX = 0.5
EDGE_TOLERANCE = 1e-6  # px; keeps float noise from adding a row or column to the bounding box


@dataclass(frozen=True)
class Choice:
    """The model used for one pair and why."""

    model: str  # "affine", "translation" or "identity"
    matrix: np.ndarray  # 3×3, slice z+1 → slice z
    fallback: bool
    reason: str | None
    departure_px: float | None  # affine vs translation over the slice, when both were found
    deformed: bool = False


def deformation(name: str, fit: dict) -> str:
    return (f"deformed: the {name} leaves an RMS residual of {fit['residual_px']:.1f} px over {fit['inliers']} "
            f"inliers, smooth to {fit['local_residual_px']:.1f} px locally; used all the same (an elastic "
            f"alignment would follow the deformation)")


def choose(pair: dict) -> Choice:
    """Pick the model for one pair result of the alignment service."""
    affine, translation = pair["affine"], pair["translation"]
    if affine["found"]:
        matrix = homogeneous(affine["matrix"])
        deformed = affine.get("deformed", False)  # results cached before the flag have none
        reason = deformation("affine", affine) if deformed else None
        if not translation["found"]:
            return Choice("affine", matrix, False, reason, None, deformed)
        shift = homogeneous(translation["matrix"])
        departure = max_corner_distance(matrix, shift, pair["size2"])
        if departure < NEGLIGIBLE_PX:  # the two agree: the simpler model, judged by the better one
            return Choice("translation", shift, False, reason, departure, deformed)
        return Choice("affine", matrix, False, reason, departure, deformed)
    summary = f"affine not found ({affine['inliers']} inliers of {pair['candidates']} candidates)"
    if translation["found"]:
        deformed = translation.get("deformed", False)
        reason = f"{summary}; translation used" + (f"; {deformation('translation', translation)}" if deformed else "")
        return Choice("translation", homogeneous(translation["matrix"]), True, reason, None, deformed)
    return Choice("identity", np.eye(3), True, f"{summary}, translation not found; identity used", None)


def max_corner_distance(first: np.ndarray, second: np.ndarray, size: list[int]) -> float:
    """Largest distance between where two transforms put the corners of a ``size`` (w, h) slice."""
    corners = slice_corners(size)
    return float(np.hypot(*(apply(first, corners) - apply(second, corners)).T).max())


def compose(minz: int, maxz: int, pair_matrices: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Slice → first-slice frame: T(minz) = I, T(z+1) = T(z) · P(z) with P(z) mapping z+1 into z."""
    transforms = {minz: np.eye(3)}
    for z in range(minz, maxz):
        transforms[z + 1] = transforms[z] @ pair_matrices[z]
    return transforms


def frame(transforms: dict[int, np.ndarray], sizes: dict[int, list[int]]) -> tuple[dict[int, np.ndarray], int, int]:
    """Shift every transform by one integer offset so the union of slices starts at pixel (0, 0).

    The shift is integral so a slice whose transform is a whole-pixel translation (the first slice,
    every slice with skip_align) is copied without resampling. Returns (transforms, width, height).
    """
    edges = np.concatenate([apply(transforms[z], slice_corners(sizes[z])) for z in transforms])
    low, high = edges.min(axis=0), edges.max(axis=0)
    shift = -np.floor(low + 0.5 + EDGE_TOLERANCE)
    offset = np.eye(3)
    offset[:2, 2] = shift
    width, height = (math.ceil(v) for v in high + shift + 0.5 - EDGE_TOLERANCE)
    return {z: offset @ t for z, t in transforms.items()}, int(width), int(height)


def slice_corners(size: list[int]) -> np.ndarray:
    width, height = size
    return np.array([[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]])


def homogeneous(matrix) -> np.ndarray:
    return np.vstack([np.asarray(matrix, float), [0.0, 0.0, 1.0]])
