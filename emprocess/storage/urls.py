"""The URL model: what a location string means, checked once, as a ``Url``.

Accepted forms: ``file:///abs/dir`` (or a plain path), ``gs://bucket/path``, ``s3://bucket/path`` and a
bare bucket name (meaning ``gs://``).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from emprocess.errors import InputError
from emprocess.redact import redact

SCHEMES = ("file", "gs", "s3")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_UNSAFE_RE = re.compile(r"[\x00-\x1f\x7f\\]")


class StorageError(InputError):
    """A URL that emprocess cannot use; the message names the URL."""


@dataclass(frozen=True)
class Url:
    """A parsed storage URL. ``path`` has no leading slash for buckets; it is absolute for ``file``."""

    scheme: str
    bucket: str
    path: str

    def __str__(self) -> str:
        if self.scheme == "file":
            return "file://" + self.path
        return f"{self.scheme}://{self.bucket}/{self.path}" if self.path else f"{self.scheme}://{self.bucket}"

    def join(self, *parts: str) -> "Url":
        path = self.path
        for part in parts:
            part = str(part).strip("/")
            if not part:
                continue
            _check_segments(part, self)
            path = f"{path.rstrip('/')}/{part}" if path else part
        return Url(self.scheme, self.bucket, path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def parent(self) -> "Url":
        head = self.path.rstrip("/").rsplit("/", 1)[0] if "/" in self.path.strip("/") else ""
        if self.scheme == "file":
            head = head or "/"
        return Url(self.scheme, self.bucket, head)


def _check_segments(path: str, location: str | Url) -> None:
    """Refuse '.' and '..' segments, also percent-encoded, and encoded slashes: a location means one
    place, whichever layer (storage, a proxy, a bucket's HTTP API) decodes it. ``location`` is
    what a refusal names."""
    for segment in path.split("/"):
        decoded = unquote(segment)
        if decoded in ("..", ".") or "/" in decoded:
            raise StorageError(f"{_shown(str(location))}: {segment!r} path segments are not allowed")


def _shown(text) -> str:
    """A URL as messages quote it: repr'd, credentials masked. Made only for a refusal: masking costs
    more than parsing."""
    return redact(repr(text))


def _file_path(path: str, text: str) -> str:
    """An absolute file path, normalised as the OS reads it ('//' is '/'); symlinks are left alone."""
    _check_segments(path, text)
    return os.path.normpath(re.sub(r"/{2,}", "/", path))


def parse(url: str | Url) -> Url:
    """Parse and validate a location; a ``Url`` is already both, and is returned as it is. Accepted:
    ``file:///abs``, ``gs://bucket/path``, ``s3://bucket/path``, an absolute path (= ``file://``) and
    a bare bucket name (= ``gs://``). Refused, naming the location with its credentials masked:
    relative paths, credentials, queries and fragments, control characters and backslashes, '.' and
    '..' segments (also encoded)."""
    if isinstance(url, Url):
        return url
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"{_shown(url)}: expected a non-empty URL string")
    return _parse_text(url.strip())


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> Url:
    """``parse`` of a stripped text; kept, since a run's locations are parsed again for every path
    joined to them (a refusal is not kept, and is raised anew)."""
    if _UNSAFE_RE.search(text):
        raise StorageError(f"{_shown(text)}: control characters and backslashes are not allowed in a location")
    if "?" in text or "#" in text:
        raise StorageError(f"{_shown(text)}: '?' and '#' (queries, fragments) are not allowed in a location")
    if "://" not in text:
        if text.startswith("/"):
            return Url("file", "", _file_path(text, text))
        if "/" in text or ":" in text or text.startswith("."):
            raise StorageError(f"{_shown(text)}: not an absolute location; write file:///abs/dir, /abs/dir, "
                               f"gs://bucket/path or s3://bucket/path")
    parsed = urlparse(text if "://" in text else "gs://" + text)
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise StorageError(f"{_shown(text)}: unsupported scheme {scheme!r}; use file://, gs:// or s3://")
    if "@" in parsed.netloc:
        raise StorageError(f"{_shown(text)}: credentials in a location are not allowed; they come from the "
                           f"environment")
    if scheme == "file":
        if parsed.netloc.lower() not in ("", "localhost") or not parsed.path.startswith("/"):
            raise StorageError(f"{_shown(text)}: file URLs must be absolute (file:///abs/dir)")
        return Url("file", "", _file_path(parsed.path, text))
    bucket = parsed.netloc
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(f"{_shown(text)}: {bucket!r} is not a valid bucket name")
    path = parsed.path.lstrip("/")
    _check_segments(path, text)
    return Url(scheme, bucket, path.rstrip("/"))


def join(url: str | Url, *parts: str) -> str:
    return str(parse(url).join(*parts))
