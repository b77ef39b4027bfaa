"""The segmentation inputs' checks: each rule once, for ``validate`` (``check_segmentation``, before
the run writes anything) and for cg.meta (``prepare.prepare_graph``), which checks again what it
relies on, as it can run alone and only it knows the aligned volume's exact size.

The aligned volume before alignment (``frame_before_alignment``): its depth is the slice count; its
width and height are exact when the run has transforms already (a resumed run, or chunkedgraph
alone against an existing volume), reuses another run's (their width and height) or does not align
(``skip_align``, a single slice: the slices' size). A pairwise alignment's canvas is the bounding box
of the aligned slices, which holds the first slice whole (its transform is the identity shifted by
whole pixels), so validate knows only that it is at least the slices' size; cg.meta checks the exact
size against ``transforms.json``. With neither align nor pyramid and no transforms, the watershed's
own size is the frame and nothing is compared.

The watershed's chunks are sampled, not read: a missing chunk is legitimately all background in
precomputed, so only a scale without any chunk file is refused, and up to ``SAMPLED_CHUNKS`` chunks
spread across the volume must decode (a damaged one would otherwise fail a cg.layer2 job hours in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emprocess import corrupt, storage
from emprocess.align import transforms_url
from emprocess.chunkedgraph import volumes
from emprocess.chunkedgraph.agglomeration import load_table
from emprocess.chunkedgraph.ids import IdLayout, layer_count
from emprocess.chunkedgraph.layers import MAX_LAYERS
from emprocess.config import CHUNK_SIDES, ConfError
from emprocess.stages import InputError, RunContext

# Every layer-2 chunk is a cg.layer2 and a cg.flatten mini-task with its cache file, all listed by
# their plans: past 2^21 chunks (at 256³ chunks, a volume of 3.5·10^13 voxels) the run's bookkeeping
# outweighs its work; a larger chunk_size builds the same graph.
MAX_CHUNKS = 1 << 21
SAMPLED_CHUNKS = 16


def check_chunk_size(value) -> tuple[int, int, int]:
    """The conf's bounds, checked again for a payload that did not come through the conf."""
    low, high = CHUNK_SIDES
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(isinstance(v, int) for v in value):
        raise InputError(f"segmentation.chunk_size must be three integers, got {value!r}")
    if any(not low <= v <= high or v & (v - 1) for v in value):
        raise InputError(f"segmentation.chunk_size entries must be powers of two from {low} to {high}, "
                         f"got {list(value)}")
    return tuple(value)


def watershed_scale(url: str) -> dict:
    """Scale 0 of a valid watershed; InputError names the URL and what is wrong. The info is read
    here and parsed apart, so that a failed read stays retryable; tensorstore then checks the rest."""
    try:
        data = storage.read(volumes.info_url(url))
    except FileNotFoundError:
        raise InputError(f"watershed {url}: no precomputed volume there ({volumes.info_url(url)} not found)") from None
    info = corrupt.parse_json(data, f"watershed {url}: its info file {volumes.info_url(url)}")
    if not isinstance(info, dict) or info.get("type") != "segmentation":
        kind = info.get("type") if isinstance(info, dict) else type(info).__name__
        raise InputError(f"watershed {url}: not a segmentation (type {kind!r})")
    if info.get("data_type") not in ("uint32", "uint64"):
        raise InputError(f"watershed {url}: data_type {info.get('data_type')!r}, expected uint32 or uint64")
    if info.get("num_channels", 1) != 1 or not info.get("scales"):
        raise InputError(f"watershed {url}: expected one channel and at least one scale")
    volumes.open_scale(url)  # the rest of the info (scale 0's size, chunking, encoding) as chunk jobs will read it
    return info["scales"][0]


def check_grid(watershed: str, size: tuple, chunk_size: tuple) -> tuple[tuple[int, int, int], int]:
    """(layer-2 chunk grid, layer count) of the graph; refused when the IDs cannot number it or it
    has more than MAX_CHUNKS chunks."""
    grid = tuple(math.ceil(s / c) for s, c in zip(size, chunk_size))
    n_layers = layer_count(grid)
    if n_layers > MAX_LAYERS:
        raise InputError(
            f"watershed {watershed}: {list(grid)} chunks of {list(chunk_size)} need {n_layers} layers; "
            f"at most {MAX_LAYERS} are supported, use a larger chunk_size"
        )
    if math.prod(grid) > MAX_CHUNKS:
        raise InputError(
            f"watershed {watershed}: {list(grid)} chunks of {list(chunk_size)} make {math.prod(grid)} chunks; "
            f"at most {MAX_CHUNKS} are supported, use a larger chunk_size"
        )
    if math.prod(chunk_size) >= 1 << IdLayout(n_layers).segment_bits(1):
        raise InputError(f"chunk_size {list(chunk_size)} holds more voxels than layer-1 IDs can number")
    return grid, n_layers


@dataclass(frozen=True)
class Frame:
    """What is known of the run's aligned volume (x, y, z): its size, or, when not ``exact``, its
    depth and the least width and height; ``source`` says where that comes from."""

    size: tuple[int, int, int]
    source: str
    exact: bool = True

    def check(self, watershed: str, size: tuple) -> None:
        size = tuple(int(s) for s in size)
        if self.exact and size != self.size:
            raise InputError(f"watershed {watershed}: size {list(size)} does not match the run's aligned volume "
                             f"{list(self.size)} ({self.source})")
        width, height, depth = self.size
        if not self.exact and (size[2] != depth or size[0] < width or size[1] < height):
            raise InputError(f"watershed {watershed}: size {list(size)} does not match the run's aligned volume: "
                             f"{depth} slices of at least {width}x{height} px ({self.source})")


def transforms_frame(url: str, required: bool) -> Frame | None:
    """The aligned volume of the ``transforms.json`` at ``url``; None when there is none and the run
    does not need one (chunkedgraph alone: the watershed's own size is the frame)."""
    try:
        data = storage.read(url)
    except FileNotFoundError:
        if required:
            raise InputError(f"{url} not found: the run's aligned volume size is unknown (align has not run)") from None
        return None
    transforms = corrupt.parse_json(data, url)
    try:
        depth = int(transforms["maxz"]) - int(transforms["minz"]) + 1
        return Frame((int(transforms["width"]), int(transforms["height"]), depth), url)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{url}: no volume size in it ({type(err).__name__}: {err})") from None


def frame_before_alignment(ctx: RunContext, slices: dict) -> Frame | None:
    """What validate can know of the aligned volume (see the module docstring); ``slices`` is what
    ``validate.check_slices`` found (width, height), given when align or pyramid is wanted."""
    conf = ctx.conf
    own = transforms_url(ctx.locations.process)
    if not ctx.wants("align") or storage.exists(own):
        return transforms_frame(own, ctx.wants("pyramid"))
    depth = len(conf.z_range)
    if conf.reuse_alignment:
        reused = transforms_frame(transforms_url(conf.reused_process()), required=True)
        return Frame((*reused.size[:2], depth), f"the width and height of {reused.source}, {depth} slices")
    width, height = slices["width"], slices["height"]
    if conf.skip_align or conf.minz == conf.maxz:
        return Frame((width, height, depth), f"{depth} slices of {width}x{height} px, not aligned")
    return Frame((width, height, depth), f"{depth} slices of {width}x{height} px; alignment may widen them",
                 exact=False)


def check_chunks(url: str, scale: dict) -> int:
    """How many of up to SAMPLED_CHUNKS storage chunks, spread evenly over scale 0, exist (all of
    them decode); a scale with no chunk file at all is refused. Each is read for one voxel, which
    fetches and decodes the whole chunk but holds only that voxel."""
    store = volumes.open_scale(url, fill_missing=False)
    chunk = np.asarray(scale["chunk_sizes"][0], dtype=np.int64)
    grid = -(-np.asarray(scale["size"], dtype=np.int64) // chunk)
    picks = np.unique(np.linspace(0, int(np.prod(grid)) - 1, SAMPLED_CHUNKS).round().astype(np.int64))
    corners = [np.array(np.unravel_index(i, grid)) * chunk for i in picks]
    reads = [volumes.read_later(store, lo, lo + 1) for lo in corners]
    present = 0
    for read in reads:
        try:
            read.result()
            present += 1
        except ValueError as err:
            if not storage.tensorstore_message(err).startswith("NOT_FOUND:"):
                raise
    if not present and not storage.listdir(storage.join(url, scale["key"])):
        raise InputError(f"watershed {url}: no chunk files under {storage.join(url, scale['key'])}")
    return present


def check_segmentation(ctx: RunContext, slices: dict) -> dict:
    """validate's check of the segmentation inputs, in full: the watershed (info, size against the
    aligned volume as far as it is known, chunk grid, sampled chunks) and the agglomeration table.
    Refusals are ConfErrors with cg.meta's messages."""
    if not ctx.wants("chunkedgraph"):
        return {}
    segmentation = ctx.conf.segmentation
    watershed = segmentation.watershed
    try:
        chunk_size = check_chunk_size(segmentation.chunk_size)
        scale = watershed_scale(watershed)
        size = tuple(int(s) for s in scale["size"])
        frame = frame_before_alignment(ctx, slices)
        if frame is not None:
            frame.check(watershed, size)
        grid, n_layers = check_grid(watershed, size, chunk_size)
        sampled = check_chunks(watershed, scale)
        rows = load_table(segmentation.agglomeration)[0].size if segmentation.agglomeration else 0
    except InputError as err:
        raise ConfError(str(err)) from None
    return {"watershed_size": list(size), "grid": list(grid), "n_layers": n_layers, "sampled_chunks": sampled,
            "agglomeration_rows": int(rows)}
