"""Test volumes and the image measure the pyramid tests share."""

from __future__ import annotations

import cv2
import numpy as np


def smooth(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Blurred uniform noise as uint8, a smooth EM-like texture of ``shape`` (z, y, x)."""
    noise = np.random.default_rng(seed).random(shape).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(plane, (0, 0), 2) for plane in noise])
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
