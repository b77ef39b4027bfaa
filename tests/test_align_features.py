"""Tiled SIFT features: intensity stretch, full-resolution coordinates at any downsample, the caps."""

from __future__ import annotations

import cv2
import numpy as np

from emprocess.align import features
from emprocess.align.features import SiftParams, extract, prepare, stretch_to_uint8


def blobs(size: int, centres: list[tuple[float, float]], sigma: float = 6.0) -> np.ndarray:
    """Dark Gaussian blobs on a bright background (SIFT finds one keypoint at each centre).

    The last four rows hold the extreme values 1 and 255, so the percentile stretch is the identity
    and does not flatten the blobs' cores."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    image = np.full((size, size), 200.0)
    for cx, cy in centres:
        image -= 150 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    image[-4:-2], image[-2:] = 1, 255
    return np.clip(image, 0, 255).astype(np.uint8)


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).random((height, width)).astype(np.float32)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 4), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def test_narrow_sixteen_bit_band_is_stretched_and_padding_ignored():
    image = np.zeros((100, 100), np.uint16)
    image[:, 20:] = np.linspace(30_000, 31_000, 80)  # the 20 columns of zeros are padding
    out = stretch_to_uint8(image)
    assert out.dtype == np.uint8
    assert out[:, 20:].min() <= 2 and out[:, 20:].max() >= 253
    assert (out[:, :20] == 0).all()


def test_blank_slice_becomes_zeros_and_has_no_features():
    blank = np.full((300, 300), 77, np.uint8)
    assert not stretch_to_uint8(blank).any()
    assert len(extract(prepare(blank, 1), (300, 300), SiftParams())) == 0


def test_keypoints_are_in_full_resolution_pixels_at_any_downsample():
    centres = [(100.0, 120.0), (300.0, 90.0), (220.0, 310.0)]
    image = blobs(400, centres)
    for downsample in (1, 2, 4):
        found = extract(prepare(image, downsample), (400, 400), SiftParams())
        for centre in centres:
            nearest = np.hypot(*(found.points - centre).T).min()
            assert nearest <= 0.25 * downsample, (downsample, centre, nearest)


def test_features_come_from_every_tile_and_respect_the_caps(monkeypatch):
    image = texture(500, 1600)  # two tiles across (800 px each), one down
    found = extract(prepare(image, 1), (1600, 500), SiftParams())
    assert (found.points[:, 0] < 800).sum() > 500 and (found.points[:, 0] >= 800).sum() > 500
    assert found.descriptors.shape == (len(found), 128) and found.descriptors.dtype == np.uint8
    monkeypatch.setattr(features, "MAX_FEATURES", 600)
    capped = extract(prepare(image, 1), (1600, 500), SiftParams())
    assert 500 <= len(capped) <= 600
    assert (capped.points[:, 0] < 800).sum() > 200 and (capped.points[:, 0] >= 800).sum() > 200


def test_extraction_is_deterministic():
    image = prepare(texture(400, 1600, seed=3), 1)
    first, second = extract(image, (1600, 400), SiftParams()), extract(image, (1600, 400), SiftParams())
    assert np.array_equal(first.points, second.points)
    assert np.array_equal(first.descriptors, second.descriptors)
