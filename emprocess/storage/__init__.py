"""One URL model for every place emprocess reads or writes, split by job:

* ``urls``: what a location string means (``parse``, ``join``, ``Url``);
* ``confinement``: the allowed prefixes a process is confined to (``confine``, ``allowed``);
* ``kvstores``: tensorstore's context, kvstore specs and opened stores, its permanent failures;
* ``objects``: read, write, test, list and delete objects and JSON documents;
* ``reachability``: whether a store answers, in bounded time;
* ``buckets``: bucket settings (create, expire, public or private) through google-cloud-storage and boto3;
* ``bucket_contents``: a bucket's objects and sizes, deleting and archiving them (``emprocess admin``);
* ``bucket_errors``: the clients' failures as messages naming the bucket.

This package re-exports them all, so ``storage.X`` names any of them. Where a run writes is the run
layout's (``emprocess.run_layout``).
"""

from emprocess.storage.buckets import CORS_RULE, ensure_location, make_public, set_expiry
from emprocess.storage.confinement import OutsideAllowedPrefixes, allowed, check_prefix, confine, is_under
from emprocess.storage.kvstores import context, is_permanent, kvstore_spec, tensorstore_message
from emprocess.storage.objects import (
    delete,
    delete_tree,
    exists,
    listdir,
    parse_json,
    read,
    read_if_exists,
    read_json,
    read_json_if_exists,
    read_range,
    write,
    write_all,
    write_json,
)
from emprocess.storage.reachability import GCS_URL, PROBE_SECONDS, probe, probe_timeout
from emprocess.storage.urls import SCHEMES, StorageError, Url, join, parse

__all__ = [
    "CORS_RULE", "GCS_URL", "PROBE_SECONDS", "SCHEMES", "OutsideAllowedPrefixes", "StorageError", "Url", "allowed",
    "check_prefix", "confine", "context", "delete", "delete_tree", "ensure_location", "exists", "is_permanent",
    "is_under", "join", "kvstore_spec", "listdir", "make_public", "parse", "parse_json", "probe", "probe_timeout",
    "read", "read_if_exists", "read_json", "read_json_if_exists", "read_range", "set_expiry", "tensorstore_message",
    "write", "write_all", "write_json",
]

