"""``emprocess admin renumber``: give an acquisition's images the consecutive numbering a run conf's
``image`` template needs (``img00000.png``, ``img00001.png``, …), without touching the originals.

Microscopes name slices in their own ways (``s2.png``, ``s10.png``; ``tile_z0031_c1.tif``), often with
gaps; a run reads ``source/<image % z>`` for every z. The images are linked (a local folder) or copied
(a bucket, or ``--copy``) under their new names, and ``renumber.json`` in DST records each new name's
original URL and the rule used, so a lab can trace an output slice back to its file. Never overwrites:
a re-run with the same inputs finds everything in place, a different numbering in DST is refused.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from emprocess.admin.actions import Step, add_safety_flags, carry_out
from emprocess.errors import InputError

MAPPING_FILE = "renumber.json"
_NAME_FORMAT_RE = re.compile(r"[^%/]*%0?\d*d[^%/]*")  # one printf integer field, no folders


@dataclass(frozen=True)
class Rule:
    """How the images are chosen, ordered and named; recorded in the mapping file."""

    pattern: str
    regex: str | None
    start: int
    name_format: str

    def as_json(self) -> dict:
        return {"pattern": self.pattern, "order": "regex" if self.regex else "natural", "regex": self.regex,
                "start": self.start, "name_format": self.name_format}


@dataclass(frozen=True)
class Plan:
    """What the renumbering amounts to: ``images`` maps each new name to its original's URL."""

    images: dict[str, str]
    skipped: list[str]
    mapping: dict

    @property
    def summary(self) -> str:
        names = list(self.images)
        skipped = f"; {len(self.skipped)} skipped (not matching --regex)" if self.skipped else ""
        return f"{len(names)} images numbered {names[0]} .. {names[-1]}{skipped}"


def add_parser(admin) -> None:
    p = admin.add_parser("renumber", help="give an acquisition's images a consecutive numbering (img00000.png, "
                                          "…) by links or copies, with a mapping file back to the originals")
    p.add_argument("src", metavar="SRC", help="folder or bucket holding the images (its direct files)")
    p.add_argument("dst", metavar="DST", help="folder or bucket to hold the renumbered images; must not be SRC")
    p.add_argument("--pattern", default="*", metavar="GLOB", help="take only file names matching GLOB (default: "
                                                                 "every file directly in SRC but hidden ones and "
                                                                 f"a {MAPPING_FILE})")
    p.add_argument("--regex", metavar="REGEX", help="order by the integer its first group matches in each "
                                                    "name (searched); names it does not match are skipped. "
                                                    "Default: natural order of the names (s2 before s10)")
    p.add_argument("--start", type=int, default=0, metavar="N", help="number of the first image (default 0)")
    p.add_argument("--name-format", default="img%05d", metavar="FORMAT",
                   help="printf template of the new names, without extension (default img%%05d); "
                        "each file keeps its extension")
    p.add_argument("--copy", action="store_true", help="copy local files instead of linking them "
                                                       "(bucket objects are always copied)")
    add_safety_flags(p, destructive=False)
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    from emprocess import storage

    src, dst = storage.parse(args.src), storage.parse(args.dst)
    if _same_location(src, dst):
        raise InputError(f"SRC and DST are the same location ({src}); renumber into another folder or bucket")
    rule = Rule(args.pattern, args.regex, args.start, args.name_format)
    plan = make_plan(src, rule)
    link = src.scheme == dst.scheme == "file" and not args.copy
    carry_out(_steps(plan, dst, link), dry_run=args.dry_run)
    made = " (dry run: nothing made)" if args.dry_run else f"; mapping: {storage.join(dst, MAPPING_FILE)}"
    print(plan.summary + made)
    return 0


def make_plan(src, rule: Rule) -> Plan:
    """Choose, order and name SRC's images by ``rule``; InputError when that leaves none, two share a
    number, or the rule itself is unusable. Reads only."""
    from emprocess import storage

    _check_rule(rule)
    files = [key for key in storage.listdir(src) if "/" not in key and not key.startswith(".")
             and key != MAPPING_FILE]
    if not files:
        raise InputError(f"{src} holds no files; is it the right location?")
    chosen = [name for name in files if fnmatch.fnmatchcase(name, rule.pattern)]
    if not chosen:
        raise InputError(f"{src} holds {len(files)} files, none matching --pattern {rule.pattern!r}")
    ordered, skipped = _ordered_by_regex(chosen, rule.regex, src) if rule.regex else (_natural_order(chosen), [])
    if not ordered:
        raise InputError(f"{src}: none of the {len(chosen)} files matching --pattern {rule.pattern!r} matches "
                         f"--regex {rule.regex!r}")
    images = {rule.name_format % number + PurePosixPath(name).suffix: storage.join(src, name)
              for number, name in enumerate(ordered, start=rule.start)}
    skipped_urls = [storage.join(src, name) for name in skipped]
    mapping = {"rule": rule.as_json(), "source": str(src), "images": images, "skipped": skipped_urls}
    return Plan(images, skipped_urls, mapping)


def _check_rule(rule: Rule) -> None:
    if not _NAME_FORMAT_RE.fullmatch(rule.name_format):
        raise InputError(f"--name-format {rule.name_format!r} must hold exactly one printf integer field such as "
                         f"%05d, and no '/'")
    if rule.start < 0:
        raise InputError(f"--start must be 0 or more (a run's minz), got {rule.start}")
    if rule.regex is not None:
        try:
            groups = re.compile(rule.regex).groups
        except re.error as err:
            raise InputError(f"--regex {rule.regex!r} is not a regular expression: {err}") from None
        if groups < 1:
            raise InputError(f"--regex {rule.regex!r} has no group; put the slice number in the first, e.g. "
                             r"'s(\d+)'")


def _natural_order(names: list[str]) -> list[str]:
    """``s2`` before ``s10``: numbers in names compare as numbers."""
    from natsort import natsorted

    return natsorted(names)


def _ordered_by_regex(names: list[str], regex: str, src) -> tuple[list[str], list[str]]:
    """Names ordered by the integer of ``regex``'s first group, and the names it does not match."""
    pattern = re.compile(regex)
    numbered: dict[int, str] = {}
    skipped = []
    for name in names:
        match = pattern.search(name)
        if match is None or match.group(1) is None:
            skipped.append(name)
            continue
        try:
            number = int(match.group(1))
        except ValueError:
            raise InputError(f"{src}: --regex {regex!r} matched {match.group(1)!r} in {name!r}, which is not an "
                             f"integer; make the first group match only digits") from None
        if number in numbered:
            raise InputError(f"{src}: {numbered[number]!r} and {name!r} both have number {number} by --regex "
                             f"{regex!r}; move one away or narrow --pattern")
        numbered[number] = name
    return [numbered[number] for number in sorted(numbered)], skipped


def _same_location(src, dst) -> bool:
    if src.scheme == dst.scheme == "file":
        return os.path.realpath(src.path) == os.path.realpath(dst.path)
    return src == dst


def _steps(plan: Plan, dst, link: bool) -> list[Step]:
    """The links or copies still to make, then the mapping file; what is already in place is left.
    InputError naming the file when DST holds anything else: renumbering never overwrites."""
    from emprocess import storage

    steps = []
    if _exists(dst):
        held = {key for key in storage.listdir(dst) if "/" not in key}
    else:
        held = set()
        steps.append(Step(f"make {dst}", lambda: storage.ensure_location(dst)))
    strays = sorted(held - set(plan.images) - {MAPPING_FILE})
    if strays:
        more = f" (nor are {len(strays) - 1} more files in DST)" if len(strays) > 1 else ""
        raise InputError(f"{storage.join(dst, strays[0])} is not part of this numbering{more}; renumber into an "
                         f"empty folder or bucket")
    for name, original in plan.images.items():
        target = storage.join(dst, name)
        if name in held:
            _check_in_place(target, original, link)
            continue
        if link:
            steps.append(Step(f"link {target} -> {original}", _symlink(original, target)))
        else:
            steps.append(Step(f"copy {original} to {target}", _copy(original, target)))
    mapping_url = storage.join(dst, MAPPING_FILE)
    if MAPPING_FILE not in held:
        steps.append(Step(f"write {mapping_url}", lambda: storage.write_json(mapping_url, plan.mapping)))
    elif storage.read_json(mapping_url) != plan.mapping:
        raise InputError(f"{mapping_url} records a different numbering (other files or rule); renumber into an "
                         f"empty folder or bucket")
    return steps


def _exists(dst) -> bool:
    """Whether DST's folder or bucket is there (a missing one is made first)."""
    from emprocess.storage.bucket_contents import location_exists

    return location_exists(dst if dst.scheme == "file" else type(dst)(dst.scheme, dst.bucket, ""))


def _check_in_place(target: str, original: str, link: bool) -> None:
    """Pass when ``target`` is what this renumbering would make of ``original``; else InputError."""
    from emprocess import storage

    if link:
        path = storage.parse(target).path
        if os.path.islink(path) and os.readlink(path) == storage.parse(original).path:
            return
        made = f"is not a link to {original}"
    elif storage.parse(target).scheme == "file" and os.path.islink(storage.parse(target).path):
        made = "is a link, not a copy"  # a copy must outlive its original
    elif storage.read(target) == storage.read(original):
        return
    else:
        made = f"differs from {original}"
    raise InputError(f"{target} already exists and {made}; renumbering never overwrites")


def _symlink(original: str, target: str):
    from emprocess import storage

    return lambda: os.symlink(storage.parse(original).path, storage.parse(target).path)


def _copy(original: str, target: str):
    """A copy through storage: the same code for folders and buckets, written atomically (no partial
    file left to be taken for a copy)."""
    from emprocess import storage

    return lambda: storage.write(target, storage.read(original))
