"""Check a run before anything is written: conf, every slice, and the output locations.

Every slice's header is read (size, channels, bit depth, sample type, TIFF compression: two ranged
reads, never the pixels) and PNG slices must end in an IEND chunk, which catches truncated uploads,
colour or float slices and a stack of mixed sizes or depths anywhere in thousands of large slices
without decoding one. Pixel data that does not decode is found by the work, as an InputError (4xx).
Output locations that already hold a run with another conf are refused, so a re-run can only resume
the same work.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.config import MIN_ALIGN_SIDE, ConfError, RunConf
from emprocess.stages import InputError, RunContext

if TYPE_CHECKING:
    from emprocess.align.images import Header


PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
MAX_NAMED = 20  # offending slices a refusal names, per problem; the rest are counted
MISSING = "does not exist or is not a file"
SLICE_RULE = "each must be an 8- or 16-bit grayscale PNG or TIFF, all of one size and bit depth"


def check_slice(url: str) -> Header | str:
    """The slice's header (``images.Header``), or why it cannot be used: a phrase to follow its name."""
    from emprocess.align.images import read_header

    try:
        header = read_header(url)
        if header.format == "PNG" and storage.read_range(url, -len(PNG_IEND)) != PNG_IEND:
            return "is truncated (a PNG must end in an IEND chunk)"
    except FileNotFoundError:
        return MISSING
    except (InputError, ValueError) as err:
        return f"is unreadable: {str(err).removeprefix(f'{url}: ')}"
    return header.problem() or header


def check_slices(ctx: RunContext, threads: int = 16) -> dict:
    """Every slice of ``minz..maxz`` is usable (SLICE_RULE) and big enough to align at the conf's
    ``downsample_factor``; under ``missing_slices: "replace"`` a missing one is listed (``missing``)
    instead, as long as one slice exists. A refusal names every offending slice: up to MAX_NAMED per
    problem, then a count."""
    conf = ctx.conf
    zs = list(conf.z_range)
    with ThreadPoolExecutor(max_workers=min(threads, len(zs))) as pool:
        found = dict(zip(zs, pool.map(lambda z: check_slice(conf.slice_url(z)), zs)))
    missing = [z for z, r in found.items() if r == MISSING] if conf.missing_slices == "replace" else []
    if len(missing) == len(zs):
        raise ConfError(f"no slice of {conf.image % conf.minz}..{conf.image % conf.maxz} exists under {conf.source}")
    lines = []
    refused = {z: r for z, r in found.items() if isinstance(r, str) and z not in missing}
    for phrase, bad in _grouped(refused).items():
        more = f"; likewise {_slices(len(bad) - 1)}: {_names(conf, bad[1:], MAX_NAMED - 1)}" if len(bad) > 1 else ""
        lines.append(f"{conf.image % bad[0]} {phrase}{more}")
    headers = {z: r for z, r in found.items() if not isinstance(r, str)}
    first = next(iter(headers), None)
    for describe in (lambda h: f"{h.width}x{h.height} px", lambda h: f"{h.bits}-bit"):
        common = describe(headers[first]) if headers else None
        for value, bad in _grouped({z: describe(h) for z, h in headers.items()}).items():
            if value != common:
                verb = "is" if len(bad) == 1 else "are"
                lines.append(f"{_slices(len(bad))} {verb} {value} but {conf.image % first} is {common}: "
                             f"{_names(conf, bad)}")
    if lines:
        raise ConfError("\n  ".join([f"slices under {conf.source} cannot be used ({SLICE_RULE}):", *lines]))
    width, height = headers[first].size
    check_align_size(ctx, width, height)
    return {"slices": len(zs), "width": width, "height": height, "bits": headers[first].bits, "missing": missing}


def check_align_size(ctx: RunContext, width: int, height: int) -> None:
    """When slices are aligned, they keep MIN_ALIGN_SIDE px a side once downsampled: fewer hold too few
    features to register."""
    from emprocess.align.stages import plan_pairs

    factor, side = ctx.conf.downsample_factor, min(width, height)
    if side // factor >= MIN_ALIGN_SIDE or not plan_pairs(ctx):
        return
    if side < MIN_ALIGN_SIDE:
        raise ConfError(f"slices are {width}x{height} px ({ctx.conf.image % ctx.conf.minz} and all others): too "
                        f"small to align, which needs {MIN_ALIGN_SIDE} px a side; give 'skip_align': true")
    raise ConfError(f"'downsample_factor': {factor} shrinks the {width}x{height} px slices to {width // factor}x"
                    f"{height // factor} px, below the {MIN_ALIGN_SIDE} px a side alignment needs; "
                    f"use at most {side // MIN_ALIGN_SIDE}")


def _grouped(values: dict) -> dict:
    """z → value as value → its zs (in z order)."""
    groups = defaultdict(list)
    for z, value in values.items():
        groups[value].append(z)
    return groups


def _slices(count: int) -> str:
    return f"{count} slice" + ("" if count == 1 else "s")


def _names(conf: RunConf, zs: list[int], limit: int = MAX_NAMED) -> str:
    """The names of the first ``limit`` of ``zs``, then how many more."""
    names = ", ".join(conf.image % z for z in zs[:limit])
    return names + (f" and {len(zs) - limit} more" if len(zs) > limit else "")


def check_locations(ctx: RunContext) -> None:
    """Refuse locations that hold a run (started or complete) with another conf."""
    mine = ctx.conf.to_json()
    for url in (ctx.locations.complete, ctx.locations.init):
        previous = storage.read_json_if_exists(url)
        if previous is not None and previous.get("conf") != mine:
            raise ConfError(f"{url} holds run {previous.get('run_id')!r} with another conf; use another run id "
                            f"or the same conf")


def check_reused_alignment(ctx: RunContext) -> None:
    reused = ctx.conf.reused_process()
    if reused is None:
        return
    url = transforms_url(reused)
    if not storage.exists(url):
        raise ConfError(f"'reuse_alignment': run {ctx.conf.reuse_alignment!r} has no transforms at {url}")


def validate_run(ctx: RunContext) -> dict:
    """All checks, in order of cost; returns what was found (the DAG's validate task returns it, and
    Airflow logs that)."""
    from emprocess.chunkedgraph.inputs import check_segmentation  # tensorstore, only when a run is checked

    try:  # first, and in bounded time: on a store that does not answer every later check would wait
        storage.probe(ctx.conf.slice_url(ctx.conf.minz), folder=ctx.conf.source)
        storage.probe(ctx.locations.init)
    except storage.StorageError as err:
        raise ConfError(str(err)) from None
    check_locations(ctx)
    check_reused_alignment(ctx)
    found = check_slices(ctx) if ctx.wants("align") or ctx.wants("pyramid") else {}
    found.update(check_segmentation(ctx, found))
    return found
