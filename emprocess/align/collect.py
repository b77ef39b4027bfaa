"""The collect step: one transform per slice, written to ``<process>/align/``.

Outputs (``transforms.json`` is written last, so its presence means the others are complete):
  * ``transforms.json`` — {"minz", "maxz", "width", "height", "transforms": {"<z>": [[a, b, c], [d, e, f]]},
    "source_sizes": {"<z>": [w, h]}, "replaced": {"<z>": copy's z} when slices are replaced}; each matrix maps pixel (x, y) of the ORIGINAL slice z to its
    pixel in the aligned output frame (full resolution, pixel centres at integers, so
    ``cv2.warpAffine(slice, M, (width, height))`` renders the aligned slice); width × height is the
    bounding box of all transformed slices, which starts at (0, 0).
  * ``transforms.csv`` — the same matrices, one row per slice: z, a, b, c, d, e, f, source width, height.
  * ``pairs.json`` — {"minz", "maxz", "mode", "align_mode", "reused_from", "negligible_px", "fallbacks":
    [z ...], "deformed": [z ...], "worst_elastic": [z ...], "replaced": [{"z", "copy_of", "reason"}],
    "pairs": [{"z", "skipped", "model", "fallback", "deformed", "reason", "departure_px", "candidates",
    "features", "attempts", "affine", "translation", "elastic"}], "bridges": [{"first", "last", and a
    pair's keys}]} with one entry per pair (z, z+1) of present slices; a pair touching a replaced slice
    is ``skipped`` (no model: the chain goes over that run's bridge instead). Every replaced slice,
    fallback and deformed pair is also logged as a warning on the ``emprocess.align`` logger.
  * elastic mode: ``maps.zarr`` (see ``emprocess.align.maps``), written before transforms.json, which
    then has an ``elastic`` entry naming it; each pair's ``elastic`` entry is what the maps leave of its
    flow (``maps.pair_quality``), and ``worst_elastic`` names the pairs that keep the most.

Modes: "pairwise" composes the align.pairs results, over the align.bridge results where slices are
replaced (``emprocess.align.bad``), and, elastic, relaxes their flows; "skip_align" gives identity transforms (slice
sizes from image headers); "reused" takes another run's transforms.json (the reused frame is kept, so
re-exports of one dataset line up).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.align.bad import MISSING, accepted, bridges, candidates, nearest_good
from emprocess.align.compose import NEGLIGIBLE_PX, Choice, choose, compose, frame
from emprocess.align.images import image_size
from emprocess.align.maps import FLOW_KEYS, make_maps
from emprocess.payloads import MAX_TEXT, Axis, Index, Location, Payload
from emprocess.run_layout import PAIRS_FILE, TRANSFORMS_CSV
from emprocess.stages import InputError, Result

log = logging.getLogger("emprocess.align")
READ_THREADS = 16
WORST_SHOWN = 5  # pairs named as the worst the elastic maps leave


class Bridge(Payload):
    """The align.bridge result registering slice ``last`` to slice ``first`` over replaced slices."""

    first: Index
    last: Index
    result: Location


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
    bridges: list[Bridge] = []
    missing: list[Index] = []
    bad_slices: Literal["replace", "keep"] | list[Index] = "keep"

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
    replaced: list[Index] = []
    transforms: str


def collect(payload: CollectPayload) -> CollectResult:
    """Write the ALIGN outputs for slices minz..maxz; the result summarises them."""
    minz, maxz = payload.minz, payload.maxz
    if payload.reuse:
        transforms, pairs = _reused(payload.reuse, minz, maxz)
    elif payload.skip_align or minz == maxz:
        transforms, pairs = _identity(payload, minz, maxz)
    else:
        transforms, pairs = _pairwise(payload, minz, maxz)
    storage.write_json(storage.join(payload.process, PAIRS_FILE), pairs)
    storage.write(storage.join(payload.process, TRANSFORMS_CSV), _csv(transforms).encode())
    storage.write_json(transforms_url(payload.process), transforms)
    return CollectResult(mode=pairs["mode"], width=transforms["width"], height=transforms["height"],
                         fallbacks=pairs["fallbacks"], deformed=pairs["deformed"],
                         replaced=[entry["z"] for entry in pairs["replaced"]],
                         transforms=transforms_url(payload.process))


def _pairwise(payload: CollectPayload, minz: int, maxz: int) -> tuple[dict, dict]:
    """Compose the pairs' models, the chain skipping replaced slices over their bridges; in elastic
    mode, also relax the flows into maps."""
    evidence = read_evidence(payload.pairs)
    missing = set(payload.missing)
    results = evidence.pairs
    absent = [z for z in range(minz, maxz) if z not in results and not {z, z + 1} & missing]
    if absent:
        raise InputError(f"no align.pairs result for pairs starting at z={absent[:10]} "
                         f"(results read: {len(payload.pairs)})")
    bridged = {(b.first, b.last): storage.read_json(b.result) for b in payload.bridges}
    found, suspected = candidates(evidence.measures, evidence.fallbacks, missing, payload.bad_slices, minz, maxz)
    replaced = accepted(found, suspected, {key: not choose(r).fallback for key, r in bridged.items()}, minz, maxz)
    copy_of = {z: nearest_good(z, replaced, minz, maxz) for z in replaced}
    for z, reason in replaced.items():
        log.warning("slice %d replaced by a copy of slice %d: %s", z, copy_of[z], reason)

    choices = {z: choose(pair) for z, pair in results.items() if not {z, z + 1} & replaced.keys()}
    spans = bridges(replaced, minz, maxz)
    unplanned = [span for span in spans if span not in bridged]
    if unplanned:
        raise InputError(f"no align.bridge result for {', '.join(f'{a}→{b}' for a, b in unplanned)}")
    spanned = {span: choose(bridged[span]) for span in spans}
    for (first, last), choice in ({(z, z + 1): c for z, c in choices.items()} | spanned).items():
        if choice.fallback or choice.deformed:
            log.warning("pair %d→%d: %s", first, last, choice.reason)
    entries = [{"z": z, **_entry(results[z], choices.get(z))} for z in sorted(results)]
    bridge_entries = [{"first": first, "last": last, **_entry(bridged[(first, last)], choice)}
                      for (first, last), choice in spanned.items()]
    log.info("composed %d pairs and %d bridges; %d fallbacks, %d deformed, %d slices replaced", len(choices),
             len(spans), sum(e["fallback"] for e in entries), sum(e["deformed"] for e in entries), len(replaced))

    matrices = {z: np.eye(3) for z in range(minz, maxz)}
    matrices.update({z: choice.matrix for z, choice in choices.items()})
    matrices.update({first: choice.matrix for (first, _), choice in spanned.items()})
    composed = compose(minz, maxz, matrices)
    composed.update({z: composed[copy_of[z]] for z in replaced})
    sizes = _sizes_from_pairs([*((z, z + 1, r) for z, r in results.items()),
                               *((first, last, r) for (first, last), r in bridged.items())])
    sizes.update(_source_sizes(payload, [z for z in range(minz, maxz + 1) if z not in sizes and z not in missing]))
    sizes.update({z: sizes[copy_of[z]] for z in replaced if z not in sizes})
    transforms = _transforms(minz, maxz, composed, sizes)
    kept = {"replaced": [{"z": z, "copy_of": copy_of[z], "reason": reason} for z, reason in replaced.items()],
            "bridges": bridge_entries}
    if replaced:
        transforms["replaced"] = {str(z): copy_of[z] for z in replaced}
    if not payload.elastic:
        return transforms, _pairs(minz, maxz, "pairwise", entries, **kept)
    bridge_flows = {b.first: (b.last, b.result) for b in payload.bridges if (b.first, b.last) in spans}
    transforms["elastic"], quality = make_maps(payload.process, transforms, evidence.where, replaced, bridge_flows)
    for entry in entries:
        entry["elastic"] = quality.get(entry["z"])
    worst = sorted((e for e in entries if e["elastic"] and e["elastic"]["residual_px"] is not None),
                   key=lambda e: -e["elastic"]["residual_px"])[:WORST_SHOWN]
    log.info("elastic maps: worst pairs %s", ", ".join(f"{e['z']}→{e['z'] + 1} {e['elastic']['residual_px']} px"
                                                       for e in worst))
    return transforms, _pairs(minz, maxz, "pairwise", entries, align_mode="elastic", worst=[e["z"] for e in worst],
                              **kept)


def _entry(result: dict, choice: Choice | None) -> dict:
    """A pair's (or a bridge's) entry in pairs.json but its slices; a pair touching a replaced slice
    is ``skipped`` by the chain."""
    return {
        "skipped": choice is None,
        "model": None if choice is None else choice.model,
        "fallback": False if choice is None else choice.fallback,
        "deformed": False if choice is None else choice.deformed,
        "reason": None if choice is None else choice.reason,
        "departure_px": None if choice is None else choice.departure_px,
        "candidates": result["candidates"],
        "features": [result["features1"], result["features2"]],
        "attempts": result["attempts"],
        "affine": result["affine"],
        "translation": result["translation"],
    }


def _identity(payload: CollectPayload, minz: int, maxz: int) -> tuple[dict, dict]:
    """Identity transforms; a missing slice (``missing_slices: "replace"``) copies its nearest present one."""
    missing = set(payload.missing)
    copy_of = {z: nearest_good(z, missing, minz, maxz) for z in sorted(missing)}
    sizes = _source_sizes(payload, [z for z in range(minz, maxz + 1) if z not in missing])
    sizes.update({z: sizes[copy] for z, copy in copy_of.items()})
    identity = compose(minz, maxz, {z: np.eye(3) for z in range(minz, maxz)})
    transforms = _transforms(minz, maxz, identity, sizes)
    if copy_of:
        transforms["replaced"] = {str(z): copy for z, copy in copy_of.items()}
    mode = "skip_align" if payload.skip_align else "pairwise"
    return transforms, _pairs(minz, maxz, mode, [], replaced=[{"z": z, "copy_of": copy, "reason": MISSING}
                                                               for z, copy in copy_of.items()])


def _source_sizes(payload: CollectPayload, zs: list[int]) -> dict[int, list[int]]:
    """The sizes of source slices ``zs``, from their headers."""
    urls = [storage.join(payload.source, payload.image % z) for z in zs]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return dict(zip(zs, (list(size) for size in pool.map(image_size, urls))))


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
    replaced = {z: copy for z, copy in reused.get("replaced", {}).items() if z in keep}
    if replaced:  # a copy may lie outside this run's slices: its source is read, with z's own transform
        transforms["replaced"] = replaced
    old_pairs = storage.read_json_if_exists(storage.join(process, PAIRS_FILE)) or {}
    entries = [e for e in old_pairs.get("pairs", []) if minz <= e["z"] < maxz]
    return transforms, _pairs(minz, maxz, "reused", entries, reused_from=process,
                              align_mode="elastic" if "elastic" in reused else "affine",
                              replaced=[e for e in old_pairs.get("replaced", []) if str(e["z"]) in replaced])


@dataclass(frozen=True)
class Evidence:
    """What the align.pairs results hold: each pair by its first slice (without its flows, read again
    when relaxed), the result document it came from, each slice's measures and the pairs that fell back."""

    pairs: dict[int, dict]
    where: dict[int, str]
    measures: dict[int, dict]
    fallbacks: list[int]


def read_evidence(urls: list[str]) -> Evidence:
    """The align.pairs results at ``urls``; each pair must appear once."""
    results: dict[int, dict] = {}
    where: dict[int, str] = {}
    measures: dict[int, dict] = {}
    with ThreadPoolExecutor(READ_THREADS) as pool:  # a document is dropped once gathered: its flows can be large
        for url, document in zip(urls, pool.map(storage.read_json, urls)):
            _gather(url, document, results, where, measures)
    results = dict(sorted(results.items()))
    return Evidence(results, where, measures, [z for z, pair in results.items() if choose(pair).fallback])


def _gather(url: str, document: dict, results: dict[int, dict], where: dict[int, str],
            measures: dict[int, dict]) -> None:
    """One align.pairs result's pairs (without their flows) and slice measures, into the evidence."""
    for pair in document["pairs"]:
        if pair["z"] in results:
            raise InputError(f"{url}: pair {pair['z']}→{pair['z'] + 1} appears in two align.pairs results")
        results[pair["z"]] = {key: value for key, value in pair.items() if key not in FLOW_KEYS}
        where[pair["z"]] = url
        measures.update({pair["z"]: pair["measures1"], pair["z"] + 1: pair["measures2"]})


def _sizes_from_pairs(results: list[tuple[int, int, dict]]) -> dict[int, list[int]]:
    """Slice sizes from (first slice, second slice, pair result) triples, which must agree."""
    sizes: dict[int, list[int]] = {}
    for first, second, pair in results:
        for slice_z, size in ((first, pair["size1"]), (second, pair["size2"])):
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
           align_mode: str = "affine", worst: list[int] | None = None, replaced: list[dict] | None = None,
           bridges: list[dict] | None = None) -> dict:
    return {
        "minz": minz,
        "maxz": maxz,
        "mode": mode,
        "align_mode": align_mode,
        "reused_from": reused_from,
        "negligible_px": NEGLIGIBLE_PX,
        "fallbacks": sorted([e["z"] for e in entries if e["fallback"]]  # a bridge's by its first slice
                            + [b["first"] for b in bridges or [] if b["fallback"]]),
        "deformed": [e["z"] for e in entries if e.get("deformed")],  # reused pairs.json may predate it
        "worst_elastic": worst or [],
        "replaced": replaced or [],
        "pairs": entries,
        "bridges": bridges or [],
    }


def _csv(transforms: dict) -> str:
    rows = ["z,a,b,c,d,e,f,source_width,source_height"]
    for z in range(transforms["minz"], transforms["maxz"] + 1):
        (a, b, c), (d, e, f) = transforms["transforms"][str(z)]
        w, h = transforms["source_sizes"][str(z)]
        rows.append(",".join(str(v) for v in (z, a, b, c, d, e, f, w, h)))
    return "\n".join(rows) + "\n"
