"""One URL model for every place emprocess reads or writes.

Accepted forms: ``file:///abs/dir`` (or a plain path), ``gs://bucket/path``, ``s3://bucket/path`` and a
bare bucket name (meaning ``gs://``). Objects are read and written through tensorstore kvstores so the
same code serves local folders, GCS and S3-compatible stores; bucket administration (create,
lifecycle, CORS, public read) goes through google-cloud-storage / boto3.

S3-compatible stores: set ``AWS_ENDPOINT_URL`` (honoured by boto3 and passed to tensorstore's ``s3``
driver). GCS emulators: ``TENSORSTORE_GCS_HTTP_URL`` for tensorstore, ``STORAGE_EMULATOR_HOST`` for
google-cloud-storage.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from emprocess.redact import redact

if TYPE_CHECKING:
    import tensorstore as ts

SCHEMES = ("file", "gs", "s3")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_UNSAFE_RE = re.compile(r"[\x00-\x1f\x7f\\]")
_CONTEXT: ts.Context | None = None  # made on first use (see context())
_CONTEXT_LOCK = threading.Lock()
_KVSTORES: dict[str, ts.KvStore] = {}
_KVSTORES_LOCK = threading.Lock()


class StorageError(ValueError):
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
            _check_segments(part, _shown(str(self)))
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


def _check_segments(path: str, shown: str) -> None:
    """Refuse '.' and '..' segments, also percent-encoded, and encoded slashes: a location means one
    place, whichever layer (storage, a proxy, a bucket's HTTP API) decodes it."""
    for segment in path.split("/"):
        decoded = unquote(segment)
        if decoded in ("..", ".") or "/" in decoded:
            raise StorageError(f"{shown}: {segment!r} path segments are not allowed")


def _shown(text) -> str:
    """A URL as messages quote it: repr'd, credentials masked."""
    return redact(repr(text))


def _file_path(path: str, shown: str) -> str:
    """An absolute file path, normalised as the OS reads it ('//' is '/'); symlinks are left alone."""
    _check_segments(path, shown)
    return os.path.normpath(re.sub(r"/{2,}", "/", path))


def parse(url: str | Url) -> Url:
    """Parse and validate a location. Accepted: ``file:///abs``, ``gs://bucket/path``,
    ``s3://bucket/path``, an absolute path (= ``file://``) and a bare bucket name (= ``gs://``).
    Refused, naming the location with its credentials masked: relative paths, credentials, queries
    and fragments, control characters and backslashes, '.' and '..' segments (also encoded)."""
    if isinstance(url, Url):
        return url
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"{_shown(url)}: expected a non-empty URL string")
    text = url.strip()
    shown = _shown(text)
    if _UNSAFE_RE.search(text):
        raise StorageError(f"{shown}: control characters and backslashes are not allowed in a location")
    if "?" in text or "#" in text:
        raise StorageError(f"{shown}: '?' and '#' (queries, fragments) are not allowed in a location")
    if "://" not in text:
        if text.startswith("/"):
            return Url("file", "", _file_path(text, shown))
        if "/" in text or ":" in text or text.startswith("."):
            raise StorageError(f"{shown}: not an absolute location; write file:///abs/dir, /abs/dir, "
                               f"gs://bucket/path or s3://bucket/path")
        text = "gs://" + text
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise StorageError(f"{shown}: unsupported scheme {scheme!r}; use file://, gs:// or s3://")
    if "@" in parsed.netloc:
        raise StorageError(f"{shown}: credentials in a location are not allowed; they come from the environment")
    if scheme == "file":
        if parsed.netloc.lower() not in ("", "localhost") or not parsed.path.startswith("/"):
            raise StorageError(f"{shown}: file URLs must be absolute (file:///abs/dir)")
        return Url("file", "", _file_path(parsed.path, shown))
    bucket = parsed.netloc
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(f"{shown}: {bucket!r} is not a valid bucket name")
    path = parsed.path.lstrip("/")
    _check_segments(path, shown)
    return Url(scheme, bucket, path.rstrip("/"))


def join(url: str | Url, *parts: str) -> str:
    return str(parse(url).join(*parts))


def kvstore_spec(url: str | Url) -> dict:
    """The tensorstore kvstore spec of a URL (a directory when used as a volume's base)."""
    return _spec(allowed(url))


def _spec(u: Url) -> dict:
    if u.scheme == "file":
        return {"driver": "file", "path": u.path.rstrip("/") + "/"}
    path = u.path.rstrip("/") + "/" if u.path else ""
    if u.scheme == "gs":
        return {"driver": "gcs", "bucket": u.bucket, "path": path}
    spec = {"driver": "s3", "bucket": u.bucket, "path": path}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        spec["endpoint"] = endpoint
        spec["aws_region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return spec


def context() -> ts.Context:
    """The shared tensorstore context (connection pools, cache) for every open. Local files are read
    through memory maps: the pyramid reads every aligned tile once, and copying them through read
    buffers cost page faults worth a tenth of its work."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            import tensorstore as ts  # with numpy ~0.6 CPU-s, which parsing the DAG file need not pay

            _CONTEXT = ts.Context(ts.Context.Spec({"file_io_mode": {"mode": "memmap"}}))
        return _CONTEXT


def _key_range(inclusive_min: str = "", exclusive_max: str = "") -> ts.KvStore.KeyRange:
    """Keys from ``inclusive_min`` up to ``exclusive_max`` (every key when both are empty)."""
    import tensorstore as ts  # see context()

    return ts.KvStore.KeyRange(inclusive_min, exclusive_max)


def _store_of(url: str | Url) -> tuple[ts.KvStore, str]:
    """The kvstore of the bucket (or ``/`` for files) and the key of ``url`` inside it."""
    u = allowed(url)
    root = Url(u.scheme, u.bucket, "/" if u.scheme == "file" else "")
    key = u.path.lstrip("/")
    spec = _spec(root)
    cache_key = json.dumps(spec, sort_keys=True)
    with _KVSTORES_LOCK:
        store = _KVSTORES.get(cache_key)
        if store is None:
            import tensorstore as ts  # see context()

            store = ts.KvStore.open(spec, context=context()).result()
            _KVSTORES[cache_key] = store
    return store, key


# tensorstore's status codes, leading its messages, for a request that cannot succeed as made: stored
# bytes it cannot decode (FAILED_PRECONDITION, DATA_LOSS, OUT_OF_RANGE: truncated or garbage chunks,
# shards, info files), a file where a folder must be, no permission. Retrying cannot help. Failed
# transfers (ABORTED after tensorstore's own retries, UNAVAILABLE, DEADLINE_EXCEEDED) are not here.
_PERMANENT = ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "OUT_OF_RANGE", "DATA_LOSS",
              "ALREADY_EXISTS", "UNIMPLEMENTED")


def tensorstore_message(err: BaseException) -> str:
    """tensorstore's message without its trailing spec (which repeats the whole open request)."""
    return str(err).split(" [tensorstore_spec=")[0]


def is_permanent(err: BaseException) -> bool:
    """Whether ``err`` is a tensorstore failure that retrying cannot mend (see ``_PERMANENT``)."""
    return isinstance(err, ValueError) and tensorstore_message(err).startswith(tuple(f"{c}:" for c in _PERMANENT))


def _done(future, url: str | Url):
    """``future``'s result; a permanent failure as a StorageError naming ``url`` (transient ones,
    such as UNAVAILABLE or DEADLINE_EXCEEDED, stay tensorstore's ValueError and are retried)."""
    try:
        return future.result()
    except ValueError as err:
        if is_permanent(err):
            raise StorageError(f"{redact(str(url))}: {tensorstore_message(err)}") from None
        raise


def read(url: str | Url) -> bytes:
    store, key = _store_of(url)
    result = _done(store.read(key), url)
    if result.state != "value":
        raise FileNotFoundError(f"{url}: not found")
    return bytes(result.value)


def read_range(url: str | Url, start: int, stop: int | None = None) -> bytes:
    """Bytes ``start:stop`` of an object (fewer when it is shorter); a negative ``start`` with no
    ``stop`` reads a suffix."""
    store, key = _store_of(url)
    try:
        result = _done(store.read(key, byte_range=slice(start, stop)), url)
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
    _done(store.write(key, data), url)


def write_all(objects: dict[str, bytes]) -> None:
    """Write many objects (each as ``write`` does), all in flight at once; returns when all are written."""
    writes = {u: store.write(key, data) for u, ((store, key), data) in
              ((u, (_store_of(u), d)) for u, d in objects.items())}
    for url, done in writes.items():
        _done(done, url)


def exists(url: str | Url) -> bool:
    store, key = _store_of(url)
    return _done(store.read(key, byte_range=slice(0, 0)), url).state == "value"


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
    """Ask the store of ``url`` about it, waiting ``probe_timeout()`` seconds at most: tensorstore
    retries an unreachable store for many minutes, and so would every read after this.

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
    import tensorstore as ts  # see context()

    seconds = probe_timeout()
    deadline = time.monotonic() + seconds
    endpoint = _endpoint(u)
    setting, credentials = _SETTINGS[u.scheme]
    context = ts.Context({"s3_request_retries": _PROBE_RETRIES, "gcs_request_retries": _PROBE_RETRIES})
    try:
        store = _by(ts.KvStore.open(_spec(Url(u.scheme, u.bucket, "")), context=context), deadline)
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
    """Where tensorstore sends the requests for ``u`` (see ``_spec``)."""
    if u.scheme == "s3":
        return _spec(u).get("endpoint", "AWS S3")
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
            _by(store.list(_key_range(u.path, u.path + "\0")), deadline)
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


def listdir(url: str | Url) -> list[str]:
    """Every key below ``url`` (recursively), relative to it, sorted."""
    u = allowed(url)
    store, key = _store_of(u)
    prefix = key.rstrip("/") + "/" if key else ""
    if u.scheme == "file" and not os.path.isdir(u.path):
        return []
    keys = _done(store.list(_key_range(prefix, _successor(prefix)) if prefix else None), url)
    return sorted(k.decode()[len(prefix):] for k in keys)


def _successor(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def delete(url: str | Url) -> None:
    store, key = _store_of(url)
    _done(store.delete_range(_key_range(key, key + "\0")), url)


def delete_tree(url: str | Url) -> None:
    """Delete every key below ``url``; for a bucket root that is the whole bucket's content."""
    u = allowed(url)
    store, key = _store_of(u)
    if not key:
        if u.scheme == "file":
            raise StorageError(f"{url!r}: refusing to delete the file system root")
        _done(store.delete_range(_key_range()), url)
        return
    prefix = key.rstrip("/") + "/"
    _done(store.delete_range(_key_range(prefix, _successor(prefix))), url)


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


def ensure_location(url: str | Url, project: str | None = None) -> None:
    """Create the bucket (or folder) that holds ``url`` if it does not exist."""
    u = allowed(url)
    if u.scheme == "file":
        Path(u.path).mkdir(parents=True, exist_ok=True)
    elif u.scheme == "gs":
        from google.cloud import storage as gcs

        client = gcs.Client(project=project)
        if client.lookup_bucket(u.bucket) is None:
            client.create_bucket(u.bucket, project=project)
    else:
        import boto3
        from botocore.exceptions import ClientError

        s3 = boto3.client("s3")
        try:
            s3.head_bucket(Bucket=u.bucket)
        except ClientError:
            region = s3.meta.region_name
            if region in (None, "us-east-1"):
                s3.create_bucket(Bucket=u.bucket)
            else:  # every other region must be named again here
                s3.create_bucket(Bucket=u.bucket, CreateBucketConfiguration={"LocationConstraint": region})


CORS_RULE = {"origins": ["*"], "methods": ["GET", "HEAD"], "headers": ["Range", "Content-Type"], "max_age": 3600}


def set_expiry(url: str | Url, days: int) -> None:
    """Delete the bucket's objects ``days`` after creation (tmp data); folders are left to the user.
    The rule replaces the bucket's lifecycle rules, so a resumed run's publish adds none."""
    u = allowed(url)
    if u.scheme == "gs":
        from google.cloud import storage as gcs

        bucket = gcs.Client().get_bucket(u.bucket)
        bucket.clear_lifecycle_rules()
        bucket.add_lifecycle_delete_rule(age=days)
        bucket.patch()
    elif u.scheme == "s3":
        import boto3

        boto3.client("s3").put_bucket_lifecycle_configuration(
            Bucket=u.bucket,
            LifecycleConfiguration={
                "Rules": [{"ID": "emprocess-tmp", "Status": "Enabled", "Filter": {"Prefix": ""},
                           "Expiration": {"Days": days}}]
            },
        )


def make_public(url: str | Url) -> None:
    """Public read and CORS for the viewing bucket, so neuroglancer can load it from any origin."""
    u = allowed(url)
    if u.scheme == "gs":
        from google.cloud import storage as gcs

        bucket = gcs.Client().get_bucket(u.bucket)
        bucket.cors = [{"origin": CORS_RULE["origins"], "method": CORS_RULE["methods"],
                        "responseHeader": CORS_RULE["headers"], "maxAgeSeconds": CORS_RULE["max_age"]}]
        bucket.patch()
        policy = bucket.get_iam_policy(requested_policy_version=3)
        public_read = {"role": "roles/storage.objectViewer", "members": {"allUsers"}}
        if not any(b["role"] == public_read["role"] and "allUsers" in b["members"] for b in policy.bindings):
            policy.bindings.append(public_read)
            bucket.set_iam_policy(policy)
    elif u.scheme == "s3":
        import boto3

        s3 = boto3.client("s3")
        s3.put_bucket_cors(Bucket=u.bucket, CORSConfiguration={"CORSRules": [{
            "AllowedOrigins": CORS_RULE["origins"], "AllowedMethods": CORS_RULE["methods"],
            "AllowedHeaders": CORS_RULE["headers"], "MaxAgeSeconds": CORS_RULE["max_age"]}]})
        # New buckets block public policies by default (AWS, since 2023): lift that for this bucket's
        # policy only; public ACLs stay blocked.
        s3.put_public_access_block(Bucket=u.bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": False,
            "RestrictPublicBuckets": False})
        s3.put_bucket_policy(Bucket=u.bucket, Policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                           "Resource": f"arn:aws:s3:::{u.bucket}/*"}],
        }))


_BUCKET_STEM_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _bucket_wildcard(prefix: str) -> tuple[str, str] | None:
    """(scheme, stem) of a prefix ``scheme://stem*``; None for a URL prefix."""
    scheme, separator, rest = prefix.strip().partition("://")
    if not separator or not rest.endswith("*"):
        return None
    if scheme not in ("gs", "s3") or not _BUCKET_STEM_RE.match(rest[:-1]):
        raise StorageError(f"{prefix!r}: a wildcard prefix is the start of a gs:// or s3:// bucket name and a "
                           f"'*', e.g. gs://lab-em_*")
    return scheme, rest[:-1]


def check_prefix(prefix: str) -> None:
    """Raise StorageError, naming it, unless ``prefix`` is a usable prefix for ``is_under``."""
    if _bucket_wildcard(prefix) is None:
        parse(prefix)


def is_under(url: str | Url, prefixes: list[str] | tuple[str, ...]) -> bool:
    """True when ``url`` lies under one of ``prefixes``, compared as parsed URLs, segment-wise, and
    for files as the OS resolves them (symlinks followed). A prefix ``gs://lab-em_*`` covers every
    bucket whose name starts with ``lab-em_``: the run locations named after a source bucket, which
    do not exist until a run makes them."""
    real = _resolved(parse(url))
    for prefix in prefixes:
        wildcard = _bucket_wildcard(prefix)
        if wildcard is not None:
            if real.scheme == wildcard[0] and real.bucket.startswith(wildcard[1]):
                return True
        elif (str(real).rstrip("/") + "/").startswith(str(_resolved(parse(prefix))).rstrip("/") + "/"):
            return True
    return False


def _resolved(u: Url) -> Url:
    """The location the OS will open: a file path with its symlinks resolved (as far as it exists)."""
    return Url("file", "", os.path.realpath(u.path)) if u.scheme == "file" else u


class OutsideAllowedPrefixes(PermissionError):
    """A location outside the prefixes this process is confined to."""


_confinement: tuple[str, ...] | None = None


def confine(prefixes: list[str] | None) -> None:
    """Confine every later read, write, listing, volume open and bucket operation of this process to
    ``prefixes`` (None lifts it). A service confines itself to ``EMPROCESS_ALLOWED_PREFIXES``, so a
    location that reaches storage by any path (a payload, a volume's ``info``, a derived key) is
    checked where it is used, on the normalised location."""
    global _confinement
    for prefix in prefixes or []:
        check_prefix(prefix)
    _confinement = None if prefixes is None else tuple(prefixes)


def allowed(url: str | Url) -> Url:
    """``url`` parsed; OutsideAllowedPrefixes when this process is confined and it lies outside."""
    u = parse(url)
    if _confinement is not None and not is_under(u, _confinement):
        raise OutsideAllowedPrefixes(f"{redact(str(u))} is outside this service's allowed prefixes")
    return u


@dataclass(frozen=True)
class RunLocations:
    """Where one run writes (ARCHITECTURE §3)."""

    process: str
    ng: str
    chunk: str
    tmp: str

    @property
    def jpeg(self) -> str:
        return join(self.ng, "neuroglancer", "jpeg")

    @property
    def raw(self) -> str:
        return join(self.chunk, "neuroglancer", "raw")

    @property
    def aligned(self) -> str:
        return join(self.tmp, "aligned")

    @property
    def chunkedgraph(self) -> str:
        return join(self.chunk, "chunkedgraph")

    @property
    def segmentation(self) -> str:
        return join(self.ng, "neuroglancer", "segmentation")

    @property
    def meshes(self) -> str:
        return join(self.ng, "neuroglancer", "segmentation", "mesh")

    def all(self) -> list[str]:
        return [self.process, self.ng, self.chunk, self.tmp]


# What joins a source's name and a location's: S3 bucket names may not hold '_' (AWS refuses them).
RUN_SEPARATOR = {"file": "_", "gs": "_", "s3": "-"}
BUCKET_NAME_MAX = 63


def _keyed_suffixes(scheme: str) -> dict[str, str]:
    """What follows the source's name, before the run key, in the locations named per run."""
    s = RUN_SEPARATOR[scheme]
    return {"ng": f"{s}ng{s}", "chunk": f"{s}chunk{s}", "tmp": f"{s}tmp{s}"}


def run_key_room(source: str) -> int | None:
    """How long a run key may be for every bucket named after ``source`` to be a valid name; None
    for folders."""
    u = parse(source)
    if u.scheme == "file":
        return None
    return BUCKET_NAME_MAX - len(u.bucket) - max(map(len, _keyed_suffixes(u.scheme).values()))


def run_locations(source: str, run_key: str) -> RunLocations:
    """Buckets ``B_process/R``, ``B_ng_R``, ``B_chunk_R``, ``B_tmp_R`` (sibling folders for file://;
    ``-`` instead of ``_`` for S3)."""
    u = parse(source)
    if u.scheme == "file":
        base = Path(u.path)
        parent, name = base.parent, base.name
        mk = lambda suffix, *rest: str(Url("file", "", str(parent.joinpath(name + suffix, *rest))))  # noqa: E731
    else:
        if u.path:
            raise StorageError(f"{source!r}: source must be a bucket without a path")
        name = u.bucket
        mk = lambda suffix, *rest: str(Url(u.scheme, name + suffix, "/".join(rest)))  # noqa: E731
    keyed = {location: mk(suffix + run_key) for location, suffix in _keyed_suffixes(u.scheme).items()}
    return RunLocations(process=mk(f"{RUN_SEPARATOR[u.scheme]}process", run_key), **keyed)


def run_prefixes(source: str) -> list[str]:
    """Prefixes for ``is_under`` that cover ``source`` and the locations of every run from it: the
    source's parent folder, or the source bucket and the buckets named after it."""
    u = parse(source)
    if u.scheme == "file":
        return [str(u.parent())]
    return [f"{u.scheme}://{u.bucket}", f"{u.scheme}://{u.bucket}{RUN_SEPARATOR[u.scheme]}*"]
