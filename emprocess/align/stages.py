"""The ALIGN stages: ``align.pairs`` (the "fiji" service, POST /align) and ``align.collect``.

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

align.collect is one light mini-task ("collect") that composes the results (see emprocess.align.collect).
"""

from __future__ import annotations

from emprocess import storage
from emprocess.align.collect import collect
from emprocess.align.register import register_run
from emprocess.config import run_key
from emprocess.stages import InputError, MiniTask, RunContext, Stage

PAIRS_PER_TASK = 8


def plan_pairs(ctx: RunContext) -> list[MiniTask]:
    conf = ctx.conf
    if not ctx.wants("align") or conf.skip_align or conf.reuse_alignment or conf.minz == conf.maxz:
        return []
    tasks = []
    for first in range(conf.minz, conf.maxz, PAIRS_PER_TASK):
        last = min(first + PAIRS_PER_TASK, conf.maxz)
        zs = list(range(first, last + 1))
        payload = {"images": [conf.slice_url(z) for z in zs], "z": zs, "downsample": conf.downsample_factor}
        tasks.append({"key": f"z{first:08d}-{last:08d}", "payload": payload})
    return tasks


def align_pairs(payload: dict) -> dict:
    """Register adjacent slices (either payload form, see the module docstring)."""
    downsample = payload.get("downsample", 1)
    if not isinstance(downsample, int) or isinstance(downsample, bool) or downsample < 1:
        raise InputError(f"'downsample' must be a positive integer, got {downsample!r}")
    if "img1" in payload or "img2" in payload:
        if not (isinstance(payload.get("img1"), str) and isinstance(payload.get("img2"), str)):
            raise InputError("the plain form needs both 'img1' and 'img2' URLs")
        return next(register_run([payload["img1"], payload["img2"]], downsample))
    images, zs = payload.get("images"), payload.get("z")
    if not isinstance(images, list) or not isinstance(zs, list) or len(images) < 2 or len(images) != len(zs):
        raise InputError("give 'img1' and 'img2', or 'images' and 'z': equal-length lists of at least 2")
    if not all(isinstance(z, int) for z in zs) or zs != list(range(zs[0], zs[0] + len(zs))):
        raise InputError(f"'z' must be consecutive slice numbers, got {zs}")
    return {"pairs": [{"z": z, **result} for z, result in zip(zs, register_run(images, downsample))]}


def plan_collect(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("align"):
        return []
    conf = ctx.conf
    reuse = conf.reuse_alignment
    payload = {
        "process": ctx.locations.process,
        "minz": conf.minz,
        "maxz": conf.maxz,
        "source": conf.source,
        "image": conf.image,
        "skip_align": conf.skip_align,
        "reuse": storage.run_locations(conf.source, run_key(reuse, conf.source)).process if reuse else None,
        "pairs": [ctx.cache_url(PAIRS.name, task["key"]) for task in plan_pairs(ctx)],
    }
    return [{"key": "collect", "payload": payload}]


def collect_wrote_transforms(payload: dict, result: dict) -> bool:
    return storage.exists(result["transforms"])


PAIRS = Stage(name="align.pairs", service="fiji", endpoint="/align", plan=plan_pairs, work=align_pairs)
COLLECT = Stage(
    name="align.collect", service=None, endpoint="", plan=plan_collect, work=collect, check=collect_wrote_transforms
)
STAGES = [PAIRS, COLLECT]
