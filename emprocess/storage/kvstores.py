"""tensorstore's side of storage: the shared context, a location's kvstore spec, one opened kvstore
per bucket, and which of tensorstore's failures no retry can mend.

tensorstore (with numpy ~0.6 CPU-s) is imported on first use: parsing the DAG file need not pay it.
S3-compatible stores: set ``AWS_ENDPOINT_URL`` (passed to tensorstore's ``s3`` driver); GCS emulators:
``TENSORSTORE_GCS_HTTP_URL``.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from emprocess.redact import redact
from emprocess.storage.confinement import allowed
from emprocess.storage.urls import StorageError, Url

if TYPE_CHECKING:
    import tensorstore as ts

_CONTEXT: ts.Context | None = None  # made on first use (see context())
_CONTEXT_LOCK = threading.Lock()
_KVSTORES: dict[tuple, ts.KvStore] = {}  # by the spec of a bucket's (or the file system's) root
_KVSTORES_LOCK = threading.Lock()

# tensorstore's status codes, leading its messages, for a request that cannot succeed as made: stored
# bytes it cannot decode (FAILED_PRECONDITION, DATA_LOSS, OUT_OF_RANGE: truncated or garbage chunks,
# shards, info files), a file where a folder must be, no permission. Retrying cannot help. Failed
# transfers (ABORTED after tensorstore's own retries, UNAVAILABLE, DEADLINE_EXCEEDED) are not here.
_PERMANENT = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "OUT_OF_RANGE", "DATA_LOSS",
              "ALREADY_EXISTS", "UNIMPLEMENTED")


def kvstore_spec(url: str | Url) -> dict:
    """The tensorstore kvstore spec of a URL (a directory when used as a volume's base)."""
    return spec(allowed(url))


def spec(u: Url) -> dict:
    """The kvstore spec of ``u``, a location already allowed."""
    if u.scheme == "file":
        return {"driver": "file", "path": u.path.rstrip("/") + "/"}
    path = u.path.rstrip("/") + "/" if u.path else ""
    if u.scheme == "gs":
        return {"driver": "gcs", "bucket": u.bucket, "path": path}
    found = {"driver": "s3", "bucket": u.bucket, "path": path}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        found["endpoint"] = endpoint
        found["aws_region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return found


def context() -> ts.Context:
    """The shared tensorstore context (connection pools, cache) for every open. Local files are read
    through memory maps: the pyramid reads every aligned tile once, and copying them through read
    buffers cost page faults worth a tenth of its work."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            import tensorstore as ts

            _CONTEXT = ts.Context(ts.Context.Spec({"file_io_mode": {"mode": "memmap"}}))
        return _CONTEXT


def key_range(inclusive_min: str = "", exclusive_max: str = "") -> ts.KvStore.KeyRange:
    """Keys from ``inclusive_min`` up to ``exclusive_max`` (every key when both are empty)."""
    import tensorstore as ts

    return ts.KvStore.KeyRange(inclusive_min, exclusive_max)


def store_of(u: Url) -> tuple[ts.KvStore, str]:
    """The kvstore of the bucket (or ``/`` for files) of ``u``, a location already allowed, and the
    key of ``u`` inside it. One store per bucket and endpoint, opened once per process."""
    root = spec(Url(u.scheme, u.bucket, "/" if u.scheme == "file" else ""))
    cache_key = tuple(sorted(root.items()))
    with _KVSTORES_LOCK:
        store = _KVSTORES.get(cache_key)
        if store is None:
            import tensorstore as ts

            store = ts.KvStore.open(root, context=context()).result()
            _KVSTORES[cache_key] = store
    return store, u.path.lstrip("/")


def tensorstore_message(err: BaseException) -> str:
    """tensorstore's message without its trailing spec (which repeats the whole open request)."""
    return str(err).split(" [tensorstore_spec=")[0]


def is_permanent(err: BaseException) -> bool:
    """Whether ``err`` is a tensorstore failure that retrying cannot mend (see ``_PERMANENT``)."""
    return isinstance(err, ValueError) and tensorstore_message(err).startswith(tuple(f"{c}:" for c in _PERMANENT))


def done(future, url: str | Url):
    """``future``'s result; a permanent failure as a StorageError naming ``url`` (transient ones,
    such as UNAVAILABLE or DEADLINE_EXCEEDED, stay tensorstore's ValueError and are retried)."""
    try:
        return future.result()
    except ValueError as err:
        if is_permanent(err):
            raise StorageError(f"{redact(str(url))}: {tensorstore_message(err)}") from None
        raise
