"""Pairwise registration of adjacent slices: FLANN matching, both models, retries.

Direction: every returned matrix maps a full-resolution pixel (x, y) of the SECOND image (img2,
slice z+1) to the corresponding pixel of the FIRST image (img1, slice z); pixel centres sit at
integer coordinates (OpenCV convention).

Matching is Lowe's ratio test (0.92, the reference job's) over approximate nearest neighbours
(FLANN k-d trees, seeded), so it stays near-linear in the feature count. When the affine model is
not found the pair is retried with more octave steps, then also a smaller initial sigma (the
reference job's retry ladder). Unlike the reference, a missing translation alone does not trigger a
retry: with the affine found it only means the pair is rotated or scaled beyond 25 px at the slice's
extent, which more features cannot change, and retrying would triple such pairs' cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from emprocess.align.bad import measure
from emprocess.align.features import Features, SiftParams, extract, parallel_threads, prepare
from emprocess.align.images import read_image
from emprocess.align.models import MAX_EPSILON, ModelFit, fit_affine, fit_translation

RATIO = 0.92
FLANN_TREES = 4
FLANN_CHECKS = 32
QUERY_CHUNK = 4_096
ATTEMPTS = (
    SiftParams(),
    SiftParams(octave_layers=6),
    SiftParams(octave_layers=6, sigma=1.2),
)


@dataclass(frozen=True)
class Slice:
    """One slice ready for registration: its size, prepared image (kept for retries), features, and
    the measures bad slices are found by (``bad.measure``)."""

    url: str
    size: tuple[int, int]
    prepared: np.ndarray
    features: Features
    measures: dict


@dataclass(frozen=True)
class Attempt:
    """Both models fitted with one SIFT parameter set; the best-ranked attempt is reported."""

    number: int
    features: tuple[Features, Features]
    candidates: int
    affine: ModelFit
    translation: ModelFit

    @property
    def rank(self) -> tuple:
        return (self.affine.found, self.translation.found, self.affine.inliers)


def load_slice(url: str, downsample: int) -> Slice:
    """Read, prepare and describe a slice with the first parameter set (the original is dropped)."""
    image = read_image(url)
    size = (image.shape[1], image.shape[0])
    prepared = prepare(image, downsample)
    measures = measure(image, prepared)
    del image
    return Slice(url, size, prepared, extract(prepared, size, ATTEMPTS[0]), measures)


def match(first: Features, second: Features) -> tuple[np.ndarray, np.ndarray]:
    """Ratio-test candidates as (points in second, points in first), each N×2."""
    if len(first) < 2 or len(second) == 0:
        return np.empty((0, 2)), np.empty((0, 2))
    cv2.setRNGSeed(0)  # FLANN's randomised trees draw from OpenCV's RNG
    index = cv2.flann_Index(first.descriptors.astype(np.float32), {"algorithm": 1, "trees": FLANN_TREES})
    queries = np.array_split(second.descriptors.astype(np.float32), max(1, len(second) // QUERY_CHUNK))
    with ThreadPoolExecutor(parallel_threads()) as pool:  # searches share the read-only index
        found = list(pool.map(lambda q: index.knnSearch(q, 2, params={"checks": FLANN_CHECKS}), queries))
    nearest = np.concatenate([n for n, _ in found])
    squared = np.concatenate([d for _, d in found])  # squared L2 distances
    passed = np.flatnonzero(squared[:, 0] < RATIO**2 * squared[:, 1])
    return second.points[passed], first.points[nearest[passed, 0]]


def register(first: Slice, second: Slice) -> dict:
    """Register ``second`` onto ``first``; the JSON result the alignment service returns."""
    # the reference thresholds are in pixels of the image features are found on
    epsilon = MAX_EPSILON * max(first.size[0] / first.prepared.shape[1], second.size[0] / second.prepared.shape[1])
    best, tried = None, 0
    for number, params in enumerate(ATTEMPTS, start=1):
        tried = number
        if number == 1:
            features = (first.features, second.features)
        else:
            features = (extract(first.prepared, first.size, params), extract(second.prepared, second.size, params))
        src, dst = match(*features)
        attempt = Attempt(number, features, len(src), fit_affine(src, dst, epsilon), fit_translation(src, dst, epsilon))
        if best is None or attempt.rank > best.rank:
            best = attempt
        if attempt.affine.found:
            break
    return {
        "measures1": first.measures,
        "measures2": second.measures,
        "size1": list(first.size),
        "size2": list(second.size),
        "features1": len(best.features[0]),
        "features2": len(best.features[1]),
        "candidates": best.candidates,
        "attempts": tried,  # parameter sets tried
        "attempt": best.number,  # the one reported (the best: affine found, translation found, inliers)
        "affine": best.affine.to_json(),
        "translation": best.translation.to_json(),
    }


def register_run(urls: list[str], downsample: int) -> Iterator[dict]:
    """Results for the pairs (urls[i], urls[i+1]); each slice is read and described once."""
    previous = load_slice(urls[0], downsample)
    for url in urls[1:]:
        current = load_slice(url, downsample)
        yield register(previous, current)
        previous = current
