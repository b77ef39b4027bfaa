"""2×2×2 mean downsampling: exact means, odd edges, and block-wise equals whole-volume."""

from __future__ import annotations

import numpy as np
import pytest

from emprocess.pyramid.downsample import mean2


def reference_mean2(volume: np.ndarray) -> np.ndarray:
    """Voxel by voxel: the rounded-down mean of the inputs inside each 2×2×2 footprint."""
    out = np.zeros(tuple((n + 1) // 2 for n in volume.shape), np.uint8)
    for z, y, x in np.ndindex(out.shape):
        cell = volume[2 * z:2 * z + 2, 2 * y:2 * y + 2, 2 * x:2 * x + 2].astype(np.int64)
        out[z, y, x] = cell.sum() // cell.size
    return out


@pytest.mark.parametrize("shape", [(4, 6, 8), (5, 7, 9), (1, 1, 1), (1, 3, 2), (3, 1, 5), (2, 9, 1)])
def test_matches_the_voxel_by_voxel_mean(shape):
    volume = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(mean2(volume), reference_mean2(volume))


def test_rounds_down_and_keeps_constants():
    volume = np.zeros((2, 2, 2), np.uint8)
    volume[1] = 1
    volume[0, 0, 0] = 3  # mean 7/8
    assert mean2(volume)[0, 0, 0] == 0
    assert np.all(mean2(np.full((7, 5, 3), 200, np.uint8)) == 200)
    assert np.all(mean2(np.full((2, 2, 2), 255, np.uint8)) == 255)


def test_odd_edges_average_only_voxels_inside():
    volume = np.full((3, 3, 3), 10, np.uint8)
    volume[2] = 250  # the last z-plane is alone in its footprint
    out = mean2(volume)
    assert out.shape == (2, 2, 2)
    assert np.all(out[1] == 250) and np.all(out[0] == 10)


def test_blocks_downsampled_apart_equal_the_whole():
    volume = np.random.default_rng(7).integers(0, 256, (37, 50, 77), dtype=np.uint8)
    whole = mean2(volume)
    parts = np.concatenate([mean2(volume[:16]), mean2(volume[16:32]), mean2(volume[32:])], axis=0)
    assert np.array_equal(parts, whole)


def test_rejects_other_types():
    with pytest.raises(ValueError, match="uint8"):
        mean2(np.zeros((2, 2, 2), np.uint16))
    with pytest.raises(ValueError, match="3-D"):
        mean2(np.zeros((2, 2), np.uint8))
