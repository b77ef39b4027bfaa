"""Object I/O: read, write, test, list and delete objects (and JSON documents) at any location, through
tensorstore kvstores, so the same code serves local folders, GCS and S3-compatible stores.

Every function takes a location as text or as a ``Url``, and checks it against the allowed prefixes
once.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from emprocess.redact import redact
from emprocess.storage.confinement import allowed
from emprocess.storage.kvstores import done, key_range, store_of
from emprocess.storage.urls import StorageError, Url

if TYPE_CHECKING:
    import tensorstore as ts


def _store_of(url: str | Url) -> tuple[ts.KvStore, str]:
    return store_of(allowed(url))


def read(url: str | Url) -> bytes:
    store, key = _store_of(url)
    result = done(store.read(key), url)
    if result.state != "value":
        raise FileNotFoundError(f"{url}: not found")
    return bytes(result.value)


def read_range(url: str | Url, start: int, stop: int | None = None) -> bytes:
    """Bytes ``start:stop`` of an object (fewer when it is shorter); a negative ``start`` with no
    ``stop`` reads a suffix."""
    store, key = _store_of(url)
    try:
        result = done(store.read(key, byte_range=slice(start, stop)), url)
    except StorageError:  # the object ends before ``stop``: tensorstore refuses the range
        return read(url)[start:stop]
    if result.state != "value":
        raise FileNotFoundError(f"{url}: not found")
    return bytes(result.value)


def read_if_exists(url: str | Url) -> bytes | None:
    try:
        return read(url)
    except FileNotFoundError:
        return None


def write(url: str | Url, data: bytes) -> None:
    """Write one object in one PUT (atomic replace for files too: tensorstore writes then renames)."""
    store, key = _store_of(url)
    done(store.write(key, data), url)


def write_all(objects: dict[str, bytes]) -> None:
    """Write many objects (each as ``write`` does), all in flight at once; returns when all are written."""
    writes = {u: store.write(key, data) for u, ((store, key), data) in
              ((u, (_store_of(u), d)) for u, d in objects.items())}
    for url, written in writes.items():
        done(written, url)


def exists(url: str | Url) -> bool:
    store, key = _store_of(url)
    return done(store.read(key, byte_range=slice(0, 0)), url).state == "value"


def listdir(url: str | Url) -> list[str]:
    """Every key below ``url`` (recursively), relative to it, sorted."""
    u = allowed(url)
    store, key = store_of(u)
    prefix = key.rstrip("/") + "/" if key else ""
    if u.scheme == "file" and not os.path.isdir(u.path):
        return []
    keys = done(store.list(key_range(prefix, _successor(prefix)) if prefix else None), url)
    return sorted(k.decode()[len(prefix):] for k in keys)


def _successor(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def delete(url: str | Url) -> None:
    store, key = _store_of(url)
    done(store.delete_range(key_range(key, key + "\0")), url)


def delete_tree(url: str | Url) -> None:
    """Delete every key below ``url``; for a bucket root that is the whole bucket's content."""
    u = allowed(url)
    store, key = store_of(u)
    if not key:
        if u.scheme == "file":
            raise StorageError(f"{url!r}: refusing to delete the file system root")
        done(store.delete_range(key_range()), url)
        return
    prefix = key.rstrip("/") + "/"
    done(store.delete_range(key_range(prefix, _successor(prefix))), url)


def read_json(url: str | Url):
    return parse_json(read(url), url)


def read_json_if_exists(url: str | Url):
    data = read_if_exists(url)
    return None if data is None else parse_json(data, url)


def parse_json(data: bytes, what: str | Url):
    """The JSON document ``data`` read from ``what`` (its URL); a StorageError naming it when it is
    not one. Parsed apart from the read, so that a failed read is not taken for a bad file."""
    try:
        return json.loads(data)
    except ValueError as err:  # not UTF-8, or not JSON
        raise StorageError(f"{redact(str(what))}: not a JSON document ({err})") from None


def write_json(url: str | Url, value) -> None:
    write(url, json.dumps(value, indent=2, sort_keys=True).encode())
