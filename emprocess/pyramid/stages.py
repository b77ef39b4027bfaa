"""The aligned-slice and pyramid stages (all served by emwrite).

``align.intensity`` → one mini-task (the stack's 16-bit → 8-bit rule, see ``intensity``);
``align.warp`` → one mini-task per slice; ``pyramid.meta`` → one (both infos and provenance, and the
OME-Zarr metadata); ``pyramid.shard`` → one per 1024³ block (key ``x{i}_y{j}_z{k}``), writing scales
0–4; ``pyramid.top`` → one, the scales above 4 (no task when the block scales already reach one chunk).
The OME-Zarr volume (``ome_zarr``, when the conf's ``formats`` list it) is written by the same tasks.
Every plan returns [] unless the conf wants the pyramid, reads at most ``align/transforms.json`` (and,
under ``missing_slices: "replace"``, the listing of the source), and puts every URL its work needs in
the payload. A replaced slice's warp reads its copy's source (``slice``) and map, so both render
alike. ``planned_outputs`` lists the files each mini-task may write; the plans give every file to
exactly one mini-task.

Payloads:
  align.intensity {url, sample: [slice URLs]}
  align.warp     {z, slice, source_size, transform, width, height, depth, z_index, clip_limit, aligned,
                  thumbnail, intensity (the rule's URL), elastic: {maps, index, stride, grid} in elastic mode}
  pyramid.meta   {jpeg, raw|null, ome_zarr|null, layout, jpeg_quality,
                  provenance: {description, sources, owners, method}}
  pyramid.shard  {block: [i, j, k], aligned, jpeg, raw|null, ome_zarr|null, seed|null, layout, jpeg_quality}
  pyramid.top    {seed, jpeg, raw|null, ome_zarr|null, layout, jpeg_quality}
where layout = {size: [x, y, z], voxel_offset: [0, 0, minz], resolution: [x, y, z] nm}.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from emprocess import storage
from emprocess.registry import facts
from emprocess.align import transforms_url
from emprocess.align.bad import missing_slices
from emprocess.align.images import image_size
from emprocess.pyramid import ome_zarr
from emprocess.pyramid.aligned import (
    WARP_BASE_BYTES,
    WARP_BYTES_PER_SOURCE_PIXEL,
    WarpPayload,
    WarpResult,
    warp_memory,
    warp_outputs,
    write_aligned_slice,
)
from emprocess.pyramid.build import build_block, build_top
from emprocess.pyramid.intensity import IntensityPayload, IntensityResult, sample_slices, write_stack_rule
from emprocess.pyramid.layout import BLOCK, PyramidLayout
from emprocess.pyramid.meta import write_info, write_provenance
from emprocess.pyramid.writers import SEED_CHUNKS, zarr_chunk_key
from emprocess.payloads import MAX_TEXT, MAX_URLS, Coords, Layout, Location, Payload
from emprocess.stages import InputError, MiniTask, Result, RunContext, Stage

# Peak memory, as measured (the README's table): 1.5 GB for a whole 1024³ block (JPEG + raw), and for
# the top task 1.2 bytes per 4096 voxels of the volume.
SHARD_BASE_BYTES = 100_000_000
SHARD_BYTES_PER_VOXEL = 1.3
TOP_BASE_BYTES = 100_000_000
TOP_BYTES_PER_VOXEL = 1.2 / 4096
# The OME-Zarr volume adds two 64-slice slabs in flight to a block (measured: 0.33 GB more for incompressible
# noise), and to the top task its levels (1/7 of the seed) staged and encoded (estimated).
OME_ZARR_BLOCK_BYTES = 350_000_000
OME_ZARR_TOP_BYTES_PER_VOXEL = 2 / 7 / 4096

Quality = Annotated[int, Field(ge=1, le=100)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class Provenance(Payload):
    """What a volume's ``provenance`` file records: free text, kept as given."""

    description: Text
    sources: Annotated[list[Text], Field(max_length=MAX_URLS)]
    owners: Annotated[list[Text], Field(max_length=MAX_URLS)]
    method: dict[str, Any]


class PyramidMetaPayload(Payload):
    """The JPEG volume at ``jpeg`` (and the raw one at ``raw``, the OME-Zarr one at ``ome_zarr``) of
    geometry ``layout``."""

    jpeg: Location
    raw: Location | None = None
    ome_zarr: Location | None = None
    layout: Layout
    jpeg_quality: Quality
    provenance: Provenance


class ShardPayload(Payload):
    """Block ``block`` (i, j, k of the 1024³ grid) of the aligned volume at ``aligned``."""

    block: Coords
    aligned: Location
    jpeg: Location
    raw: Location | None = None
    ome_zarr: Location | None = None
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
    ome_zarr: Location | None = None
    layout: Layout
    jpeg_quality: Quality


class MetaResult(Result):
    """The info, provenance (and OME-Zarr metadata) files written, and the volume's number of scales."""

    files: list[str]
    scales: int


class ShardResult(Result):
    """The block, the scales written for it, and every file written."""

    block: Coords
    scales: list[int]
    files: list[str]


class TopResult(Result):
    """The scales above the blocks' and every file written."""

    scales: list[int]
    files: list[str]


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


def _ome_zarr_url(ctx: RunContext) -> str | None:
    return ctx.locations.ome_zarr if "ome-zarr" in ctx.conf.formats else None


# align.intensity ----------------------------------------------------------------------------------

def plan_intensity(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("pyramid"):
        return []
    conf = ctx.conf
    missing = set(missing_slices(conf))
    present = [z for z in conf.z_range if z not in missing]
    sample = [conf.slice_url(present[index]) for index in sample_slices(0, len(present) - 1)]
    return [{"key": "intensity", "payload": {"url": ctx.locations.intensity, "sample": sample}}]


def intensity_memory(payload: IntensityPayload) -> int:
    """Peak bytes: one decoded sample slice at a time (sizes from the headers), as a warp task's source."""
    largest = max(w * h for w, h in map(image_size, payload.sample))
    return WARP_BASE_BYTES + WARP_BYTES_PER_SOURCE_PIXEL * largest


def intensity_outputs(payload: IntensityPayload) -> list[str]:
    return [payload.url]


# align.warp ---------------------------------------------------------------------------------------

def plan_warp(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("pyramid"):
        return []
    transforms = read_transforms(ctx)
    conf = ctx.conf
    tasks = []
    replaced = transforms.get("replaced", {})
    for z in conf.z_range:
        if str(z) not in transforms.get("transforms", {}):
            raise InputError(f"{transforms_url(ctx.locations.process)}: no transform for slice {z}")
        source = replaced.get(str(z), z)  # a replaced slice renders its copy: the same source and transform
        tasks.append({"key": f"{z:08d}", "payload": {
            "z": z,
            "slice": conf.slice_url(source),
            "source_size": transforms.get("source_sizes", {}).get(str(z)),
            "transform": transforms["transforms"][str(z)],
            "width": transforms["width"],
            "height": transforms["height"],
            "depth": conf.maxz - conf.minz + 1,
            "z_index": z - conf.minz,
            "clip_limit": conf.clip_limit,
            "aligned": ctx.locations.aligned,
            "thumbnail": ctx.locations.thumbnail(z),
            "intensity": ctx.locations.intensity,
        }})
        if "elastic" in transforms:
            elastic = transforms["elastic"]
            tasks[-1]["payload"]["elastic"] = {"maps": elastic["maps"], "index": source - elastic["minz"],
                                               "stride": elastic["stride"], "grid": elastic["grid"]}
    return tasks


# pyramid.meta -------------------------------------------------------------------------------------

def plan_meta(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("pyramid"):
        return []
    conf = ctx.conf
    return [{"key": "info", "payload": {
        "jpeg": ctx.locations.jpeg,
        "raw": _raw_url(ctx),
        "ome_zarr": _ome_zarr_url(ctx),
        "layout": run_layout(ctx).to_json(),
        "jpeg_quality": conf.jpeg_quality,
        "provenance": {
            "description": f"{conf.id}: aligned EM stack, slices {conf.minz}..{conf.maxz}",
            "sources": [storage.join(conf.source, conf.image)],
            "owners": [conf.email] if conf.email else [],
            "method": {"task": "emprocess pyramid", "run_id": ctx.run_id, "conf": conf.to_json()},
        },
    }}]


def write_meta(payload: PyramidMetaPayload) -> MetaResult:
    """Write the info and provenance of the JPEG (and raw) volume, and the OME-Zarr metadata."""
    layout = _layout(payload)
    prov = payload.provenance
    written = []
    for url, encoding in _volumes(payload):
        written.append(write_info(url, layout, encoding, payload.jpeg_quality if encoding == "jpeg" else None))
        method = dict(prov.method, encoding=encoding)
        written.append(write_provenance(url, f"{prov.description} ({encoding})", prov.sources, prov.owners, method))
    if payload.ome_zarr:
        written += ome_zarr.write_metadata(payload.ome_zarr, layout)
    return MetaResult(files=written, scales=layout.num_scales)


def meta_outputs(payload: PyramidMetaPayload) -> list[str]:
    files = [storage.join(url, name) for url, _ in _volumes(payload) for name in ("info", "provenance")]
    if payload.ome_zarr:
        files += [storage.join(payload.ome_zarr, path) for path in ome_zarr.metadata_paths(_layout(payload))]
    return files


def _volumes(payload: PyramidMetaPayload | ShardPayload | TopPayload) -> list[tuple[str, str]]:
    return [(payload.jpeg, "jpeg")] + ([(payload.raw, "raw")] if payload.raw else [])


def _layout(payload: PyramidMetaPayload | ShardPayload | TopPayload) -> PyramidLayout:
    return PyramidLayout.from_json(payload.layout.model_dump())


# pyramid.shard ------------------------------------------------------------------------------------

def plan_shard(ctx: RunContext) -> list[MiniTask]:
    if not ctx.wants("pyramid"):
        return []
    layout = run_layout(ctx)
    seed = ctx.locations.pyramid_seed if layout.top_scales else None
    return [{"key": f"x{i}_y{j}_z{k}", "payload": {
        "block": [i, j, k],
        "aligned": ctx.locations.aligned,
        "jpeg": ctx.locations.jpeg,
        "raw": _raw_url(ctx),
        "ome_zarr": _ome_zarr_url(ctx),
        "seed": seed,
        "layout": layout.to_json(),
        "jpeg_quality": ctx.conf.jpeg_quality,
    }} for i, j, k in layout.blocks()]


def write_shard(payload: ShardPayload) -> ShardResult:
    """Write every block scale of one 1024³ block (JPEG, raw, OME-Zarr) and its seed for the top task."""
    layout = _layout(payload)
    build_block(payload.aligned, payload.jpeg, payload.raw, payload.seed, layout, tuple(payload.block),
                payload.jpeg_quality, payload.ome_zarr)
    return ShardResult(block=payload.block, scales=list(layout.block_scales), files=shard_outputs(payload))


def shard_memory(payload: ShardPayload) -> int:
    """Peak bytes of one block: grows with its voxels (a block at the volume's edge is smaller)."""
    voxels = 1
    for n, b in zip(payload.layout.size, payload.block):
        voxels *= min(BLOCK, n - b * BLOCK)
    return int(SHARD_BASE_BYTES + SHARD_BYTES_PER_VOXEL * voxels + (OME_ZARR_BLOCK_BYTES if payload.ome_zarr else 0))


def shard_outputs(payload: ShardPayload) -> list[str]:
    layout = _layout(payload)
    block = tuple(payload.block)
    files = [storage.join(url, path) for url, _ in _volumes(payload) for path in layout.block_shard_paths(block)]
    if payload.ome_zarr:
        files += [storage.join(payload.ome_zarr, path) for path in ome_zarr.block_shard_paths(layout, block)]
    if payload.seed:
        (x0, y0, z0), _ = layout.block_box(block, layout.block_scales[-1])
        files.append(storage.join(payload.seed, zarr_chunk_key((z0 // SEED_CHUNKS[0], y0 // SEED_CHUNKS[1],
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
        "seed": ctx.locations.pyramid_seed,
        "jpeg": ctx.locations.jpeg,
        "raw": _raw_url(ctx),
        "ome_zarr": _ome_zarr_url(ctx),
        "layout": layout.to_json(),
        "jpeg_quality": ctx.conf.jpeg_quality,
    }}]


def write_top(payload: TopPayload) -> TopResult:
    """Write the scales above the block scales, down to a single chunk."""
    layout = _layout(payload)
    build_top(payload.seed, payload.jpeg, payload.raw, layout, payload.jpeg_quality, payload.ome_zarr)
    return TopResult(scales=list(layout.top_scales), files=top_outputs(payload))


def top_memory(payload: TopPayload) -> int:
    """Peak bytes of the top task: grows with the whole volume's voxels."""
    x, y, z = payload.layout.size
    per_voxel = TOP_BYTES_PER_VOXEL + (OME_ZARR_TOP_BYTES_PER_VOXEL if payload.ome_zarr else 0)
    return int(TOP_BASE_BYTES + per_voxel * x * y * z)


def top_outputs(payload: TopPayload) -> list[str]:
    layout = _layout(payload)
    files = [storage.join(url, path) for url, _ in _volumes(payload) for path in layout.top_shard_paths()]
    if payload.ome_zarr:
        files += [storage.join(payload.ome_zarr, path) for path in ome_zarr.top_shard_paths(layout)]
    return files


def outputs_written(payload: Payload, result: Result) -> bool:
    """Every file the work reports having written (its result's ``files``) is there."""
    return all(storage.exists(url) for url in result.files)


INTENSITY = Stage(**facts("align.intensity"), plan=plan_intensity, work=write_stack_rule, payload=IntensityPayload,
                  result=IntensityResult, check=outputs_written, memory=intensity_memory)
WARP = Stage(**facts("align.warp"), plan=plan_warp, work=write_aligned_slice, payload=WarpPayload, result=WarpResult,
             check=outputs_written, memory=warp_memory)
META = Stage(**facts("pyramid.meta"), plan=plan_meta, work=write_meta, payload=PyramidMetaPayload, result=MetaResult,
             check=outputs_written)
SHARD = Stage(**facts("pyramid.shard"), plan=plan_shard, work=write_shard, payload=ShardPayload, result=ShardResult,
              check=outputs_written, memory=shard_memory)
TOP = Stage(**facts("pyramid.top"), plan=plan_top, work=write_top, payload=TopPayload, result=TopResult,
            check=outputs_written, memory=top_memory)
ALIGN_STAGES = [INTENSITY, WARP]
STAGES = [META, SHARD, TOP]

_OUTPUTS = {stage.name: (stage, outputs) for stage, outputs in ((INTENSITY, intensity_outputs), (WARP, warp_outputs),
                                                                  (META, meta_outputs), (SHARD, shard_outputs),
                                                                  (TOP, top_outputs))}


def planned_outputs(stage: str, payload: dict) -> list[str]:
    """The files one mini-task of ``stage`` may write, from its payload alone."""
    found, outputs = _OUTPUTS[stage]
    return outputs(found.parse_payload(payload))
