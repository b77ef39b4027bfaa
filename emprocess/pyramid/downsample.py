"""2×2×2 mean downsampling of uint8 (z, y, x) arrays, by tinybrain (as igneous downsamples).

Sizes round up; a voxel at an odd far edge is the mean of the input voxels its footprint actually
covers (4, 2 or 1 instead of 8), so edges are not darkened by padding. Means round down. Blocks
start at even coordinates at every block scale, so downsampling a block on its own gives the same
voxels as downsampling the whole volume.
"""

from __future__ import annotations

import numpy as np
import tinybrain


def mean2(volume: np.ndarray) -> np.ndarray:
    """The 2×2×2 mean of a uint8 (z, y, x) array, rounded down, sizes rounded up."""
    if volume.dtype != np.uint8 or volume.ndim != 3:
        raise ValueError(f"expected a 3-D uint8 array, got {volume.ndim}-D {volume.dtype}")
    # tinybrain refuses an axis of one voxel; doubling it leaves every mean as it was.
    for axis in np.flatnonzero(np.array(volume.shape) == 1):
        volume = np.repeat(volume, 2, axis=axis)
    # tinybrain works on Fortran-ordered (x, y, z) arrays: the same memory as C-ordered (z, y, x).
    return tinybrain.downsample_with_averaging(volume.T, (2, 2, 2))[0].T
