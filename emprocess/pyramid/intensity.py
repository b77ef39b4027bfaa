"""The 16-bit → 8-bit rule, one per stack, so every slice of a 16-bit stack gets the same contrast.

Rule: take the nonzero pixels of up to ``SAMPLE_SLICES`` evenly spaced slices (every 4th pixel per
axis), find their 0.1 and 99.9 percentiles ``low`` and ``high`` (the smallest values whose cumulative
count reaches that share of the pixels, from a 65536-bin histogram), and map a pixel ``v`` to 0 when it
is 0 (outside the imaged area), else to ``round(1 + 254·(v − low)/(high − low))`` clipped to 1..255.
The values are stored in ``<process>/align/intensity.json``. The computation depends only on the
sample, so a warp task that finds no stored rule computes the same values; only the task of the first
sample slice writes the file, so no two tasks ever write it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from emprocess import storage
from emprocess.stages import InputError

PERCENTILES = (0.1, 99.9)
SAMPLE_SLICES = 5
SAMPLE_STEP = 4
BAND_ROWS = 1024  # fancy indexing makes an 8-byte index per pixel: convert in bands


@dataclass(frozen=True)
class Intensity:
    """The linear 16-bit → 8-bit map ``low..high`` → ``1..255``; zero stays zero."""

    low: int
    high: int

    def lut(self) -> np.ndarray:
        values = np.arange(65536, dtype=np.float64)
        mapped = np.clip(np.rint(1 + 254 * (values - self.low) / (self.high - self.low)), 1, 255)
        mapped[0] = 0
        return mapped.astype(np.uint8)

    def apply(self, image: np.ndarray) -> np.ndarray:
        lut = self.lut()
        out = np.empty(image.shape, np.uint8)
        for r0 in range(0, image.shape[0], BAND_ROWS):
            out[r0:r0 + BAND_ROWS] = lut[image[r0:r0 + BAND_ROWS]]
        return out


def sample_slices(minz: int, maxz: int) -> list[int]:
    """Up to ``SAMPLE_SLICES`` evenly spaced slices, ends included."""
    n = maxz - minz + 1
    count = min(SAMPLE_SLICES, n)
    if count == 1:
        return [minz]
    return sorted({minz + round(i * (n - 1) / (count - 1)) for i in range(count)})


def measure(sample: list[str], read_image: Callable[[str], np.ndarray]) -> Intensity:
    """The rule from the 16-bit slices of a sample, read one at a time (8-bit ones are skipped)."""
    counts = np.zeros(65536, np.int64)
    for url in sample:
        image = read_image(url)
        if image.dtype == np.uint16:
            counts += np.bincount(image[::SAMPLE_STEP, ::SAMPLE_STEP].ravel(), minlength=65536)
        del image
    counts[0] = 0
    cumulative = np.cumsum(counts)
    if cumulative[-1] == 0:
        raise InputError(f"no nonzero 16-bit pixels in the intensity sample {sample}")
    low, high = (int(np.searchsorted(cumulative, p / 100 * cumulative[-1])) for p in PERCENTILES)
    return Intensity(low, max(high, low + 1))


def document(rule: Intensity, sample: list[str]) -> dict:
    return {
        "rule": "v=0 -> 0; else round(1 + 254*(v-low)/(high-low)) clipped to 1..255",
        "percentiles": list(PERCENTILES),
        "low": rule.low,
        "high": rule.high,
        "sample": sample,
        "sample_step": SAMPLE_STEP,
    }


def stack_rule(url: str, sample: list[str], read_image: Callable[[str], np.ndarray], write: bool) -> Intensity:
    """The stored rule when it was made from this sample; otherwise measure it (and store it if ``write``)."""
    doc = None if write else storage.read_json_if_exists(url)
    if doc is not None and doc.get("sample") == sample and doc.get("sample_step") == SAMPLE_STEP:
        return Intensity(int(doc["low"]), int(doc["high"]))
    rule = measure(sample, read_image)
    if write:
        storage.write_json(url, document(rule, sample))
    return rule
