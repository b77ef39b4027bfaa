"""A bucket's (or folder's) contents, as ``emprocess admin`` handles them: whether it exists, its
objects with their sizes, deleting it in batches, archiving it to cold storage. Through
google-cloud-storage and boto3, imported on use."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from emprocess.storage.bucket_errors import BucketMissing, bucket_errors, refuse_folders, require_bucket, s3_error_code
from emprocess.storage.confinement import allowed
from emprocess.storage.urls import StorageError, Url

GCS_BATCH = 100  # calls per GCS batch request (the JSON API's limit)
S3_BATCH = 1000  # keys per DeleteObjects call (S3's limit)
ARCHIVE_CLASS = {"gs": "COLDLINE", "s3": "GLACIER_IR"}
ARCHIVE_RULE_ID = "emprocess-archive"  # S3 lifecycle rules have IDs; GCS ones are told apart by condition


def location_exists(url: str | Url) -> bool:
    """Whether ``url`` holds anything: the folder, the bucket (for a bucket root), or an object under
    the path. Access denied is raised, naming the bucket."""
    u = allowed(url)
    if u.scheme == "file":
        return Path(u.path).exists()
    if not u.path:
        try:
            require_bucket(u)
        except BucketMissing:
            return False
        return True
    return bool(object_sizes(u, limit=1))


def object_sizes(url: str | Url, limit: int | None = None) -> dict[str, int] | None:
    """Every object below ``url`` (a folder, a bucket or a path in one) and its size in bytes, by key
    relative to ``url``; None when the folder or bucket does not exist. Listed through the cloud
    clients, which report sizes (tensorstore lists keys only); at most ``limit`` objects."""
    u = allowed(url)
    if u.scheme == "file":
        return _file_sizes(Path(u.path), limit)
    prefix = u.path.rstrip("/") + "/" if u.path else ""
    found = {}
    try:
        with bucket_errors(u):
            for key, size in _listed(u, prefix):
                found[key[len(prefix):]] = size
                if limit is not None and len(found) >= limit:
                    break
    except BucketMissing:
        return None
    return found


def _file_sizes(root: Path, limit: int | None) -> dict[str, int] | None:
    if not root.is_dir():
        return None
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = path.lstat().st_size
            if limit is not None and len(found) >= limit:
                return found
    return found


def _listed(u: Url, prefix: str):
    """(key, size) of every object of ``u``'s bucket under ``prefix``, page by page."""
    if u.scheme == "gs":
        from google.cloud import storage as gcs

        for blob in gcs.Client().list_blobs(u.bucket, prefix=prefix or None):
            yield blob.name, blob.size or 0
    else:
        import boto3

        for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=u.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"], item["Size"]


def delete_location(url: str | Url) -> int:
    """Delete a folder tree, a bucket with every object (and object version) in it, or every object
    under a path in a bucket (the bucket stays); returns how many objects (files) it deleted. Batched
    (GCS batch requests of 100, S3 DeleteObjects of 1000) and resumable: each call lists what is
    left, and what is already gone is no error."""
    u = allowed(url)
    if u.scheme == "file":
        return _delete_folder(Path(u.path), u)
    try:
        with bucket_errors(u):
            return _delete_gcs(u) if u.scheme == "gs" else _delete_s3(u)
    except BucketMissing:
        return 0


def _delete_folder(path: Path, u: Url) -> int:
    if path == Path(path.anchor):
        raise StorageError(f"{u}: refusing to delete the file system root")
    if not path.exists():
        return 0
    if not path.is_dir():
        raise StorageError(f"{u}: not a folder")
    files = sum(len(names) for _, _, names in os.walk(path))
    shutil.rmtree(path)
    return files


def _delete_gcs(u: Url) -> int:
    from google.api_core.exceptions import NotFound
    from google.cloud import storage as gcs

    client = gcs.Client()
    bucket = client.bucket(u.bucket)
    prefix = u.path.rstrip("/") + "/" if u.path else None
    deleted = 0
    for page in client.list_blobs(bucket, prefix=prefix, versions=True, page_size=1000).pages:
        blobs = list(page)
        for start in range(0, len(blobs), GCS_BATCH):
            try:
                with client.batch():
                    for blob in blobs[start:start + GCS_BATCH]:
                        blob.delete()  # of this generation: a versioned bucket keeps none
            except NotFound:  # one was deleted meanwhile; the batch's other deletions went through
                pass
        deleted += len(blobs)
    if prefix is None:
        bucket.delete()
    return deleted


def _delete_s3(u: Url) -> int:
    import boto3

    s3 = boto3.client("s3")
    prefix = u.path.rstrip("/") + "/" if u.path else ""
    deleted = 0
    # Versions, not objects: a versioned bucket cannot be deleted while it holds old versions or
    # delete markers; an unversioned bucket lists each object once, as version "null".
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=u.bucket, Prefix=prefix,
                                                                  PaginationConfig={"PageSize": S3_BATCH}):
        keys = [{"Key": item["Key"], "VersionId": item["VersionId"]}
                for item in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if keys:
            errors = s3.delete_objects(Bucket=u.bucket, Delete={"Objects": keys, "Quiet": True}).get("Errors", [])
            failed = [e for e in errors if e.get("Code") != "NoSuchKey"]
            if failed:
                raise StorageError(f"s3://{u.bucket}: {len(failed)} objects not deleted, e.g. "
                                   f"{failed[0]['Key']}: {failed[0].get('Code')} {failed[0].get('Message', '')}")
        deleted += len(keys)
    if not prefix:
        s3.delete_bucket(Bucket=u.bucket)
    return deleted


def archive(url: str | Url) -> None:
    """Move the bucket's objects (those under the URL's path, if it has one) to cold storage — GCS
    COLDLINE, S3 GLACIER_IR — through a lifecycle rule of age 0, which the store applies within about
    a day. The bucket's other lifecycle rules stay; an earlier archive rule for the same objects is
    replaced, so archiving twice leaves one rule."""
    u = refuse_folders(url, "archiving")
    prefix = u.path.rstrip("/") + "/" if u.path else ""
    with bucket_errors(u):
        if u.scheme == "gs":
            from google.cloud import storage as gcs

            bucket = gcs.Client().get_bucket(u.bucket)
            condition = {"age": 0, **({"matchesPrefix": [prefix]} if prefix else {})}
            kept = [dict(rule) for rule in bucket.lifecycle_rules
                    if not (rule["action"].get("type") == "SetStorageClass" and rule.get("condition") == condition)]
            bucket.lifecycle_rules = [*kept, {"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
                                              "condition": condition}]
            bucket.patch()
        else:
            import boto3

            s3 = boto3.client("s3")
            rule_id = f"{ARCHIVE_RULE_ID} {prefix}".strip()
            kept = [rule for rule in _s3_lifecycle_rules(s3, u.bucket) if rule.get("ID") != rule_id]
            s3.put_bucket_lifecycle_configuration(Bucket=u.bucket, LifecycleConfiguration={"Rules": [
                *kept, {"ID": rule_id, "Status": "Enabled", "Filter": {"Prefix": prefix},
                        "Transitions": [{"Days": 0, "StorageClass": "GLACIER_IR"}]}]})


def _s3_lifecycle_rules(s3, bucket: str) -> list[dict]:
    try:
        return s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except Exception as err:
        if s3_error_code(err) == "NoSuchLifecycleConfiguration":
            return []
        raise
