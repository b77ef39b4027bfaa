"""``emprocess admin bucket``: delete, archive, open to the public and close again a bucket (gs://,
s3://) or, where it means something, a folder (file://).

A location that does not exist: ``delete`` says it is already gone and succeeds, so running it again
after an interruption, or after it finished, is no error; ``archive``, ``set-public`` and
``set-private`` fail with a message naming the bucket. Access denied fails, naming the bucket, in
every command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from emprocess.admin.actions import Step, add_safety_flags, carry_out
from emprocess.errors import InputError
from emprocess.storage import Url, allowed, make_public
from emprocess.storage.bucket_contents import (
    ARCHIVE_CLASS,
    GCS_BATCH,
    S3_BATCH,
    archive,
    delete_location,
    location_exists,
)
from emprocess.storage.bucket_errors import bucket_errors, refuse_folders, require_bucket
from emprocess.storage.buckets import make_private


def add_parsers(sub) -> None:
    p = sub.add_parser("delete", help="delete buckets with every object in them (folders for file://), or a "
                                      "run's buckets and process folder (--run, --source)")
    p.add_argument("urls", nargs="*", metavar="URL", help="gs://B, s3://B, gs://B/path (its objects only), "
                                                          "file:///folder")
    p.add_argument("--run", metavar="RUN_KEY", help="delete this run's ng, chunk and tmp buckets and its "
                                                    "process folder (with --source; as `emprocess runs delete`)")
    p.add_argument("--source", help="the run's source (with --run)")
    add_safety_flags(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("archive", help="move a bucket's objects (those under its path, if given) to cold "
                                       "storage: GCS COLDLINE, S3 GLACIER_IR")
    p.add_argument("url", metavar="URL", help="e.g. a run's chunk bucket, gs://B_chunk_R")
    add_safety_flags(p)
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("set-public", help="public read for all and the CORS rule neuroglancer needs")
    p.add_argument("url", metavar="URL", help="a bucket, gs://B or s3://B")
    add_safety_flags(p)
    p.set_defaults(func=cmd_set_public)

    p = sub.add_parser("set-private", help="undo set-public: no public read, no CORS rule")
    p.add_argument("url", metavar="URL", help="a bucket, gs://B or s3://B")
    add_safety_flags(p)
    p.set_defaults(func=cmd_set_private)


def delete_steps(urls: Sequence[str | Url], out: Callable[[str], None] = print) -> list[Step]:
    """One step per location that still exists; those that do not are said to be already gone."""
    steps = []
    for url in urls:
        u = allowed(url)
        if not location_exists(u):
            out(f"{u}: already gone")
            continue
        steps.append(Step(_deletion(u), lambda u=u: out(f"  {delete_location(u)} objects deleted")))
    return steps


def _deletion(u: Url) -> str:
    """What deleting ``u`` does, in one line."""
    if u.scheme == "file":
        return f"delete folder {u} and everything in it"
    batches = f"in batches of {GCS_BATCH if u.scheme == 'gs' else S3_BATCH}"
    if u.path:
        return f"delete every object under {u}/ ({batches}); the bucket stays"
    return f"delete every object (and object version) in {u} ({batches}), then the bucket"


def cmd_delete(args) -> int:
    if args.run or args.source:
        if args.urls or not (args.run and args.source):
            raise InputError("bucket delete: give URLs, or --run RUN_KEY with --source SOURCE (not both)")
        from emprocess.admin.runs import delete_run

        delete_run(args.source, args.run, dry_run=args.dry_run, yes=args.yes)
        return 0
    if not args.urls:
        raise InputError("bucket delete: give the URLs to delete, or --run RUN_KEY with --source SOURCE")
    steps = delete_steps(args.urls)
    carry_out(steps, dry_run=args.dry_run, yes=args.yes, destructive=True,
              summary=f"delete {len(steps)} locations with everything in them")
    return 0


def cmd_archive(args) -> int:
    u = require_bucket(refuse_folders(args.url, "archiving"))
    what = "its objects" if not u.path else f"its objects under {u.path}/"
    step = Step(f"add a lifecycle rule to {u.scheme}://{u.bucket}: {what} move to {ARCHIVE_CLASS[u.scheme]} at "
                f"age 0 days (its other rules stay; an earlier archive rule for them is replaced)",
                lambda: archive(u))
    carry_out([step], dry_run=args.dry_run, yes=args.yes, destructive=True, summary=f"archive {u}")
    return 0


def _whole_bucket(url: str, what: str) -> Url:
    """A bucket URL without a path, known to exist: public access is set per bucket."""
    u = require_bucket(refuse_folders(url, what))
    if u.path:
        raise InputError(f"{u}: {what} is set per bucket; give {u.scheme}://{u.bucket} without a path")
    return u


def cmd_set_public(args) -> int:
    u = _whole_bucket(args.url, "public access")
    how = ("grant allUsers roles/storage.objectViewer" if u.scheme == "gs"
           else "lift BlockPublicPolicy (public ACLs stay blocked) and put a public s3:GetObject bucket policy")
    steps = [Step(f"set the CORS rule neuroglancer needs (GET, HEAD from any origin) on {u}; {how}",
                  lambda: _with_errors_named(u, make_public))]
    carry_out(steps, dry_run=args.dry_run, yes=args.yes, destructive=True, summary=f"open {u} to the public")
    return 0


def cmd_set_private(args) -> int:
    u = _whole_bucket(args.url, "public access")
    how = ("remove allUsers and allAuthenticatedUsers from its IAM bindings" if u.scheme == "gs"
           else "remove the public statements of its bucket policy and restore the whole public access block")
    steps = [Step(f"remove the CORS rule neuroglancer needs from {u}; {how}", lambda: make_private(u))]
    carry_out(steps, dry_run=args.dry_run, yes=args.yes, destructive=True, summary=f"close {u} to the public")
    return 0


def _with_errors_named(u: Url, change: Callable[[Url], None]) -> None:
    """``change(u)`` with a missing bucket and access denied named (``make_public`` does not name them)."""
    with bucket_errors(u):
        change(u)
