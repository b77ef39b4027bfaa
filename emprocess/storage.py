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
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import tensorstore as ts

SCHEMES = ("file", "gs", "s3")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
# Local files are read through memory maps: the pyramid reads every aligned tile once, and copying
# them through read buffers cost page faults worth a tenth of its work.
_CONTEXT = ts.Context(ts.Context.Spec({"file_io_mode": {"mode": "memmap"}}))
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
            _check_segments(part, str(self))
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


def _check_segments(path: str, url: str) -> None:
    for segment in path.split("/"):
        if segment in ("..", "."):
            raise StorageError(f"{url!r}: '{segment}' path segments are not allowed")


def parse(url: str | Url) -> Url:
    """Parse and validate a URL; a plain path becomes ``file://`` and a bare name becomes ``gs://``."""
    if isinstance(url, Url):
        return url
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"{url!r}: expected a non-empty URL string")
    text = url.strip()
    if "://" not in text:
        if text.startswith(("/", "./")) or os.sep in text:
            _check_segments(text.removeprefix("./"), text)
            return Url("file", "", str(Path(text).resolve()))
        text = "gs://" + text
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise StorageError(f"{url!r}: unsupported scheme {scheme!r}; use file://, gs:// or s3://")
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{url!r}: file URLs must be absolute (file:///abs/dir)")
        if not parsed.path.startswith("/"):
            raise StorageError(f"{url!r}: file URLs must be absolute (file:///abs/dir)")
        _check_segments(parsed.path, url)
        return Url("file", "", os.path.normpath(parsed.path))
    bucket = parsed.netloc
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(f"{url!r}: {bucket!r} is not a valid bucket name")
    path = parsed.path.lstrip("/")
    _check_segments(path, url)
    return Url(scheme, bucket, path.rstrip("/"))


def join(url: str | Url, *parts: str) -> str:
    return str(parse(url).join(*parts))


def kvstore_spec(url: str | Url) -> dict:
    """The tensorstore kvstore spec of a URL (a directory when used as a volume's base)."""
    u = parse(url)
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
    """The shared tensorstore context (connection pools, cache) for every open."""
    return _CONTEXT


def _store_of(url: str | Url) -> tuple[ts.KvStore, str]:
    """The kvstore of the bucket (or ``/`` for files) and the key of ``url`` inside it."""
    u = parse(url)
    root = Url(u.scheme, u.bucket, "/" if u.scheme == "file" else "")
    key = u.path.lstrip("/")
    cache_key = json.dumps(kvstore_spec(root), sort_keys=True)
    with _KVSTORES_LOCK:
        store = _KVSTORES.get(cache_key)
        if store is None:
            store = ts.KvStore.open(kvstore_spec(root), context=_CONTEXT).result()
            _KVSTORES[cache_key] = store
    return store, key


def read(url: str | Url) -> bytes:
    store, key = _store_of(url)
    result = store.read(key).result()
    if result.state != "value":
        raise FileNotFoundError(f"{url}: not found")
    return bytes(result.value)


def read_range(url: str | Url, start: int, stop: int | None = None) -> bytes:
    """Bytes ``start:stop`` of an object; a negative ``start`` with no ``stop`` reads a suffix."""
    store, key = _store_of(url)
    result = store.read(key, byte_range=slice(start, stop)).result()
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
    store.write(key, data).result()


def write_all(objects: dict[str, bytes]) -> None:
    """Write many objects (each as ``write`` does), all in flight at once; returns when all are written."""
    writes = [store.write(key, data) for (store, key), data in ((_store_of(u), d) for u, d in objects.items())]
    for done in writes:
        done.result()


def exists(url: str | Url) -> bool:
    store, key = _store_of(url)
    return store.read(key, byte_range=slice(0, 0)).result().state == "value"


def listdir(url: str | Url) -> list[str]:
    """Every key below ``url`` (recursively), relative to it, sorted."""
    u = parse(url)
    store, key = _store_of(u)
    prefix = key.rstrip("/") + "/" if key else ""
    if u.scheme == "file" and not os.path.isdir(u.path):
        return []
    keys = store.list(ts.KvStore.KeyRange(prefix, _successor(prefix)) if prefix else None).result()
    return sorted(k.decode()[len(prefix):] for k in keys)


def _successor(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def delete(url: str | Url) -> None:
    store, key = _store_of(url)
    store.delete_range(ts.KvStore.KeyRange(key, key + "\0")).result()


def delete_tree(url: str | Url) -> None:
    """Delete every key below ``url``; for a bucket root that is the whole bucket's content."""
    u = parse(url)
    store, key = _store_of(u)
    if not key:
        if u.scheme == "file":
            raise StorageError(f"{url!r}: refusing to delete the file system root")
        store.delete_range(ts.KvStore.KeyRange()).result()
        return
    prefix = key.rstrip("/") + "/"
    store.delete_range(ts.KvStore.KeyRange(prefix, _successor(prefix))).result()


def read_json(url: str | Url):
    return json.loads(read(url))


def read_json_if_exists(url: str | Url):
    data = read_if_exists(url)
    return None if data is None else json.loads(data)


def write_json(url: str | Url, value) -> None:
    write(url, json.dumps(value, indent=2, sort_keys=True).encode())


def ensure_location(url: str | Url, project: str | None = None) -> None:
    """Create the bucket (or folder) that holds ``url`` if it does not exist."""
    u = parse(url)
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
    u = parse(url)
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
    u = parse(url)
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


def is_under(url: str | Url, prefixes: list[str]) -> bool:
    """True when ``url`` lies under one of ``prefixes``, compared as parsed URLs, segment-wise. A prefix
    ``gs://lab-em_*`` covers every bucket whose name starts with ``lab-em_``: the run locations named
    after a source bucket, which do not exist until a run makes them."""
    u = parse(url)
    for prefix in prefixes:
        wildcard = _bucket_wildcard(prefix)
        if wildcard is not None:
            if u.scheme == wildcard[0] and u.bucket.startswith(wildcard[1]):
                return True
        elif (str(u).rstrip("/") + "/").startswith(str(parse(prefix)).rstrip("/") + "/"):
            return True
    return False


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
