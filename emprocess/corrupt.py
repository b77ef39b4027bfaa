"""Telling stored data that cannot be decoded from a read that failed on the way.

Bad bytes (a truncated or garbage chunk, shard, zarr chunk or ``info``) stay bad however often a
mini-task is retried, so they must be an InputError naming the volume (the services answer 422);
a store that is down or slow must stay retryable (500). tensorstore raises ValueError for both,
its status code leading the message. Measured (tensorstore 0.1.86, local files and S3): truncated,
overlong and garbage precomputed chunks (raw, compressed_segmentation, JPEG, PNG), shard files,
zarr chunks and invalid ``info`` files all fail with ``FAILED_PRECONDITION``; an S3 or GCS endpoint
that is unreachable or answers 5xx/429 fails with ``ABORTED`` ("All N retry attempts failed"; other
failed transfers carry UNAVAILABLE or DEADLINE_EXCEEDED). INVALID_ARGUMENT comes without its code
(a bad spec, HTTP 400), so it is left alone too. Only ``storage.is_permanent`` errors become
InputError; every other error is re-raised unchanged. The codes are listed once, in ``storage``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NoReturn

from emprocess import storage
from emprocess.stages import InputError


def raise_for(err: ValueError, what: str) -> NoReturn:
    """Raise InputError naming ``what`` when ``err`` says stored bytes are bad; else ``err`` itself."""
    if storage.is_permanent(err) and not isinstance(err, InputError):
        raise InputError(f"{what}: {storage.tensorstore_message(err)}") from None
    raise err


@contextmanager
def reading(what: str) -> Iterator[None]:
    """Around a tensorstore open or read of ``what`` (a URL, with the voxels or chunk when known)."""
    try:
        yield
    except ValueError as err:
        raise_for(err, what)


def parse_json(data: bytes, what: str):
    """``storage.parse_json`` for an input file: InputError naming it when it is not JSON."""
    try:
        return storage.parse_json(data, what)
    except storage.StorageError as err:
        raise InputError(str(err)) from None
