"""Reachability in bounded time: ask a store about a location before a run depends on it, since
tensorstore retries an unreachable store for many minutes, and so would every read after the first."""

from __future__ import annotations

import math
import os
import re
import time
from typing import TYPE_CHECKING

from emprocess.redact import redact
from emprocess.storage.confinement import allowed
from emprocess.storage.kvstores import key_range, spec, tensorstore_message
from emprocess.storage.urls import StorageError, Url

if TYPE_CHECKING:
    import tensorstore as ts

PROBE_SECONDS = 15.0  # how long ``probe`` waits by default; EMPROCESS_PROBE_TIMEOUT overrides it
# A probe's deadline bounds its wait, not tensorstore's retries (by default minutes of them); these
# few let a transient 5xx pass and a refused connection fail within a second.
_PROBE_RETRIES = {"max_retries": 2, "initial_delay": "0.2s", "max_delay": "1s"}
# per kind of store, what a failed probe tells the user to check: its endpoint's setting, its credentials
_SETTINGS = {
    "s3": ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"),
    "gs": ("TENSORSTORE_GCS_HTTP_URL", "GOOGLE_APPLICATION_CREDENTIALS or gcloud auth application-default login"),
}
GCS_URL = "https://storage.googleapis.com"


def probe_timeout() -> float:
    """Seconds ``probe`` waits: EMPROCESS_PROBE_TIMEOUT, else PROBE_SECONDS."""
    raw = os.environ.get("EMPROCESS_PROBE_TIMEOUT", str(PROBE_SECONDS))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise StorageError(f"EMPROCESS_PROBE_TIMEOUT must be a number of seconds above 0, got {raw!r}")
    return seconds


def probe(url: str | Url, folder: str | Url | None = None) -> None:
    """Ask the store of ``url`` about it, waiting ``probe_timeout()`` seconds at most.

    Raises StorageError naming the location and what to check when the endpoint cannot be reached or
    does not answer in time, or refuses access; with ``folder`` (the folder or bucket holding ``url``)
    also when that does not exist. Whether ``url`` itself exists is left to the caller."""
    u = allowed(url)
    if u.scheme == "file":
        path = None if folder is None else allowed(folder).path
        if path is not None and not os.path.isdir(path):
            shown = Url("file", "", path)
            raise StorageError(f"{shown} is a file, not a folder" if os.path.exists(path)
                               else f"folder {shown} does not exist")
        return
    import tensorstore as ts

    seconds = probe_timeout()
    deadline = time.monotonic() + seconds
    endpoint = _endpoint(u)
    setting, credentials = _SETTINGS[u.scheme]
    context = ts.Context({"s3_request_retries": _PROBE_RETRIES, "gcs_request_retries": _PROBE_RETRIES})
    try:
        store = _by(ts.KvStore.open(spec(Url(u.scheme, u.bucket, "")), context=context), deadline)
        if _by(store.read(u.path, byte_range=slice(0, 0)), deadline).state == "value" or folder is None:
            return
        problem = None if _bucket_exists(store, u, deadline) else (
            f"bucket {u.scheme}://{u.bucket} does not exist at {endpoint}; check the bucket's name and the "
            f"endpoint ({setting})")
    except TimeoutError:
        problem = (f"no answer about {u} from {endpoint} within {seconds:g} s; check the endpoint ({setting}), the "
                   f"network and the credentials ({credentials}); EMPROCESS_PROBE_TIMEOUT sets how long to wait")
    except ValueError as err:
        problem = _probe_failure(u, endpoint, err)
    if problem:
        raise StorageError(redact(problem))


def _endpoint(u: Url) -> str:
    """Where tensorstore sends the requests for ``u`` (see ``kvstores.spec``)."""
    if u.scheme == "s3":
        return spec(u).get("endpoint", "AWS S3")
    return os.environ.get("TENSORSTORE_GCS_HTTP_URL", GCS_URL)


def _by(future, deadline: float):
    """``future``'s result, or TimeoutError (and the request cancelled) once ``deadline`` has passed."""
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        future.cancel()
        raise


def _bucket_exists(store: ts.KvStore, u: Url, deadline: float) -> bool:
    """False only when the store says ``u``'s bucket does not exist (it may forbid us to ask)."""
    if u.scheme == "s3":  # S3 answers a listing of a missing bucket NoSuchBucket, NOT_FOUND for tensorstore
        try:
            _by(store.list(key_range(u.path, u.path + "\0")), deadline)
        except ValueError as err:
            return not tensorstore_message(err).startswith("NOT_FOUND:")
        return True
    # tensorstore lists a missing GCS bucket as empty: ask the JSON API about the bucket itself, which
    # answers 404 for a missing one even to an anonymous caller
    import requests

    try:
        reply = requests.get(f"{_endpoint(u)}/storage/v1/b/{u.bucket}",
                             timeout=max(0.1, deadline - time.monotonic()))
    except requests.RequestException:
        return True
    return reply.status_code != 404


def _probe_failure(u: Url, endpoint: str, err: ValueError) -> str:
    """What went wrong in a probe of ``u``, and what to check."""
    message = tensorstore_message(err)
    setting, credentials = _SETTINGS[u.scheme]
    status = re.search(r"http_response_code='(\d+)'", message)
    if message.startswith(("PERMISSION_DENIED:", "UNAUTHENTICATED:")):
        refused = f"HTTP {status[1]}" if status else message.split(":")[0]
        text = (f"access to {u} is refused ({refused} from {endpoint}); check the credentials ({credentials}) "
                f"and the bucket's permissions")
        if u.scheme == "s3":
            text += "; S3 also answers 403 for a missing object when listing the bucket is not allowed"
        return text
    curl = re.search(r"CURL error (.*?) \[curl_code", message)
    if curl:
        return f"cannot reach {u} at {endpoint}: {curl[1]}; check the endpoint ({setting}) and the network"
    return (f"cannot read {u} at {endpoint}: {message}; check the endpoint ({setting}), the network and the "
            f"credentials ({credentials})")
