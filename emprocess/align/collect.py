"""The collect step: one transform per slice, written to ``<process>/align/``.

Outputs (``transforms.json`` is written last, so its presence means the others are complete):
  * ``transforms.json`` — {"minz", "maxz", "width", "height", "transforms": {"<z>": [[a, b, c], [d, e, f]]},
    "source_sizes": {"<z>": [w, h]}}; each matrix maps pixel (x, y) of the ORIGINAL slice z to its
    pixel in the aligned output frame (full resolution, pixel centres at integers, so
    ``cv2.warpAffine(slice, M, (width, height))`` renders the aligned slice); width × height is the
    bounding box of all transformed slices, which starts at (0, 0).
  * ``transforms.csv`` — the same matrices, one row per slice: z, a, b, c, d, e, f, source width, height.
  * ``pairs.json`` — {"minz", "maxz", "mode", "align_mode", "reused_from", "negligible_px", "fallbacks":
    [z ...], "deformed": [z ...], "worst_elastic": [z ...], "pairs": [{"z", "model", "fallback",
    "deformed", "reason", "departure_px", "candidates", "features", "attempts", "affine", "translation",
    "elastic"}]} with one entry per pair (z, z+1); every fallback and deformed pair is also logged as a
    warning on the ``emprocess.align`` logger.
  * elastic mode: ``maps.zarr`` (see ``emprocess.align.maps``), written before transforms.json, which
    then has an ``elastic`` entry naming it; each pair's ``elastic`` entry is what the maps leave of its
    flow (``maps.pair_quality``), and ``worst_elastic`` names the pairs that keep the most.

Modes: "pairwise" composes the align.pairs results (and, elastic, relaxes their flows); "skip_align" gives identity transforms (slice
sizes from image headers); "reused" takes another run's transforms.json (the reused frame is kept, so
re-exports of one dataset line up).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.align.compose import NEGLIGIBLE_PX, choose, compose, frame
from emprocess.align.images import image_size
from emprocess.align.maps import FLOW_KEYS, make_maps
from emprocess.payloads import MAX_TEXT, Axis, Index, Location, Payload
from emprocess.run_layout import PAIRS_FILE, TRANSFORMS_CSV
from emprocess.stages import InputError, Result

log = logging.getLogger("emprocess.align")
READ_THREADS = 16
WORST_SHOWN = 5  # pairs named as the worst the elastic maps leave


class CollectPayload(Payload):
    """Slices ``minz``..``maxz`` of ``source`` (named by the printf pattern ``image``), composed from
    the align.pairs results at ``pairs``, or identity transforms (``skip_align``), or the transforms
    of the run whose process location is ``reuse``; written under ``process``."""

    process: Location
    minz: Index
    maxz: Index
    source: Location
    image: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    skip_align: bool
    elastic: bool = False
    reuse: Location | None = None
    pairs: list[Location]

    @model_validator(mode="after")
    def _within_slices(self) -> "CollectPayload":
        if self.maxz < self.minz:
            raise ValueError(f"'maxz' {self.maxz} is below 'minz' {self.minz}")
        if len(self.pairs) > self.maxz - self.minz:
            raise ValueError(f"{len(self.pairs)} 'pairs' results for {self.maxz - self.minz} pairs")
        return self


class CollectResult(Result):
    """How the transforms were made, the aligned frame, the pairs that fell back or are deformed, and
    where the transforms are."""

    mode: str
    width: Axis
    height: Axis
    fallbacks: list[Index]
    deformed: list[Index]
    transforms: str


def collect(payload: CollectPayload) -> CollectResult:
    """Write the ALIGN outputs for slices minz..maxz; the result summarises them."""
    minz, maxz = payload.minz, payload.maxz
    if payload.reuse:
        transforms, pairs = _reused(payload.reuse, minz, maxz)
    elif payload.skip_align or minz == maxz:
        transforms, pairs = _identity(payload, minz, maxz)
    else:
        transforms, pairs = _pairwise(payload.pairs, minz, maxz, payload.process if payload.elastic else None)
    storage.write_json(storage.join(payload.process, PAIRS_FILE), pairs)
    storage.write(storage.join(payload.process, TRANSFORMS_CSV), _csv(transforms).encode())
    storage.write_json(transforms_url(payload.process), transforms)
    return CollectResult(mode=pairs["mode"], width=transforms["width"], height=transforms["height"],
                         fallbacks=pairs["fallbacks"], deformed=pairs["deformed"],
                         transforms=transforms_url(payload.process))


def _pairwise(result_urls: list[str], minz: int, maxz: int, elastic_process: str | None) -> tuple[dict, dict]:
    """Compose the pairs' models; with ``elastic_process``, also relax their flows into maps there."""
    results, documents = _pair_results(result_urls, minz, maxz)
    sizes = _sizes_from_pairs(results)
    choices = {z: choose(pair) for z, pair in results.items()}
    for z, choice in choices.items():
        if choice.fallback or choice.deformed:
            log.warning("pair %d→%d: %s", z, z + 1, choice.reason)
    fallbacks = [z for z, choice in choices.items() if choice.fallback]
    deformed = [z for z, choice in choices.items() if choice.deformed]
    log.info("composed %d pairs; %d fallbacks, %d deformed", len(choices), len(fallbacks), len(deformed))
    entries = [
        {
            "z": z,
            "model": choice.model,
            "fallback": choice.fallback,
            "deformed": choice.deformed,
            "reason": choice.reason,
            "departure_px": choice.departure_px,
            "candidates": results[z]["candidates"],
            "features": [results[z]["features1"], results[z]["features2"]],
            "attempts": results[z]["attempts"],
            "affine": results[z]["affine"],
            "translation": results[z]["translation"],
        }
        for z, choice in choices.items()
    ]
    matrices = {z: choice.matrix for z, choice in choices.items()}
    transforms = _transforms(minz, maxz, compose(minz, maxz, matrices), sizes)
    if elastic_process is None:
        return transforms, _pairs(minz, maxz, "pairwise", entries)
    transforms["elastic"], quality = make_maps(elastic_process, transforms, documents)
    for entry in entries:
        entry["elastic"] = quality[entry["z"]]
    worst = sorted((e for e in entries if e["elastic"]["residual_px"] is not None),
                   key=lambda e: -e["elastic"]["residual_px"])[:WORST_SHOWN]
    log.info("elastic maps: worst pairs %s", ", ".join(f"{e['z']}→{e['z'] + 1} {e['elastic']['residual_px']} px"
                                                       for e in worst))
    return transforms, _pairs(minz, maxz, "pairwise", entries, align_mode="elastic", worst=[e["z"] for e in worst])


def _identity(payload: CollectPayload, minz: int, maxz: int) -> tuple[dict, dict]:
    urls = [storage.join(payload.source, payload.image % z) for z in range(minz, maxz + 1)]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        sizes = dict(zip(range(minz, maxz + 1), (list(s) for s in pool.map(image_size, urls))))
    identity = compose(minz, maxz, {z: np.eye(3) for z in range(minz, maxz)})
    mode = "skip_align" if payload.skip_align else "pairwise"
    return _transforms(minz, maxz, identity, sizes), _pairs(minz, maxz, mode, [])


def _reused(process: str, minz: int, maxz: int) -> tuple[dict, dict]:
    url = transforms_url(process)
    reused = storage.read_json(url)
    if not (reused["minz"] <= minz and maxz <= reused["maxz"]):
        raise InputError(f"{url}: covers slices {reused['minz']}..{reused['maxz']}, this run needs {minz}..{maxz}")
    keep = [str(z) for z in range(minz, maxz + 1)]
    transforms = {
        "minz": minz,
        "maxz": maxz,
        "width": reused["width"],
        "height": reused["height"],
        "transforms": {z: reused["transforms"][z] for z in keep},
        "source_sizes": {z: reused["source_sizes"][z] for z in keep},
    }
    if "elastic" in reused:  # its maps stay where they are, indexed from their own first slice
        transforms["elastic"] = reused["elastic"]
    old_pairs = storage.read_json_if_exists(storage.join(process, PAIRS_FILE))
    entries = [] if old_pairs is None else old_pairs["pairs"]
    entries = [e for e in entries if minz <= e["z"] < maxz]
    return transforms, _pairs(minz, maxz, "reused", entries, reused_from=process,
                              align_mode="elastic" if "elastic" in reused else "affine")


def _pair_results(urls: list[str], minz: int, maxz: int) -> tuple[dict[int, dict], dict[int, str]]:
    """Every align.pairs result by its first slice, without its flows (read again when relaxed), and
    the result document it came from; each pair must be present exactly once."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        documents = list(pool.map(storage.read_json, urls))
    results: dict[int, dict] = {}
    where: dict[int, str] = {}
    for url, document in zip(urls, documents):
        for pair in document["pairs"]:
            if pair["z"] in results:
                raise InputError(f"{url}: pair {pair['z']}→{pair['z'] + 1} appears in two align.pairs results")
            results[pair["z"]] = {key: value for key, value in pair.items() if key not in FLOW_KEYS}
            where[pair["z"]] = url
    missing = [z for z in range(minz, maxz) if z not in results]
    if missing:
        raise InputError(f"no align.pairs result for pairs starting at z={missing[:10]} (results read: {len(urls)})")
    return {z: results[z] for z in range(minz, maxz)}, where


def _sizes_from_pairs(results: dict[int, dict]) -> dict[int, list[int]]:
    sizes: dict[int, list[int]] = {}
    for z, pair in results.items():
        for slice_z, size in ((z, pair["size1"]), (z + 1, pair["size2"])):
            if sizes.setdefault(slice_z, list(size)) != list(size):
                raise InputError(f"slice {slice_z}: align.pairs results disagree on its size "
                                 f"({sizes[slice_z]} vs {size})")
    return sizes


def _transforms(minz: int, maxz: int, composed: dict, sizes: dict[int, list[int]]) -> dict:
    framed, width, height = frame(composed, sizes)
    return {
        "minz": minz,
        "maxz": maxz,
        "width": width,
        "height": height,
        "transforms": {str(z): framed[z][:2].tolist() for z in range(minz, maxz + 1)},
        "source_sizes": {str(z): list(sizes[z]) for z in range(minz, maxz + 1)},
    }


def _pairs(minz: int, maxz: int, mode: str, entries: list[dict], reused_from: str | None = None,
           align_mode: str = "affine", worst: list[int] | None = None) -> dict:
    return {
        "minz": minz,
        "maxz": maxz,
        "mode": mode,
        "align_mode": align_mode,
        "reused_from": reused_from,
        "negligible_px": NEGLIGIBLE_PX,
        "fallbacks": [e["z"] for e in entries if e["fallback"]],
        "deformed": [e["z"] for e in entries if e.get("deformed")],  # reused pairs.json may predate it
        "worst_elastic": worst or [],
        "pairs": entries,
    }


def _csv(transforms: dict) -> str:
    rows = ["z,a,b,c,d,e,f,source_width,source_height"]
    for z in range(transforms["minz"], transforms["maxz"] + 1):
        (a, b, c), (d, e, f) = transforms["transforms"][str(z)]
        w, h = transforms["source_sizes"][str(z)]
        rows.append(",".join(str(v) for v in (z, a, b, c, d, e, f, w, h)))
    return "\n".join(rows) + "\n"
