"""The 16-bit → 8-bit rule, one per stack, so every slice of a 16-bit stack gets the same contrast.

Rule: take the nonzero pixels of up to ``SAMPLE_SLICES`` evenly spaced slices (every 4th pixel per
axis), find their 0.1 and 99.9 percentiles ``low`` and ``high`` (the smallest values whose cumulative
count reaches that share of the pixels, from a 65536-bin histogram), and map a pixel ``v`` to 0 when it
is 0 (outside the imaged area), else to ``round(1 + 254·(v − low)/(high − low))`` clipped to 1..255.
The values are stored in ``<process>/align/intensity.json`` by the one-task ``align.intensity`` stage,
which runs after align.collect and before align.warp, so the sample is read once per stack and every
warp task of a 16-bit slice only reads the stored rule. A stack whose sampled slices are all 8-bit
needs no rule: their headers say so, no pixel is read and no file written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable

import numpy as np
from pydantic import Field

from emprocess import storage
from emprocess.align.images import read_header, read_image
from emprocess.payloads import Location, Payload
from emprocess.stages import InputError, Result

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


class IntensityPayload(Payload):
    """Measure the stack's rule on the slices ``sample`` and store it at ``url``."""

    url: Location
    sample: Annotated[list[Location], Field(min_length=1, max_length=SAMPLE_SLICES)]


class RuleResult(Result):
    """A stack's 16-bit → 8-bit rule: ``low``..``high`` → 1..255."""

    low: int
    high: int


class IntensityResult(Result):
    """The stack's rule (None for an 8-bit sample) and the files written: the rule's, or none."""

    intensity: RuleResult | None
    files: list[str]


def write_stack_rule(payload: IntensityPayload) -> IntensityResult:
    """Measure the rule on the sample's 16-bit slices and store it; an 8-bit sample needs none."""
    sixteen_bit = [url for url in payload.sample if read_header(url).bits == 16]
    if not sixteen_bit:
        return IntensityResult(intensity=None, files=[])
    rule = measure(sixteen_bit, read_image)
    storage.write_json(payload.url, document(rule, payload.sample))
    return IntensityResult(intensity=RuleResult(low=rule.low, high=rule.high), files=[payload.url])


def stored_rule(url: str, z: int) -> Intensity:
    """The rule align.intensity stored; an InputError when slice ``z`` is 16-bit and there is none."""
    doc = storage.read_json_if_exists(url)
    if doc is None:
        raise InputError(f"slice {z} is 16-bit, but {url} holds no intensity rule "
                         "(align.intensity writes it when a sampled slice is 16-bit)")
    return Intensity(int(doc["low"]), int(doc["high"]))
