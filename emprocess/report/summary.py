"""What a run did, read from its process location: the content of ``report.json``.

* the run: id, conf, package versions, start (init.json), end and outputs (complete.json, absent
  until the run is complete);
* per stage: mini-tasks done of those planned, the sum of their run times, and the span from the
  first start to the last end (from the result cache, whose entries record when they ran);
* the alignment: per pair (z, z+1) the model used, its inlier count and residual, and why a pair fell
  back (align/pairs.json), the aligned frame's size (align/transforms.json);
* the thumbnails written so far, as paths relative to the process location, where report.html is.
"""

from __future__ import annotations

import datetime
from concurrent.futures import ThreadPoolExecutor

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.batch import TIMING, stage_status
from emprocess.run_layout import CACHE_SUFFIX, PAIRS_FILE, THUMBNAIL_SUFFIX, THUMBNAILS
from emprocess.stages import RunContext, Stage

READ_THREADS = 16


def run_summary(ctx: RunContext, stages: list[Stage]) -> dict:
    process = ctx.locations.process
    init = storage.read_json_if_exists(ctx.locations.init) or {}
    complete = storage.read_json_if_exists(ctx.locations.complete) or {}
    return {
        "run_id": ctx.run_id,
        "run_key": ctx.key,
        "complete": bool(complete),
        "started": init.get("started"),
        "finished": complete.get("finished"),
        "conf": ctx.conf.to_json(),
        "versions": init.get("versions"),
        "locations": vars(ctx.locations),
        "outputs": complete.get("outputs"),
        "neuroglancer": complete.get("neuroglancer"),
        "stages": stage_timings(ctx, stages),
        "alignment": alignment(process),
        "thumbnails": thumbnails(process),
    }


def stage_timings(ctx: RunContext, stages: list[Stage]) -> list[dict]:
    """Per stage: done/total mini-tasks (total None while it cannot be planned yet), and how long its
    finished mini-tasks ran: ``task_seconds`` summed, ``wall_seconds`` from the first start to the
    last end (across resumed attempts, so it includes any pause between them)."""
    rows = []
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for name, counts in stage_status(ctx, stages).items():
            folder = ctx.cache_dir(name)
            urls = [storage.join(folder, key) for key in storage.listdir(folder) if key.endswith(CACHE_SUFFIX)]
            timings = [entry[TIMING] for entry in pool.map(storage.read_json, urls) if TIMING in entry]
            rows.append({"stage": name, **counts, **_span(timings)})
    return rows


def _span(timings: list[dict]) -> dict:
    if not timings:
        return {"task_seconds": 0.0, "started": None, "finished": None, "wall_seconds": None}
    starts = [datetime.datetime.fromisoformat(t["started"]) for t in timings]
    ends = [start + datetime.timedelta(seconds=t["seconds"]) for start, t in zip(starts, timings)]
    first, last = min(starts), max(ends)
    return {
        "task_seconds": round(sum(t["seconds"] for t in timings), 3),
        "started": first.isoformat(timespec="seconds"),
        "finished": last.isoformat(timespec="seconds"),
        "wall_seconds": round((last - first).total_seconds(), 3),
    }


def alignment(process: str) -> dict | None:
    """The alignment's outcome per pair, or None before align.collect has run."""
    transforms = storage.read_json_if_exists(transforms_url(process))
    pairs = storage.read_json_if_exists(storage.join(process, PAIRS_FILE))
    if transforms is None or pairs is None:
        return None
    return {
        "mode": pairs["mode"],
        "align_mode": pairs.get("align_mode", "affine"),  # pairs.json of runs before elastic mode have none
        "worst_elastic": pairs.get("worst_elastic", []),
        "reused_from": pairs["reused_from"],
        "width": transforms["width"],
        "height": transforms["height"],
        "slices": transforms["maxz"] - transforms["minz"] + 1,
        "fallbacks": pairs["fallbacks"],
        "deformed": pairs.get("deformed", []),  # pairs.json of runs before the flag have none
        "replaced": pairs.get("replaced", []),  # nor of runs before bad slices were replaced
        "pairs": [_pair(entry) for entry in pairs["pairs"]],
    }


def _pair(entry: dict) -> dict:
    """One pair's line: the fit of the model used (identity was fitted by nothing: no fit)."""
    fit = entry.get(entry["model"], {})
    return {
        "z": entry["z"],
        "model": entry["model"],
        "inliers": fit.get("inliers"),
        "residual_px": fit.get("residual_px"),
        "candidates": entry["candidates"],
        "fallback": entry["fallback"],
        "deformed": entry.get("deformed", False),
        "reason": entry["reason"],
        "elastic_px": (entry.get("elastic") or {}).get("residual_px"),  # what the elastic maps leave (RMS)
    }


def thumbnails(process: str) -> list[dict]:
    """{"z", "path"} of each thumbnail written, in z order; ``path`` is relative to the process location."""
    found = []
    for name in storage.listdir(storage.join(process, THUMBNAILS)):
        stem = name.removesuffix(THUMBNAIL_SUFFIX)
        if stem.isdigit() and "/" not in name:
            found.append({"z": int(stem), "path": f"{THUMBNAILS}/{name}"})
    return sorted(found, key=lambda t: t["z"])
