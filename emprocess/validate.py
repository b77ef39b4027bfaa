"""Check a run before anything is written: conf, every slice, and the output locations.

Every slice is opened and its header read (size, bit depth) and PNG slices must end in an IEND chunk,
which catches truncated uploads without decoding thousands of large slices; the first and last
slices are decoded in full. Output locations that already hold a run with another conf are refused,
so a re-run can only resume the same work.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.config import ConfError
from emprocess.stages import InputError, RunContext

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def check_slice(url: str) -> tuple[int, int]:
    """(width, height) of one slice; raises ConfError naming the URL when it is missing or damaged."""
    from emprocess.align.images import image_size

    try:
        size = image_size(url)
        if storage.read_range(url, 0, 8) == PNG_MAGIC and storage.read_range(url, -12) != PNG_IEND:
            raise InputError(f"{url}: PNG is truncated (no IEND chunk at the end)")
    except FileNotFoundError:
        raise ConfError(f"slice {url} does not exist") from None
    except (InputError, ValueError) as err:
        raise ConfError(f"slice {url} is unreadable: {err}") from None
    return size


def check_slices(ctx: RunContext, threads: int = 16) -> dict:
    """Every slice of ``minz..maxz`` exists, is a readable image, and all share one size."""
    from emprocess.align.images import read_image

    conf = ctx.conf
    zs = list(conf.z_range)
    with ThreadPoolExecutor(max_workers=min(threads, len(zs))) as pool:
        sizes = dict(zip(zs, pool.map(lambda z: check_slice(conf.slice_url(z)), zs)))
    first = sizes[zs[0]]
    for z, size in sizes.items():
        if size != first:
            raise ConfError(
                f"slice {conf.slice_url(z)} is {size[0]}x{size[1]} px but slice "
                f"{conf.slice_url(zs[0])} is {first[0]}x{first[1]} px; all slices must share one size"
            )
    dtypes = set()
    for z in {zs[0], zs[-1]}:
        try:
            dtypes.add(str(read_image(conf.slice_url(z)).dtype))
        except (InputError, ValueError) as err:
            raise ConfError(f"slice {conf.slice_url(z)} does not decode: {err}") from None
    return {"slices": len(zs), "width": first[0], "height": first[1], "dtypes": sorted(dtypes)}


def check_locations(ctx: RunContext) -> None:
    """Refuse locations that hold a run (started or complete) with another conf."""
    mine = ctx.conf.to_json()
    for name in ("complete.json", "init.json"):
        previous = storage.read_json_if_exists(storage.join(ctx.locations.process, name))
        if previous is not None and previous.get("conf") != mine:
            raise ConfError(
                f"{storage.join(ctx.locations.process, name)} holds run "
                f"{previous.get('run_id')!r} with another conf; use another run id or the same conf"
            )


def check_reused_alignment(ctx: RunContext) -> None:
    from emprocess.config import run_key

    reuse = ctx.conf.reuse_alignment
    if reuse is None:
        return
    url = transforms_url(storage.run_locations(ctx.conf.source, run_key(reuse, ctx.conf.source)).process)
    if not storage.exists(url):
        raise ConfError(f"'reuse_alignment': run {reuse!r} has no transforms at {url}")


def validate_run(ctx: RunContext) -> dict:
    """All checks, in order of cost; returns what was found (the DAG's validate task returns it, and
    Airflow logs that)."""
    check_locations(ctx)
    check_reused_alignment(ctx)
    found = check_slices(ctx) if ctx.wants("align") or ctx.wants("pyramid") else {}
    return found
