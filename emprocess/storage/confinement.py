"""Allowed prefixes: which locations a process may reach, checked where storage is used.

A service confines itself to ``EMPROCESS_ALLOWED_PREFIXES`` (``confine``); every read, write, listing,
volume open and bucket operation then goes through ``allowed``.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from emprocess.redact import redact
from emprocess.storage.urls import StorageError, Url, parse

_BUCKET_STEM_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

Prefix = Url | tuple[str, str]  # a location, or (scheme, stem) of a bucket wildcard ``scheme://stem*``


class OutsideAllowedPrefixes(PermissionError):
    """A location outside the prefixes this process is confined to."""


_confinement: tuple[Prefix, ...] | None = None  # parsed once, by ``confine``


def _bucket_wildcard(prefix: str) -> tuple[str, str] | None:
    """(scheme, stem) of a prefix ``scheme://stem*``; None for a URL prefix."""
    scheme, separator, rest = prefix.strip().partition("://")
    if not separator or not rest.endswith("*"):
        return None
    if scheme not in ("gs", "s3") or not _BUCKET_STEM_RE.match(rest[:-1]):
        raise StorageError(f"{prefix!r}: a wildcard prefix is the start of a gs:// or s3:// bucket name and a "
                           f"'*', e.g. gs://lab-em_*")
    return scheme, rest[:-1]


def _prefix(prefix: str) -> Prefix:
    """A prefix parsed; StorageError, naming it, when it is not a usable one."""
    return _bucket_wildcard(prefix) or parse(prefix)


def check_prefix(prefix: str) -> None:
    """Raise StorageError, naming it, unless ``prefix`` is a usable prefix for ``is_under``."""
    _prefix(prefix)


def is_under(url: str | Url, prefixes: list[str] | tuple[str, ...]) -> bool:
    """True when ``url`` lies under one of ``prefixes``, compared as parsed URLs, segment-wise, and
    for files as the OS resolves them (symlinks followed). A prefix ``gs://lab-em_*`` covers every
    bucket whose name starts with ``lab-em_``: the run locations named after a source bucket, which
    do not exist until a run makes them."""
    return _under(parse(url), (_prefix(prefix) for prefix in prefixes))


def _under(u: Url, prefixes: Iterable[Prefix]) -> bool:
    real = _resolved(u)
    for prefix in prefixes:
        if isinstance(prefix, Url):
            if (str(real).rstrip("/") + "/").startswith(str(_resolved(prefix)).rstrip("/") + "/"):
                return True
        elif real.scheme == prefix[0] and real.bucket.startswith(prefix[1]):
            return True
    return False


def _resolved(u: Url) -> Url:
    """The location the OS will open: a file path with its symlinks resolved (as far as it exists),
    at each check, since a link may be made at any time."""
    return Url("file", "", os.path.realpath(u.path)) if u.scheme == "file" else u


def confine(prefixes: list[str] | None) -> None:
    """Confine every later read, write, listing, volume open and bucket operation of this process to
    ``prefixes`` (None lifts it). A service confines itself to ``EMPROCESS_ALLOWED_PREFIXES``, so a
    location that reaches storage by any path (a payload, a volume's ``info``, a derived key) is
    checked where it is used, on the normalised location."""
    global _confinement
    _confinement = None if prefixes is None else tuple(_prefix(prefix) for prefix in prefixes)


def allowed(url: str | Url) -> Url:
    """``url`` parsed; OutsideAllowedPrefixes when this process is confined and it lies outside."""
    u = parse(url)
    if _confinement is not None and not _under(u, _confinement):
        raise OutsideAllowedPrefixes(f"{redact(str(u))} is outside this service's allowed prefixes")
    return u
