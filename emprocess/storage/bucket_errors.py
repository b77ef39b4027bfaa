"""The one place the cloud clients' failures become messages that name the bucket (a missing bucket,
access denied), and the checks that a location is a bucket that exists."""

from __future__ import annotations

from contextlib import contextmanager

from emprocess.storage.confinement import allowed
from emprocess.storage.urls import StorageError, Url


class BucketMissing(StorageError):
    """A bucket that does not exist; the message names it."""


@contextmanager
def bucket_errors(url: str | Url):
    """The one place the clients' failures become messages naming the bucket: a missing bucket
    (BucketMissing) and access denied (StorageError). Other failures pass unchanged."""
    u = allowed(url)
    try:
        yield
    except Exception as err:
        mapped = _mapped_error(err, f"{u.scheme}://{u.bucket}")
        if mapped is None:
            raise
        raise mapped from None


def _mapped_error(err: Exception, bucket: str) -> StorageError | None:
    if bucket.startswith("gs://"):
        from google.api_core import exceptions as google

        if isinstance(err, google.NotFound):
            return BucketMissing(f"{bucket}: bucket does not exist")
        if isinstance(err, google.Forbidden):
            return StorageError(f"{bucket}: access denied (403): {err.message}")
        return None
    from botocore.exceptions import ClientError

    if not isinstance(err, ClientError):
        return None
    error = err.response.get("Error", {})
    code, message = str(error.get("Code")), error.get("Message") or ""
    if code in ("NoSuchBucket", "404"):
        return BucketMissing(f"{bucket}: bucket does not exist")
    if code in ("AccessDenied", "AllAccessDisabled", "403"):
        return StorageError(f"{bucket}: access denied (403): {message}")
    return None


def s3_error_code(err: Exception) -> str | None:
    from botocore.exceptions import ClientError

    return err.response.get("Error", {}).get("Code") if isinstance(err, ClientError) else None


def refuse_folders(url: str | Url, what: str) -> Url:
    """``url`` parsed; a StorageError naming it when it is a folder, for which ``what`` (a bucket
    setting) means nothing."""
    u = allowed(url)
    if u.scheme == "file":
        raise StorageError(f"{u}: {what} means nothing for a folder; it is for gs:// and s3:// buckets")
    return u


def require_bucket(url: str | Url) -> Url:
    """``url`` (gs:// or s3://) parsed, once its bucket is known to exist: BucketMissing or access
    denied, naming it, otherwise."""
    u = refuse_folders(url, "a bucket")
    with bucket_errors(u):
        if u.scheme == "gs":
            from google.cloud import storage as gcs

            gcs.Client().get_bucket(u.bucket)
        else:
            import boto3

            boto3.client("s3").head_bucket(Bucket=u.bucket)
    return u
