"""One slice into the aligned frame: affine (or elastic) warp, CLAHE, thumbnail (pure image functions).

The warp is bicubic with zero fill and runs in bands of output rows, so OpenCV never needs more than
the source and the output (a 20k×20k slice stays well inside 4 GB). CLAHE runs once on the whole
slice (its tiles are interpolated, so there are no band seams). Pixels that are zero after the warp
(outside the slice, or black in it) stay zero after CLAHE.
"""

from __future__ import annotations

import cv2
import numpy as np

from emprocess.align.maps import dense

BAND_ROWS = 1024
ELASTIC_BAND_ROWS = 256
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


def warp_elastic(image: np.ndarray, matrix: np.ndarray, displacement: np.ndarray, stride: int, width: int,
                 height: int) -> np.ndarray:
    """``warp`` followed by an elastic map: output pixel g shows the source at matrix⁻¹·(g + u(g)), u the
    (ny, nx, 2) ``displacement`` grid (point (i, j) at output pixel (j·stride, i·stride)) interpolated
    as ``maps.dense`` does. In bands of ELASTIC_BAND_ROWS rows: the per-pixel maps are 24 bytes a pixel."""
    back = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    out = np.empty((height, width), np.uint8)
    xs = np.arange(width, dtype=np.float32)
    for r0 in range(0, height, ELASTIC_BAND_ROWS):
        r1 = min(r0 + ELASTIC_BAND_ROWS, height)
        ys = np.arange(r0, r1, dtype=np.float32)[:, None]
        u = dense(displacement, 0.0, stride, xs, ys[:, 0])
        px, py = xs + u[..., 0], ys + u[..., 1]
        map_x = (back[0, 0] * px + back[0, 1] * py + back[0, 2]).astype(np.float32)
        map_y = (back[1, 0] * px + back[1, 1] * py + back[1, 2]).astype(np.float32)
        cv2.remap(image, map_x, map_y, cv2.INTER_CUBIC, dst=out[r0:r1], borderMode=cv2.BORDER_CONSTANT,
                  borderValue=0)
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
