"""SIFT features of one slice, found tile by tile so memory stays bounded on 20k×20k slices.

The slice is downsampled (area average) and stretched to 8 bits (SIFT needs 8-bit input; 16-bit
EM often uses a narrow band of its range), then cut into tiles of about TILE² pixels with MARGIN
pixels of context each. Tiles bound SIFT's float pyramid (it doubles the image first: ~300 MB for a
1024² tile, ~30 GB for a whole 20k² slice) and are described on parallel threads; each keeps its
strongest keypoints up to a cap, so a slice holds at most MAX_FEATURES features however large it is,
which keeps matching near-linear. Keypoints are returned in full-resolution pixel coordinates
(OpenCV convention: pixel centres at integers).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from emprocess.cpus import usable_cpus

TILE = 1024
MARGIN = 32
MAX_FEATURES = 200_000
MAX_PER_TILE = 5_000
MAX_THREADS = 4
STRETCH_PERCENTILES = (0.5, 99.5)
STRETCH_SAMPLE_PIXELS = 4_000_000
STRETCH_BAND_ROWS = 512


@dataclass(frozen=True)
class SiftParams:
    """One SIFT parameter set; registration retries with more octave steps, then a smaller sigma."""

    octave_layers: int = 3
    sigma: float = 1.6
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0


@dataclass(frozen=True)
class Features:
    """Keypoint positions (N×2 float64, full-resolution x, y) and their SIFT descriptors (N×128 uint8)."""

    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


def prepare(image: np.ndarray, downsample: int) -> np.ndarray:
    """The 8-bit, downsampled image features are found on."""
    if downsample > 1:
        height, width = image.shape
        size = (max(1, round(width / downsample)), max(1, round(height / downsample)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return stretch_to_uint8(image)


def stretch_to_uint8(image: np.ndarray) -> np.ndarray:
    """Map the 0.5–99.5 percentile band of intensities onto 0..255; zero pixels (padding, the
    outside of a warped slice) are left out of the percentiles, and a blank image becomes zeros."""
    step = max(1, math.isqrt(image.size // STRETCH_SAMPLE_PIXELS))
    sample = image[::step, ::step]
    sample = sample[sample > 0]
    if sample.size == 0:
        return np.zeros(image.shape, np.uint8)
    low, high = np.percentile(sample, STRETCH_PERCENTILES)
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    levels = np.arange(np.iinfo(image.dtype).max + 1, dtype=np.float64)
    table = np.clip(np.rint((levels - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
    out = np.empty(image.shape, np.uint8)
    for r0 in range(0, image.shape[0], STRETCH_BAND_ROWS):  # bands bound the index temporaries
        out[r0 : r0 + STRETCH_BAND_ROWS] = table[image[r0 : r0 + STRETCH_BAND_ROWS]]
    return out


def extract(prepared: np.ndarray, full_size: tuple[int, int], params: SiftParams) -> Features:
    """Features of a ``prepare``d image whose original size is ``full_size`` (width, height)."""
    height, width = prepared.shape
    tiles = [(x, y, x1, y1) for x, x1 in _spans(width) for y, y1 in _spans(height)]
    cap = min(MAX_PER_TILE, MAX_FEATURES // len(tiles))
    with ThreadPoolExecutor(parallel_threads()) as pool:  # OpenCV releases the GIL; order is kept
        found = [f for f in pool.map(lambda tile: _tile_features(prepared, tile, cap, params), tiles) if f]
    if not found:
        return Features(np.empty((0, 2)), np.empty((0, 128), np.uint8))
    scale = (full_size[0] / width, full_size[1] / height)
    # downsampled pixel i covers full-resolution pixels [i*s, (i+1)*s): its centre is (i+0.5)*s-0.5
    full = (np.concatenate([points for points, _ in found]) + 0.5) * scale - 0.5
    return Features(full, np.concatenate([descriptors for _, descriptors in found]))


def parallel_threads() -> int:
    """Threads for tiles (and match queries): one per core, at most MAX_THREADS, since each tile
    being described holds ~300 MB of pyramid."""
    return min(MAX_THREADS, usable_cpus())


def _tile_features(prepared: np.ndarray, tile: tuple[int, int, int, int], cap: int, params: SiftParams):
    """(points, descriptors) of one tile's core, found with MARGIN pixels of context; None if empty.

    SIFT keeps the ``cap`` strongest keypoints of the padded tile, then the mask drops those in the
    margin before descriptors are computed: one scale-space pyramid per tile.
    """
    x, y, x1, y1 = tile
    height, width = prepared.shape
    x0, y0 = max(0, x - MARGIN), max(0, y - MARGIN)
    padded = prepared[y0 : min(height, y1 + MARGIN), x0 : min(width, x1 + MARGIN)]
    core = np.zeros(padded.shape, np.uint8)
    core[y - y0 : y1 - y0, x - x0 : x1 - x0] = 1
    sift = cv2.SIFT_create(cap, params.octave_layers, params.contrast_threshold, params.edge_threshold,
                           params.sigma, cv2.CV_8U, True)
    keypoints, descriptors = sift.detectAndCompute(padded, core)
    if descriptors is None or not keypoints:
        return None
    return np.array([k.pt for k in keypoints], np.float64) + (x0, y0), descriptors


def _spans(length: int) -> list[tuple[int, int]]:
    """Near-equal tile spans of about TILE pixels (between 2/3 and 3/2 of it) covering ``length``."""
    count = max(1, round(length / TILE))
    edges = [round(i * length / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))
