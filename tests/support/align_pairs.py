"""align.pairs results written by hand (the schema the stage returns), for the tests of what reads them."""

from __future__ import annotations

import math

SIZE = [400, 300]


def rotation(degrees: float, tx: float = 0.0, ty: float = 0.0) -> list[list[float]]:
    a = math.radians(degrees)
    return [[math.cos(a), -math.sin(a), tx], [math.sin(a), math.cos(a), ty]]


def translation(tx: float, ty: float) -> list[list[float]]:
    return [[1.0, 0.0, tx], [0.0, 1.0, ty]]


def model(matrix=None, inliers: int = 500) -> dict:
    if matrix is None:
        return {"found": False, "matrix": None, "inliers": 7, "residual_px": 14.0}
    return {"found": True, "matrix": matrix, "inliers": inliers, "residual_px": 0.3}


GOOD = {"std": 40.0, "saturated": 0.0, "focus": 500.0}  # a slice's measures (emprocess.align.bad.measure)


def pair(z: int, affine=None, shift=None, size1=SIZE, size2=SIZE, measures1=GOOD, measures2=GOOD) -> dict:
    return {"z": z, "measures1": dict(measures1), "measures2": dict(measures2), "size1": list(size1),
            "size2": list(size2), "features1": 900, "features2": 880, "candidates": 700, "attempts": 1, "attempt": 1,
            "affine": model(affine), "translation": model(shift)}
