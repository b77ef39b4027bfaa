"""One slice into the aligned frame: affine warp, CLAHE, thumbnail (pure image functions).

The warp is bicubic with zero fill and runs in bands of output rows, so OpenCV never needs more than
the source and the output (a 20k×20k slice stays well inside 4 GB). CLAHE runs once on the whole
slice (its tiles are interpolated, so there are no band seams). Pixels that are zero after the warp
(outside the slice, or black in it) stay zero after CLAHE.
"""

from __future__ import annotations

import cv2
import numpy as np

BAND_ROWS = 1024
CLAHE_TILES = (8, 8)  # skimage's default kernel (1/8 of each side), whose clip-limit convention the conf uses
THUMBNAIL_SIDE = 2048


def warp(image: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (uint8) mapped by ``matrix`` (2×3, source pixel → aligned pixel) into a width×height frame."""
    out = np.empty((height, width), np.uint8)
    for r0 in range(0, height, BAND_ROWS):
        r1 = min(r0 + BAND_ROWS, height)
        band = np.array(matrix, np.float64)
        band[1, 2] -= r0  # the band's rows start at r0
        cv2.warpAffine(image, band, (width, r1 - r0), dst=out[r0:r1], flags=cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def clahe(image: np.ndarray, clip_limit: float) -> np.ndarray:
    """Contrast-limited adaptive equalisation; ``clip_limit`` is the share of a tile's pixels one of the
    256 histogram bins may hold (skimage's convention, 0 disables), i.e. OpenCV's limit / 256."""
    if clip_limit <= 0:
        return image
    equaliser = cv2.createCLAHE(clipLimit=clip_limit * 256, tileGridSize=CLAHE_TILES)
    out = equaliser.apply(image)
    for r0 in range(0, image.shape[0], BAND_ROWS):
        band = slice(r0, r0 + BAND_ROWS)
        out[band][image[band] == 0] = 0
    return out


def thumbnail_png(image: np.ndarray) -> bytes:
    """A PNG whose long side is at most ``THUMBNAIL_SIDE`` pixels."""
    height, width = image.shape
    scale = min(1.0, THUMBNAIL_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding of the thumbnail failed")
    return data.tobytes()
