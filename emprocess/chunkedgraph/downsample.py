"""Mode downsampling of label volumes (the most frequent label of each block; ties → the first)."""

from __future__ import annotations

import numpy as np


def downsample_mode(labels: np.ndarray, factors) -> np.ndarray:
    """``labels`` (x, y, z) reduced by ``factors`` (1 or 2 per axis); odd edges repeat their last voxel.

    Most blocks of a segmentation hold one label, so only the mixed ones are counted.
    """
    factors = tuple(int(f) for f in factors)
    pad = [(0, (-n) % f) for n, f in zip(labels.shape, factors)]
    if any(p for _, p in pad):
        labels = np.pad(labels, pad, mode="edge")
    out_shape = tuple(n // f for n, f in zip(labels.shape, factors))
    offsets = [(dx, dy, dz) for dx in range(factors[0]) for dy in range(factors[1]) for dz in range(factors[2])]
    blocks = np.stack([labels[dx :: factors[0], dy :: factors[1], dz :: factors[2]] for dx, dy, dz in offsets], axis=-1)
    blocks = blocks.reshape(-1, len(offsets))
    out = blocks[:, 0].copy()
    mixed = np.flatnonzero((blocks != blocks[:, :1]).any(axis=1))
    candidates = blocks[mixed]
    counts = np.zeros(candidates.shape, dtype=np.uint8)
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            equal = candidates[:, i] == candidates[:, j]
            counts[:, i] += equal
            counts[:, j] += equal
    out[mixed] = candidates[np.arange(mixed.size), counts.argmax(axis=1)]
    return out.reshape(out_shape)
