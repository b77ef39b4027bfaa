"""``emprocess admin run-name NAME``: a run id no one can guess, for runs whose outputs are public.

A run's buckets are named after its run key (``B_ng_<key>``, …), and a public bucket is readable by
anyone who knows its name: the name is the secret link. So the id is NAME, a '-' and 128 bits from
``secrets``, in base32 (lowercase, no padding: bucket-safe), and it must reach the run key whole: a
run id too long for its source's bucket names is cut to a head and a 32-bit digest, which a
stranger could enumerate. NAME's length is checked against that.
"""

from __future__ import annotations

import base64
import re
import secrets

from emprocess.errors import InputError

RANDOM_BYTES = 16  # 128 bits
TOKEN_LENGTH = len(base64.b32encode(bytes(RANDOM_BYTES)).rstrip(b"="))  # 26 characters
_NAME_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # the run key keeps such a name as it is


def add_parser(admin) -> None:
    p = admin.add_parser("run-name", help="print a unique, hard-to-guess run id starting with NAME (public "
                                          "buckets are secret links)")
    p.add_argument("name", metavar="NAME", help="lowercase letters and digits, single '-' between them")
    p.add_argument("--source", help="the run's source (gs://B, s3://B, file:///dir): check that the run's "
                                    "bucket names hold the whole id")
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    print(run_name(args.name, args.source))
    return 0


def run_name(name: str, source: str | None = None) -> str:
    """``name-<26 random base32 characters>``; InputError when ``name`` is unusable or too long for
    the run key (of ``source``'s buckets) to hold the whole id."""
    if not _NAME_RE.fullmatch(name):
        raise InputError(f"run name {name!r}: use lowercase letters and digits, with single '-' between them")
    room = key_room(source)
    longest = room - 1 - TOKEN_LENGTH
    where = f"for source {source}" if source else "in a run key"
    if longest < 1:
        raise InputError(f"source {source} leaves {max(room, 0)} characters for a run key, too few for a run id "
                         f"of {TOKEN_LENGTH + 2} or more; use a shorter bucket name")
    if len(name) > longest:
        raise InputError(f"run name {name!r} is {len(name)} characters; {where} NAME may be at most {longest} "
                         f"(the id adds '-' and {TOKEN_LENGTH} random characters, and must fit in {room})")
    token = base64.b32encode(secrets.token_bytes(RANDOM_BYTES)).decode().rstrip("=").lower()
    return f"{name}-{token}"


def key_room(source: str | None) -> int:
    """How long a run id may be and still be its run key unchanged (``config.run_key``)."""
    from emprocess import config, run_layout

    room = None if source is None else run_layout.run_key_room(source)
    return config.RUN_KEY_MAX if room is None else min(config.RUN_KEY_MAX, room)
