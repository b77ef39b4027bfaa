"""The first and last steps of a run: create its locations, then mark it complete.

``init.json`` is written once (a resumed run keeps the original start); ``complete.json`` is the
single marker that a run's outputs are whole, written last.
"""

from __future__ import annotations

import datetime
from importlib.metadata import PackageNotFoundError, version

from emprocess import __version__, storage
from emprocess.align import transforms_url
from emprocess.chunkedgraph.properties import largest_bodies, write_segment_properties
from emprocess.pyramid.viewer import SHOWN_BODIES, neuroglancer_url
from emprocess.stages import RunContext

TMP_LIFETIME_DAYS = 7
VERSIONED_PACKAGES = ("apache-airflow", "tensorstore", "numpy", "opencv-python-headless")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    found = {"emprocess": __version__}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def create_env(ctx: RunContext) -> dict:
    """Create the run's buckets/folders and write ``init.json`` unless a resumed run wrote it."""
    for location in ctx.locations.all():
        storage.ensure_location(location, project=ctx.conf.project)
    init_url = ctx.locations.init
    if storage.exists(init_url):
        return storage.read_json(init_url)
    init = {
        "conf": ctx.conf.to_json(),
        "run_id": ctx.run_id,
        "run_key": ctx.key,
        "versions": package_versions(),
        "started": _now(),
        "locations": vars(ctx.locations),
    }
    storage.write_json(init_url, init)
    return init


def publish(ctx: RunContext) -> dict:
    """Expire tmp, merge the bodies' segment properties (once every flatten job is done), open the
    viewing location when asked, and write ``complete.json`` last; for a public viewing bucket it
    holds a neuroglancer link (neuroglancer reads gs:// and s3:// sources itself)."""
    storage.set_expiry(ctx.locations.tmp, TMP_LIFETIME_DAYS)
    if ctx.wants("chunkedgraph"):
        write_segment_properties(ctx.locations.chunkedgraph, ctx.locations.segmentation)
    if ctx.conf.public:
        storage.make_public(ctx.locations.ng)
    complete = {
        "conf": ctx.conf.to_json(),
        "run_id": ctx.run_id,
        "finished": _now(),
        "outputs": {
            "jpeg": ctx.locations.jpeg if ctx.wants("pyramid") else None,
            "raw": ctx.locations.raw if ctx.wants("pyramid") and ctx.conf.createRawPyramid else None,
            "segmentation": ctx.locations.segmentation if ctx.wants("chunkedgraph") else None,
            "chunkedgraph": ctx.locations.chunkedgraph if ctx.wants("chunkedgraph") else None,
            "transforms": transforms_url(ctx.locations.process) if ctx.wants("align") else None,
        },
    }
    viewed = complete["outputs"]["jpeg"], complete["outputs"]["segmentation"]
    if ctx.conf.public and storage.parse(ctx.locations.ng).scheme != "file" and any(viewed):
        shown = largest_bodies(viewed[1], SHOWN_BODIES) if viewed[1] else []
        complete["neuroglancer"] = neuroglancer_url(viewed[0], segmentation_url=viewed[1], segments=shown)
    storage.write_json(ctx.locations.complete, complete)
    return complete
