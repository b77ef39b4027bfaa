"""The ALIGN stages: ``align.pairs`` (the "fiji" service, POST /align), ``align.bridge`` (POST /bridge)
and ``align.collect``.

align.pairs mini-tasks cover runs of up to PAIRS_PER_TASK = 8 adjacent pairs (9 slices, key
"z00000120-00000128" = first and last slice), so each slice's features are computed once per run and
only the slice shared by two runs is described twice (9/8 of the minimum work), while a stack still
splits into many independent mini-tasks. Payload forms (all images full URLs, ``downsample`` optional,
default 1):
  * batched: {"images": [url_z, url_z+1, ...], "z": [z, z+1, ...], "downsample": n}
    → {"pairs": [{"z": z, <pair result>}, ...]}, one entry per (z, z+1);
  * plain (the issue's service form): {"img1": url, "img2": url, "downsample": n} → <pair result>.
A pair result is {"size1": [w, h], "size2": [w, h], "features1", "features2", "candidates",
"attempts" (SIFT parameter sets tried), "attempt" (the one reported), "affine": {"found", "matrix" (2×3 or
null), "inliers", "residual_px"}, "translation": {…}}
in full-resolution pixels; each matrix maps img2 (slice z+1) pixel coordinates into img1 (slice z)
pixel coordinates. No model found is a normal result with found=false.

With ``"elastic": true`` (the conf's align_mode "elastic") each pair result also has ``flow1`` and
``flow2``: the patch flow of slice z to z+1 and to z+2 (``FlowResult``, see emprocess.align.elastic);
a batched payload then names the slice after its last in ``next_image`` when the stack has one, so
every slice's flow2 is measured by exactly one mini-task.

Every slice's measures (``measures1``, ``measures2``: see ``emprocess.align.bad``) come with each pair,
and a run of pairs stops at a missing slice (``missing_slices: "replace"``).

align.bridge registers, in the plain form, the good slices on either side of each run of slices that
may be replaced (``bad.candidate_bridges``, planned from the align.pairs results), key
"z<first>-<last>". align.collect is one light mini-task ("collect") that composes the results (see
emprocess.align.collect).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_serializer, model_validator

from emprocess import storage
from emprocess.registry import facts
from emprocess.align.bad import candidate_bridges, candidates, missing_slices, runs
from emprocess.align.collect import CollectPayload, CollectResult, collect, read_evidence
from emprocess.align.elastic import register_run_elastic
from emprocess.align.images import image_size
from emprocess.align.maps import FLOW_KEYS
from emprocess.align.register import register_run
from emprocess.payloads import MAX_URLS, Axis, Index, Location, Payload
from emprocess.stages import MiniTask, Result, RunContext, Stage

PAIRS_PER_TASK = 8
# Peak memory of one call, fitted to what benchmarks/align.py measured: 0.8 GB for a 16 MP pair,
# 2.0 GB for a 20k × 20k one (the README's table).
PAIR_BASE_BYTES = 750_000_000
PAIR_BYTES_PER_PIXEL = 3.125
# Elastic mode, per working-resolution pixel (uint8): a third prepared slice, the warped moving slice,
# a pass's resampled copy of it and the coarse level's halves (3.5 bytes; the flow cuts its patches from
# these, no padded or masked copies). benchmarks/align.py at 20k × 20k: a whole elastic call peaks at
# 2.8 GB at downsample 1 (this estimate: 3.6 GB), 1.7 GB at downsample 4 (this estimate: 2.1 GB).
FLOW_BYTES_PER_WORKING_PIXEL = 4

Size = Annotated[list[Axis], Field(min_length=2, max_length=2)]


class PairsPayload(Payload):
    """Either ``images`` with their consecutive slice numbers ``z`` (a run of pairs), or ``img1`` and
    ``img2`` (one pair); ``downsample`` divides both sides before features are found."""

    images: Annotated[list[Location], Field(min_length=2, max_length=MAX_URLS)] | None = None
    z: Annotated[list[Index], Field(min_length=2, max_length=MAX_URLS)] | None = None
    img1: Location | None = None
    img2: Location | None = None
    downsample: Annotated[int, Field(ge=1, le=64)] = 1
    elastic: bool = False
    next_image: Location | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "PairsPayload":
        plain = (self.img1, self.img2)
        batched = (self.images, self.z)
        if self.next_image is not None and not (self.elastic and self.images is not None):
            raise ValueError("'next_image' goes with 'elastic' and 'images' only")
        if all(v is not None for v in plain) and all(v is None for v in batched):
            return self
        if any(v is not None for v in plain) or any(v is None for v in batched):
            raise ValueError("give 'img1' and 'img2', or 'images' and 'z': equal-length lists of at least 2")
        if len(self.images) != len(self.z):
            raise ValueError("'images' and 'z' must be equal-length lists")
        if self.z != list(range(self.z[0], self.z[0] + len(self.z))):
            raise ValueError(f"'z' must be consecutive slice numbers, got {self.z}")
        return self


class ModelResult(Result):
    """One fitted model (see ``models.ModelFit``): ``matrix`` maps img2 pixels into img1's, None when
    not found."""

    found: bool
    matrix: list[list[float]] | None
    inliers: int
    residual_px: float
    deformed: bool = False  # found although residual_px fails the precision rule: a smooth deformation
    local_residual_px: float | None = None  # what the residuals' local medians leave (RMS)


class FlowResult(Result):
    """The flow of slice z to slice z+``reach`` on a grid of slice z: point (i, j) at full-resolution
    pixel (origin[0] + j·stride[0], origin[1] + i·stride[1]) has displacement (dx[i][j], dy[i][j]),
    null where filtered out, meaning slice z there shows what slice z+reach, mapped by ``prewarp``
    (2×3, slice z+reach px → slice z px), shows at that point plus the displacement; ``valid`` is the
    share of points kept."""

    reach: Annotated[int, Field(ge=1, le=2)]
    prewarp: list[list[float]]
    origin: Annotated[list[float], Field(min_length=2, max_length=2)]
    stride: Annotated[list[float], Field(min_length=2, max_length=2)]
    dx: list[list[float | None]]
    dy: list[list[float | None]]
    valid: float


class SliceMeasures(Result):
    """What bad slices are found by (``bad.measure``)."""

    std: float
    saturated: float
    focus: float


class PairResult(Result):
    """One registered pair, in full-resolution pixels (see the module docstring)."""

    measures1: SliceMeasures
    measures2: SliceMeasures
    size1: Size
    size2: Size
    features1: int
    features2: int
    candidates: int
    attempts: int
    attempt: int
    affine: ModelResult
    translation: ModelResult


class RunPairResult(PairResult):
    """A pair of a run, named by its first slice ``z``; elastic mode adds its flows."""

    z: Index
    flow1: FlowResult | None = None
    flow2: FlowResult | None = None

    @model_serializer(mode="wrap")
    def _without_flows(self, handler):
        """Affine results keep the keys they always had."""
        return {key: value for key, value in handler(self).items() if value is not None or key not in FLOW_KEYS}


class PairsResult(Result):
    """The answer in the payload's form: ``pairs`` for a run, one pair's own fields for a plain pair.
    The other form's keys are absent, not null."""

    pairs: list[RunPairResult] | None = None
    measures1: SliceMeasures | None = None
    measures2: SliceMeasures | None = None
    size1: Size | None = None
    size2: Size | None = None
    features1: int | None = None
    features2: int | None = None
    candidates: int | None = None
    attempts: int | None = None
    attempt: int | None = None
    affine: ModelResult | None = None
    translation: ModelResult | None = None
    flow1: FlowResult | None = None
    flow2: FlowResult | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "PairsResult":
        given = [name for name in PairResult.model_fields if getattr(self, name) is not None]
        run = self.pairs is not None and not given
        pair = self.pairs is None and len(given) == len(PairResult.model_fields)
        if not (run or pair):
            raise ValueError("give 'pairs', or every field of one pair and no 'pairs'")
        return self

    @model_serializer(mode="wrap")
    def _without_other_form(self, handler):
        return {key: value for key, value in handler(self).items() if value is not None}


def plan_pairs(ctx: RunContext) -> list[MiniTask]:
    """Runs of PAIRS_PER_TASK pairs over each run of present slices (missing ones are bridged)."""
    conf = ctx.conf
    if not registers(ctx):
        return []
    missing = set(missing_slices(conf))
    tasks = []
    for low, high in runs(z for z in conf.z_range if z not in missing):
        for first in range(low, high, PAIRS_PER_TASK):
            last = min(first + PAIRS_PER_TASK, high)
            zs = list(range(first, last + 1))
            payload = {"images": [conf.slice_url(z) for z in zs], "z": zs, "downsample": conf.downsample_factor}
            if conf.align_mode == "elastic":
                payload["elastic"] = True
                if last < high:
                    payload["next_image"] = conf.slice_url(last + 1)
            tasks.append({"key": span_key(first, last), "payload": payload})
    return tasks


def align_pairs(payload: PairsPayload) -> PairsResult:
    """Register adjacent slices (either payload form, see the module docstring)."""
    if payload.img1 is not None:
        return PairsResult(**next(_registered([payload.img1, payload.img2], payload)))
    runs = _registered(payload.images, payload)
    return PairsResult(pairs=[RunPairResult(z=z, **result) for z, result in zip(payload.z, runs)])


def _registered(urls: list[str], payload: PairsPayload):
    if payload.elastic:
        return register_run_elastic(urls, payload.downsample, payload.next_image)
    return register_run(urls, payload.downsample)


def pairs_memory(payload: PairsPayload) -> int:
    """Peak bytes of one call: grows with the largest slice (its header gives the size); elastic mode
    holds a third slice and the flow's warped copies and maps, at the working resolution."""
    images = payload.images or [payload.img1, payload.img2]
    largest = max(w * h for w, h in map(image_size, images))
    elastic = FLOW_BYTES_PER_WORKING_PIXEL * largest / payload.downsample**2 if payload.elastic else 0
    return int(PAIR_BASE_BYTES + PAIR_BYTES_PER_PIXEL * largest + elastic)


def registers(ctx: RunContext) -> bool:
    """Whether this run registers its slices (rather than skipping, reusing or having one slice)."""
    conf = ctx.conf
    return ctx.wants("align") and not conf.skip_align and not conf.reuse_alignment and conf.minz != conf.maxz


def planned_bridges(ctx: RunContext) -> list[tuple[int, int]]:
    """Every bridge align.collect may need (``bad.candidate_bridges``), from the align.pairs results
    (none when every present slice stands alone: then only missing slices are bridged)."""
    conf = ctx.conf
    if not registers(ctx) or (conf.bad_slices == "keep" and conf.missing_slices == "fail"):
        return []
    evidence = read_evidence([ctx.cache_url(PAIRS.name, task["key"]) for task in plan_pairs(ctx)])
    found, suspected = candidates(evidence.measures, evidence.fallbacks, missing_slices(conf), conf.bad_slices,
                                  conf.minz, conf.maxz)
    return candidate_bridges(found, suspected, conf.minz, conf.maxz)


def plan_bridge(ctx: RunContext) -> list[MiniTask]:
    """One plain pair (img1, img2) per bridge, keyed like a run of pairs by its first and last slice."""
    conf = ctx.conf
    tasks = []
    for first, last in planned_bridges(ctx):
        payload = {"img1": conf.slice_url(first), "img2": conf.slice_url(last), "downsample": conf.downsample_factor}
        if conf.align_mode == "elastic":
            payload["elastic"] = True
        tasks.append({"key": span_key(first, last), "payload": payload})
    return tasks


def span_key(first: int, last: int) -> str:
    """The mini-task key of slices first..last (align.pairs' runs, align.bridge's bridges)."""
    return f"z{first:08d}-{last:08d}"


def plan_collect(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("align"):
        return []
    conf = ctx.conf
    payload = {
        "process": ctx.locations.process,
        "minz": conf.minz,
        "maxz": conf.maxz,
        "source": conf.source,
        "image": conf.image,
        "skip_align": conf.skip_align,
        "elastic": conf.align_mode == "elastic",
        "reuse": conf.reused_process(),
        "pairs": [ctx.cache_url(PAIRS.name, task["key"]) for task in plan_pairs(ctx)],
        "bridges": [{"first": first, "last": last, "result": ctx.cache_url(BRIDGE.name, span_key(first, last))}
                    for first, last in planned_bridges(ctx)],
        "missing": missing_slices(conf),
        "bad_slices": conf.bad_slices,
    }
    return [{"key": "collect", "payload": payload}]


def collect_wrote_transforms(payload: CollectPayload, result: CollectResult) -> bool:
    return storage.exists(result.transforms)


PAIRS = Stage(**facts("align.pairs"), plan=plan_pairs, work=align_pairs, payload=PairsPayload, result=PairsResult,
              memory=pairs_memory)
BRIDGE = Stage(**facts("align.bridge"), plan=plan_bridge, work=align_pairs, payload=PairsPayload,
               result=PairsResult, memory=pairs_memory)
COLLECT = Stage(**facts("align.collect"), plan=plan_collect, work=collect, payload=CollectPayload,
                result=CollectResult, check=collect_wrote_transforms)
STAGES = [PAIRS, BRIDGE, COLLECT]
