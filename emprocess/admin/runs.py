"""``emprocess runs``: a source's runs — list them with their state and the size of each of their four
locations, delete one with everything it wrote.

A source's runs are the folders of its process location (``B_process/<run key>``). ``runs delete``
deletes the run's process folder last, so a deletion cut short leaves the run listed, and running it
again deletes what is left.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from emprocess import run_layout, storage
from emprocess.admin.actions import add_safety_flags, carry_out
from emprocess.admin.buckets import delete_steps
from emprocess.errors import InputError
from emprocess.storage.bucket_contents import object_sizes

RUN_KEY_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")  # what config.run_key makes
LOCATIONS = ("process", "ng", "chunk", "tmp")
LISTING_THREADS = 8


def add_parsers(sub) -> None:
    p = sub.add_parser("list", help="every run of a source: key, id, state, start, size of each location")
    p.add_argument("source", metavar="SOURCE", help="the runs' source: gs://B, s3://B or file:///folder")
    p.add_argument("--json", action="store_true", help="print the runs as JSON (sizes in bytes)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("delete", help="delete everything a run wrote: its process folder and its ng, chunk "
                                      "and tmp buckets (folders for file://)")
    p.add_argument("run_key", metavar="RUN_KEY", help="as `emprocess runs list` shows it")
    p.add_argument("--source", required=True, help="the run's source")
    add_safety_flags(p)
    p.set_defaults(func=cmd_delete)


def _process_sizes(source: str) -> dict[str, int]:
    """Each run key's process folder size in bytes, by key."""
    root = storage.parse(run_layout.process_root(source))
    sizes: dict[str, int] = {}
    if root.scheme == "file" and Path(root.path).is_dir():  # a run folder may be empty yet
        sizes = {d.name: 0 for d in Path(root.path).iterdir() if d.is_dir()}
    for key, size in (object_sizes(root) or {}).items():
        run_key, separator, _ = key.partition("/")
        if separator:
            sizes[run_key] = sizes.get(run_key, 0) + size
    return {key: size for key, size in sizes.items() if RUN_KEY_RE.fullmatch(key)}


def list_runs(source: str) -> list[dict]:
    """Every run of ``source``, by run key: its id and start (init.json), state (complete when
    complete.json exists, else report.json's state, else incomplete), locations, and their sizes in
    bytes (None for a location that does not exist)."""
    process_sizes = _process_sizes(source)
    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        return list(pool.map(lambda key: _run(source, key, process_sizes[key]), sorted(process_sizes)))


def _run(source: str, key: str, process_size: int) -> dict:
    locations = run_layout.run_locations(source, key)
    init = storage.read_json_if_exists(locations.init) or {}
    report = storage.read_json_if_exists(locations.report("json")) or {}
    if storage.exists(locations.complete):
        state = "complete"
    else:
        state = report.get("state") or "incomplete"
    sizes = {"process": process_size}
    for name in LOCATIONS[1:]:
        objects = object_sizes(getattr(locations, name))
        sizes[name] = None if objects is None else sum(objects.values())
    return {"run_key": key, "run_id": init.get("run_id"), "state": state, "started": init.get("started"),
            "sizes": sizes, "locations": vars(locations)}


def human_size(size: int | None) -> str:
    """``size`` bytes as a person reads it (``-`` for a location that does not exist)."""
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


def runs_table(runs: list[dict]) -> str:
    header = ["RUN KEY", "RUN ID", "STATE", "STARTED", *(name.upper() for name in LOCATIONS)]
    rows = [[run["run_key"], run["run_id"] or "-", run["state"], run["started"] or "-",
             *(human_size(run["sizes"][name]) for name in LOCATIONS)] for run in runs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def cmd_list(args) -> int:
    runs = list_runs(args.source)
    if args.json:
        print(json.dumps(runs, indent=2))
    elif runs:
        print(runs_table(runs))
    else:
        print(f"no runs of {args.source} ({run_layout.process_root(args.source)} holds none)")
    return 0


def run_urls(source: str, key: str) -> list[str]:
    """The run's locations in the order ``runs delete`` deletes them: process folder last."""
    if not RUN_KEY_RE.fullmatch(key):
        raise InputError(f"run key {key!r}: not a run key (lowercase letters, digits and '-'); "
                         f"`emprocess runs list SOURCE` lists them")
    locations = run_layout.run_locations(source, key)
    return [locations.ng, locations.chunk, locations.tmp, locations.process]


def delete_run(source: str, key: str, *, dry_run: bool, yes: bool, out: Callable[[str], None] = print) -> None:
    """Delete the run's ng, chunk and tmp buckets (folders) and its process folder; the shared
    process bucket stays. What is already gone is said so."""
    steps = delete_steps(run_urls(source, key), out=out)
    carry_out(steps, dry_run=dry_run, yes=yes, destructive=True, out=out,
              summary=f"delete run {key} of {source} ({len(steps)} locations)")


def cmd_delete(args) -> int:
    delete_run(args.source, args.run_key, dry_run=args.dry_run, yes=args.yes)
    return 0
