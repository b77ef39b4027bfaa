"""Bad and missing slices: which slices the alignment chain skips and the output replaces.

A replaced slice's output is a copy of its nearest good neighbour (the lower one on a tie), and the
chain registers the good slices on either side of a run of replaced slices to each other directly
(a "bridge", the align.bridge stage). Three kinds of evidence, in the conf's terms:

  * missing: the slice file does not exist (``missing_slices: "replace"``; "fail" refuses the run);
  * before alignment (``bad_slices: "replace"``), from ``measure`` of each slice against the median of
    its present neighbours within NEIGHBOURS slices: blank or near-constant (raw standard deviation
    under BLANK_STD grey levels, or under LOW_CONTRAST × its neighbours'), saturated (more than
    MAX_SATURATED of its pixels at the format's maximum, and SATURATED_OVER × its neighbours' share),
    out of focus or featureless (the variance of the Laplacian of the 8-bit image features see under
    LOW_FOCUS × its neighbours');
  * after matching (``"replace"``): a slice whose pairs with both neighbours fall back (a "suspect",
    in a run of at most MAX_SUSPECT_RUN such slices) is replaced when the slices on either side of it
    (or of its run) register to each other.
An explicit list of z in ``bad_slices`` replaces exactly those (no detection); ``"keep"`` none.

The decisions are pure functions of the align.pairs and align.bridge results, so align.bridge's plan
and align.collect reach the same ones.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

import cv2
import numpy as np

from emprocess import storage
from emprocess.errors import InputError

NEIGHBOURS = 4  # slices on either side a slice's measures are compared with
BLANK_STD = 0.5  # raw grey levels: a slice with less is constant
LOW_CONTRAST = 0.1  # a slice whose standard deviation is under this share of its neighbours' is blank
MAX_SATURATED = 0.5  # share of pixels at the format's maximum beyond which a slice is saturated,
SATURATED_OVER = 1.5  # ... and beyond this many times its neighbours' share
LOW_FOCUS = 0.2  # a slice whose focus measure is under this share of its neighbours' is out of focus
MAX_SUSPECT_RUN = 2  # longest run of slices replaced only because they register to neither neighbour
SAMPLE_PIXELS = 1 << 20  # pixels the raw statistics are taken over (a regular subsample)
DECIMALS = 4
FOCUS_BAND_ROWS = 512  # the Laplacian is taken a band of rows at a time: a 20k² slice's whole is 1.6 GB
MISSING = "missing file"
LISTED = "listed in the conf's bad_slices"
UNREGISTERED = "registers to neither neighbour, while slices {first} and {last} register to each other"


def measure(image: np.ndarray, prepared: np.ndarray) -> dict:
    """A slice's measures: ``std`` (raw grey levels), ``saturated`` (share at the format's maximum) and
    ``focus`` (variance of the Laplacian of ``prepared``, the 8-bit image features are found on)."""
    step = max(1, math.isqrt(image.size // SAMPLE_PIXELS))
    sample = image[::step, ::step]
    return {
        "std": round(float(sample.std()), DECIMALS),
        "saturated": round(float(np.mean(sample == np.iinfo(image.dtype).max)), DECIMALS),
        "focus": round(laplacian_variance(prepared), DECIMALS),
    }


def laplacian_variance(image: np.ndarray) -> float:
    """The variance of ``image``'s Laplacian (OpenCV's, borders reflected), a band of rows at a time
    with one row of context each side, so it never holds a full-size float copy; sums in float64."""
    total, squares = 0.0, 0.0
    for top in range(0, image.shape[0], FOCUS_BAND_ROWS):
        start, stop = max(top - 1, 0), min(top + FOCUS_BAND_ROWS + 1, image.shape[0])
        band = cv2.Laplacian(image[start:stop], cv2.CV_32F)[top - start:top - start + FOCUS_BAND_ROWS]
        total += float(band.sum(dtype=np.float64))
        squares += float(np.square(band, dtype=np.float64).sum())
    mean = total / image.size
    return squares / image.size - mean * mean


def missing_slices(conf) -> list[int]:
    """The conf's slices whose file does not exist; none looked for under ``missing_slices: "fail"``
    (validation has refused such a run). One listing per folder holding slices."""
    if conf.missing_slices == "fail":
        return []
    urls = {z: conf.slice_url(z) for z in conf.z_range}
    folders: dict[str, set[str]] = {}
    missing = []
    for z, url in urls.items():
        folder, name = url.rsplit("/", 1)
        if folder not in folders:
            folders[folder] = set(storage.listdir(folder))
        if name not in folders[folder]:
            missing.append(z)
    return missing


def detected(measures: dict[int, dict], missing: Iterable[int], bad_slices) -> dict[int, str]:
    """The slices replaced before any matching, with the reason: missing files, then by ``bad_slices``
    ("replace": the measures; a list: those z; "keep": none)."""
    reasons = {z: MISSING for z in missing}
    if isinstance(bad_slices, list):
        return reasons | {z: LISTED for z in bad_slices if z not in reasons}
    if bad_slices == "keep":
        return reasons
    present = sorted(measures)
    for index, z in enumerate(present):
        around = [measures[n] for n in present[max(0, index - NEIGHBOURS) : index + NEIGHBOURS + 1]
                  if n != z and abs(n - z) <= NEIGHBOURS]
        reason = _measured(measures[z], around)
        if reason is not None:
            reasons[z] = reason
    return dict(sorted(reasons.items()))


def _measured(own: dict, around: list[dict]) -> str | None:
    if own["std"] < BLANK_STD:
        return f"blank (standard deviation {own['std']:g} grey levels)"
    saturated = statistics.median(m["saturated"] for m in around) if around else 0.0
    if own["saturated"] > max(MAX_SATURATED, SATURATED_OVER * saturated):  # bright resin everywhere is no fault
        return f"saturated ({own['saturated']:.0%} of its pixels at the maximum)"
    if len(around) < 2:
        return None
    std = statistics.median(m["std"] for m in around)
    if own["std"] < LOW_CONTRAST * std:
        return f"near-constant (standard deviation {own['std']:g} grey levels, its neighbours' {std:g})"
    focus = statistics.median(m["focus"] for m in around)
    if own["focus"] < LOW_FOCUS * focus:
        return f"out of focus or featureless (focus measure {own['focus']:g}, its neighbours' {focus:g})"
    return None


def runs(zs: Iterable[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive z as (first, last)."""
    found: list[tuple[int, int]] = []
    for z in sorted(set(zs)):
        if found and found[-1][1] == z - 1:
            found[-1] = (found[-1][0], z)
        else:
            found.append((z, z))
    return found


def bridges(bad: Iterable[int], minz: int, maxz: int) -> list[tuple[int, int]]:
    """(good slice before, good slice after) of every run of ``bad`` slices inside the stack."""
    return [(first - 1, last + 1) for first, last in runs(bad) if first > minz and last < maxz]


def suspects(fallbacks: Iterable[int], known: Iterable[int], minz: int, maxz: int) -> list[int]:
    """Slices not in ``known`` inside the stack whose pairs on both sides fell back (``fallbacks``:
    first slices of such pairs), in runs of at most MAX_SUSPECT_RUN: longer runs are the stack's own
    trouble (sections too far apart to register), not single bad slices."""
    failed, known = set(fallbacks), set(known)
    single = [z for z in range(minz + 1, maxz) if z not in known and z - 1 in failed and z in failed]
    return [z for first, last in runs(single) if last - first < MAX_SUSPECT_RUN for z in range(first, last + 1)]


def candidates(measures: dict[int, dict], fallbacks: Iterable[int], missing: Iterable[int], bad_slices,
               minz: int, maxz: int) -> tuple[dict[int, str], list[int]]:
    """The detected slices with their reasons (``detected``) and the suspects (``suspects``, looked
    for under ``bad_slices: "replace"`` only), from the align.pairs results' measures and fallbacks."""
    found = detected(measures, missing, bad_slices)
    return found, suspects(fallbacks, found, minz, maxz) if bad_slices == "replace" else []


def _trials(suspected: Iterable[int]) -> list[tuple[int, ...]]:
    """The groups of suspects that may be replaced together, smallest first: each alone, then each run."""
    suspected = sorted(suspected)
    runs_of = [tuple(range(a, b + 1)) for a, b in runs(suspected) if b > a]
    return [(z,) for z in suspected] + runs_of


def _span(group: tuple[int, ...], detected_bad: set[int], minz: int, maxz: int) -> tuple[int, int] | None:
    """The bridge a group of suspects needs: from the nearest slice below it that is not detected bad to
    the nearest above; None at the stack's ends."""
    low, high = group[0] - 1, group[-1] + 1
    while low in detected_bad:
        low -= 1
    while high in detected_bad:
        high += 1
    return (low, high) if minz <= low and high <= maxz else None


def candidate_bridges(detected_bad: Iterable[int], suspected: Iterable[int], minz: int, maxz: int) -> list[tuple[int, int]]:
    """Every bridge ``accepted`` may ask for: over the detected runs, over the runs each trial group of
    suspects (``_trials``) makes with them, and over the runs all of them make."""
    detected_bad, suspected = set(detected_bad), set(suspected)
    wanted = set(bridges(detected_bad, minz, maxz)) | set(bridges(detected_bad | suspected, minz, maxz))
    for group in _trials(suspected):
        wanted.update(bridges(detected_bad | set(group), minz, maxz))
    return sorted(wanted)


def accepted(detected_bad: dict[int, str], suspected: list[int], registered: dict[tuple[int, int], bool],
             minz: int, maxz: int) -> dict[int, str]:
    """The replaced slices with their reasons: the detected ones, and each suspect whose neighbours
    (the nearest slices not detected bad) register to each other (``registered``: planned bridge → its
    pair did not fall back); a run of suspects is tried as a whole only when none of it passes alone.
    A suspect stays when a bridge the chain then needs was not planned or did not register."""
    detected = set(detected_bad)
    bridged_by: dict[int, tuple[int, int]] = {}
    for group in _trials(suspected):
        span = _span(group, detected, minz, maxz)
        if span is not None and registered.get(span, False) and not bridged_by.keys() & set(group):
            bridged_by.update({z: span for z in group})
    while True:
        kept = set(bridged_by)
        failing = [span for span in bridges(detected | kept, minz, maxz)
                   if kept & set(range(*span)) and not registered.get(span, False)]
        if not failing:
            break
        for first, last in failing:
            for z in range(first, last):
                bridged_by.pop(z, None)
    reasons = dict(detected_bad)
    for z, (first, last) in bridged_by.items():
        reasons[z] = UNREGISTERED.format(first=first, last=last)
    return dict(sorted(reasons.items()))


def nearest_good(z: int, bad: Iterable[int], minz: int, maxz: int) -> int:
    """The good slice nearest ``z`` (the lower one on a tie)."""
    bad = set(bad)
    for distance in range(1, maxz - minz + 1):
        for candidate in (z - distance, z + distance):
            if minz <= candidate <= maxz and candidate not in bad:
                return candidate
    raise InputError(f"slices {minz}..{maxz}: every slice is bad or missing, none is left to align")
