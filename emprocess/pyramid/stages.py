"""The aligned-slice and pyramid stages (all served by emwrite).

``align.warp`` → one mini-task per slice; ``pyramid.meta`` → one (both infos and provenance);
``pyramid.shard`` → one per 1024³ block (key ``x{i}_y{j}_z{k}``), writing scales 0–4;
``pyramid.top`` → one, the scales above 4 (no task when the block scales already reach one chunk).
Every plan returns [] unless the conf wants the pyramid, reads only ``align/transforms.json``, and
puts every URL its work needs in the payload. ``planned_outputs`` lists the files each mini-task may
write; the plans give every file to exactly one mini-task.

Payloads:
  align.warp     {z, slice, source_size, transform, width, height, depth, z_index, clip_limit, aligned,
                  thumbnail, intensity: {url, sample: [slice URLs], writer: bool}}
  pyramid.meta   {jpeg, raw|null, layout, jpeg_quality, provenance: {description, sources, owners, method}}
  pyramid.shard  {block: [i, j, k], aligned, jpeg, raw|null, seed|null, layout, jpeg_quality}
  pyramid.top    {seed, jpeg, raw|null, layout, jpeg_quality}
where layout = {size: [x, y, z], voxel_offset: [0, 0, minz], resolution: [x, y, z] nm}.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.pyramid.aligned import warp_memory, warp_outputs, write_aligned_slice
from emprocess.pyramid.build import build_block, build_top
from emprocess.pyramid.intensity import sample_slices
from emprocess.pyramid.layout import BLOCK, PyramidLayout
from emprocess.pyramid.meta import write_info, write_provenance
from emprocess.pyramid.writers import SEED_CHUNKS, zarr_chunk_key
from emprocess.payloads import MAX_TEXT, MAX_URLS, Coords, Layout, Location, Payload, takes
from emprocess.stages import InputError, MiniTask, RunContext, Stage

THUMBNAILS = "align/thumbnails"  # under the process location, one ``<z>.png`` per slice
# Peak memory, as measured (the README's table): 1.5 GB for a whole 1024³ block (JPEG + raw), and for
# the top task 1.2 bytes per 4096 voxels of the volume.
SHARD_BASE_BYTES = 100_000_000
SHARD_BYTES_PER_VOXEL = 1.3
TOP_BASE_BYTES = 100_000_000
TOP_BYTES_PER_VOXEL = 1.2 / 4096

Quality = Annotated[int, Field(ge=1, le=100)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class Provenance(Payload):
    """What a volume's ``provenance`` file records: free text, kept as given."""

    description: Text
    sources: Annotated[list[Text], Field(max_length=MAX_URLS)]
    owners: Annotated[list[Text], Field(max_length=MAX_URLS)]
    method: dict[str, Any]


class PyramidMetaPayload(Payload):
    """The JPEG volume at ``jpeg`` (and the raw one at ``raw``) of geometry ``layout``."""

    jpeg: Location
    raw: Location | None = None
    layout: Layout
    jpeg_quality: Quality
    provenance: Provenance


class ShardPayload(Payload):
    """Block ``block`` (i, j, k of the 1024³ grid) of the aligned volume at ``aligned``."""

    block: Coords
    aligned: Location
    jpeg: Location
    raw: Location | None = None
    seed: Location | None = None
    layout: Layout
    jpeg_quality: Quality

    @model_validator(mode="after")
    def _in_volume(self) -> "ShardPayload":
        if not PyramidLayout(tuple(self.layout.size), (0, 0, 0), (1, 1, 1)).has_block(self.block):
            raise ValueError(f"'block' {self.block} is outside the volume {self.layout.size}")
        return self


class TopPayload(Payload):
    """The scales above the blocks', from the last block scale at ``seed``."""

    seed: Location
    jpeg: Location
    raw: Location | None = None
    layout: Layout
    jpeg_quality: Quality


def thumbnail_url(ctx: RunContext, z: int) -> str:
    return storage.join(ctx.locations.process, THUMBNAILS, f"{z}.png")


def intensity_url(ctx: RunContext) -> str:
    return storage.join(ctx.locations.process, "align", "intensity.json")


def seed_url(ctx: RunContext) -> str:
    """The exact last block scale, for the top task (tmp location)."""
    return storage.join(ctx.locations.tmp, "pyramid_seed")


def read_transforms(ctx: RunContext) -> dict:
    url = transforms_url(ctx.locations.process)
    transforms = storage.read_json(url)
    conf = ctx.conf
    if (transforms.get("minz"), transforms.get("maxz")) != (conf.minz, conf.maxz):
        raise InputError(f"{url}: slices {transforms.get('minz')}..{transforms.get('maxz')}, "
                         f"but the conf asks for {conf.minz}..{conf.maxz}")
    for key in ("width", "height"):
        if not isinstance(transforms.get(key), int) or transforms[key] < 1:
            raise InputError(f"{url}: '{key}' must be a positive integer, got {transforms.get(key)!r}")
    return transforms


def run_layout(ctx: RunContext) -> PyramidLayout:
    """The run's pyramid layout: the aligned frame from the transforms, the conf's slices and resolution."""
    transforms, conf = read_transforms(ctx), ctx.conf
    size = (transforms["width"], transforms["height"], conf.maxz - conf.minz + 1)
    return PyramidLayout(size, (0, 0, conf.minz), tuple(conf.resolution_xyz))


def _raw_url(ctx: RunContext) -> str | None:
    return ctx.locations.raw if ctx.conf.createRawPyramid else None


# align.warp ---------------------------------------------------------------------------------------

def plan_warp(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("pyramid"):
        return []
    transforms = read_transforms(ctx)
    conf = ctx.conf
    sample = sample_slices(conf.minz, conf.maxz)
    tasks = []
    for z in conf.z_range:
        if str(z) not in transforms.get("transforms", {}):
            raise InputError(f"{transforms_url(ctx.locations.process)}: no transform for slice {z}")
        tasks.append({"key": f"{z:08d}", "payload": {
            "z": z,
            "slice": conf.slice_url(z),
            "source_size": transforms.get("source_sizes", {}).get(str(z)),
            "transform": transforms["transforms"][str(z)],
            "width": transforms["width"],
            "height": transforms["height"],
            "depth": conf.maxz - conf.minz + 1,
            "z_index": z - conf.minz,
            "clip_limit": conf.clip_limit,
            "aligned": ctx.locations.aligned,
            "thumbnail": thumbnail_url(ctx, z),
            "intensity": {"url": intensity_url(ctx), "sample": [conf.slice_url(s) for s in sample],
                          "writer": z == sample[0]},
        }})
    return tasks


def thumbnail_written(payload: dict, result: dict) -> bool:
    return storage.exists(payload["thumbnail"])


# pyramid.meta -------------------------------------------------------------------------------------

def plan_meta(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("pyramid"):
        return []
    conf = ctx.conf
    return [{"key": "info", "payload": {
        "jpeg": ctx.locations.jpeg,
        "raw": _raw_url(ctx),
        "layout": run_layout(ctx).to_json(),
        "jpeg_quality": conf.jpeg_quality,
        "provenance": {
            "description": f"{conf.id}: aligned EM stack, slices {conf.minz}..{conf.maxz}",
            "sources": [storage.join(conf.source, conf.image)],
            "owners": [conf.email] if conf.email else [],
            "method": {"task": "emprocess pyramid", "run_id": ctx.run_id, "conf": conf.to_json()},
        },
    }}]


@takes(PyramidMetaPayload)
def write_meta(payload: dict) -> dict:
    """Write the info and provenance of the JPEG (and raw) volume."""
    layout = PyramidLayout.from_json(payload["layout"])
    written = []
    for url, encoding in _volumes(payload):
        written.append(write_info(url, layout, encoding, payload["jpeg_quality"] if encoding == "jpeg" else None))
        prov = payload["provenance"]
        method = dict(prov["method"], encoding=encoding)
        written.append(write_provenance(url, f"{prov['description']} ({encoding})", prov["sources"], prov["owners"],
                                        method))
    return {"files": written, "scales": layout.num_scales}


def meta_outputs(payload: dict) -> list[str]:
    return [storage.join(url, name) for url, _ in _volumes(payload) for name in ("info", "provenance")]


def _volumes(payload: dict) -> list[tuple[str, str]]:
    return [(payload["jpeg"], "jpeg")] + ([(payload["raw"], "raw")] if payload.get("raw") else [])


# pyramid.shard ------------------------------------------------------------------------------------

def plan_shard(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("pyramid"):
        return []
    layout = run_layout(ctx)
    seed = seed_url(ctx) if layout.top_scales else None
    return [{"key": f"x{i}_y{j}_z{k}", "payload": {
        "block": [i, j, k],
        "aligned": ctx.locations.aligned,
        "jpeg": ctx.locations.jpeg,
        "raw": _raw_url(ctx),
        "seed": seed,
        "layout": layout.to_json(),
        "jpeg_quality": ctx.conf.jpeg_quality,
    }} for i, j, k in layout.blocks()]


@takes(ShardPayload)
def write_shard(payload: dict) -> dict:
    """Write every block scale of one 1024³ block (JPEG and raw) and its seed for the top task."""
    layout = PyramidLayout.from_json(payload["layout"])
    block = tuple(payload["block"])
    build_block(payload["aligned"], payload["jpeg"], payload.get("raw"), payload.get("seed"), layout, block,
                payload["jpeg_quality"])
    return {"block": list(block), "scales": list(layout.block_scales), "files": shard_outputs(payload)}


def shard_memory(payload: dict) -> int:
    """Peak bytes of one block: grows with its voxels (a block at the volume's edge is smaller)."""
    size = payload["layout"]["size"]
    voxels = 1
    for n, b in zip(size, payload["block"]):
        voxels *= min(BLOCK, n - b * BLOCK)
    return int(SHARD_BASE_BYTES + SHARD_BYTES_PER_VOXEL * voxels)


def shard_outputs(payload: dict) -> list[str]:
    layout = PyramidLayout.from_json(payload["layout"])
    block = tuple(payload["block"])
    files = [storage.join(url, path) for url, _ in _volumes(payload) for path in layout.block_shard_paths(block)]
    if payload.get("seed"):
        (x0, y0, z0), _ = layout.block_box(block, layout.block_scales[-1])
        files.append(storage.join(payload["seed"], zarr_chunk_key((z0 // SEED_CHUNKS[0], y0 // SEED_CHUNKS[1],
                                                                   x0 // SEED_CHUNKS[2]))))
    return files


# pyramid.top --------------------------------------------------------------------------------------

def plan_top(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("pyramid"):
        return []
    layout = run_layout(ctx)
    if not layout.top_scales:
        return []
    return [{"key": "top", "payload": {
        "seed": seed_url(ctx),
        "jpeg": ctx.locations.jpeg,
        "raw": _raw_url(ctx),
        "layout": layout.to_json(),
        "jpeg_quality": ctx.conf.jpeg_quality,
    }}]


@takes(TopPayload)
def write_top(payload: dict) -> dict:
    """Write the scales above the block scales, down to a single chunk."""
    layout = PyramidLayout.from_json(payload["layout"])
    build_top(payload["seed"], payload["jpeg"], payload.get("raw"), layout, payload["jpeg_quality"])
    return {"scales": list(layout.top_scales), "files": top_outputs(payload)}


def top_memory(payload: dict) -> int:
    """Peak bytes of the top task: grows with the whole volume's voxels."""
    x, y, z = payload["layout"]["size"]
    return int(TOP_BASE_BYTES + TOP_BYTES_PER_VOXEL * x * y * z)


def top_outputs(payload: dict) -> list[str]:
    layout = PyramidLayout.from_json(payload["layout"])
    return [storage.join(url, path) for url, _ in _volumes(payload) for path in layout.top_shard_paths()]


def outputs_written(payload: dict, result: dict) -> bool:
    return all(storage.exists(url) for url in result["files"])


WARP = Stage("align.warp", "emwrite", "/alignedslice", plan_warp, write_aligned_slice, thumbnail_written,
             memory=warp_memory)
META = Stage("pyramid.meta", "emwrite", "/ngmeta", plan_meta, write_meta, outputs_written)
SHARD = Stage("pyramid.shard", "emwrite", "/ngshard", plan_shard, write_shard, outputs_written,
              memory=shard_memory)
TOP = Stage("pyramid.top", "emwrite", "/ngtop", plan_top, write_top, outputs_written, memory=top_memory)
STAGES = [WARP, META, SHARD, TOP]

_OUTPUTS = {WARP.name: warp_outputs, META.name: meta_outputs, SHARD.name: shard_outputs, TOP.name: top_outputs}


def planned_outputs(stage: str, payload: dict) -> list[str]:
    """The files one mini-task of ``stage`` may write, from its payload alone."""
    return _OUTPUTS[stage](payload)
