"""Bad-input cases about storage: see ``support.refusals``. A store a case needs is started the first time a
case runs against it and kept until this process exits: moto (S3) and gcp-storage-emulator (GCS) in
this process, and a moto that checks credentials in its own (moto's switch is per process)."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from support.refusals import Case

BUCKET = "emprocess-refusals"  # on endpoints that cannot answer about it
MISSING = "emprocess-no-such-bucket"  # never made
EMPTY = "emprocess-empty"  # made, without slices
KEY = "testing"  # the S3 credentials moto takes


def s3(endpoint: str, key: str = KEY) -> dict[str, str | None]:
    """Environment for an S3 endpoint and key, without the settings a developer's shell may carry
    that would override them."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": None, "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": key, "AWS_SESSION_TOKEN": None, "AWS_PROFILE": None, "AWS_REGION": None,
            "AWS_DEFAULT_REGION": "us-east-1"}


@functools.cache
def moto() -> str:
    """A moto S3 server in this process, taking any key."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request, on the benchmark's output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # on a daemon thread
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


# moto in a child process that serves until its stdin closes: when this process ends, however it ends
SERVE_WHILE_PARENT_LIVES = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("http://%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()
"""
_children: list[subprocess.Popen] = []  # kept, so that their stdin stays open


@functools.cache
def moto_checking_credentials() -> str:
    """A moto that checks credentials: it knows no IAM user, so it refuses every key with 403."""
    server = subprocess.Popen([sys.executable, "-c", SERVE_WHILE_PARENT_LIVES], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0"))
    _children.append(server)
    endpoint = server.stdout.readline().strip()
    if not endpoint:
        raise RuntimeError("moto did not start")
    return endpoint


@functools.cache
def empty_bucket() -> str:
    """The moto of ``moto()``, holding bucket ``EMPTY``."""
    import boto3

    boto3.client("s3", endpoint_url=moto(), region_name="us-east-1", aws_access_key_id=KEY,
                 aws_secret_access_key=KEY).create_bucket(Bucket=EMPTY)
    return moto()


def gcs(endpoint: str) -> dict[str, str]:
    """Environment for a GCS endpoint, with a fixed token (tensorstore then looks for no credentials)."""
    return {"TENSORSTORE_GCS_HTTP_URL": endpoint, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}


@functools.cache
def gcs_emulator() -> str:
    """A gcp-storage-emulator in this process."""
    from gcp_storage_emulator import server as emulator

    server = emulator.create_server("127.0.0.1", 0, in_memory=True)
    server._api.daemon = True  # else this process could not exit: atexit runs after such threads end
    server.start()
    return f"http://127.0.0.1:{server._api._httpd.server_address[1]}"  # the emulator does not expose it


@functools.cache
def silent() -> socket.socket:
    """A listening socket nothing accepts from: connections are made, and never answered."""
    return socket.create_server(("127.0.0.1", 0))


def closed_port() -> str:
    """An endpoint where nothing listens (a port that was free a moment ago)."""
    from emprocess.workflow.local_run import free_port

    return f"http://127.0.0.1:{free_port()}"


def source(url: str):
    return lambda conf: conf.update(source=url)


def file_for_folder(src: Path) -> None:
    shutil.rmtree(src)
    src.write_bytes(b"")


def outside(src: Path, name: str) -> Path:
    """A path beside the folder that holds the stack's folder: outside what a run from it may read."""
    return src.parent.parent / f"{src.parent.name}-{name}"


def slice_linked_from_outside(src: Path) -> None:
    (src / "img001.png").rename(outside(src, "img001.png"))
    (src / "img001.png").symlink_to(outside(src, "img001.png"))


def folder_linked_from_outside(src: Path) -> None:
    src.rename(outside(src, "src"))
    src.symlink_to(outside(src, "src"))


CASES = [
    Case("S3 endpoint refusing connections", source(f"s3://{BUCKET}"), None,
         (f"cannot reach s3://{BUCKET}/img000.png", "AWS_ENDPOINT_URL", "network"),
         env=lambda: s3(closed_port())),
    Case("S3 endpoint that never answers", source(f"s3://{BUCKET}"), None,
         (f"no answer about s3://{BUCKET}/img000.png", "EMPROCESS_PROBE_TIMEOUT", "credentials"),
         env=lambda: s3(f"http://127.0.0.1:{silent().getsockname()[1]}")),
    Case("S3 endpoint host unknown", source(f"s3://{BUCKET}"), None,
         (f"s3://{BUCKET}/img000.png", "emprocess-nowhere.invalid", "AWS_ENDPOINT_URL"),
         env=lambda: s3("http://emprocess-nowhere.invalid:9000")),
    Case("S3 bucket that does not exist", source(f"s3://{MISSING}"), None,
         (f"bucket s3://{MISSING} does not exist", "AWS_ENDPOINT_URL"), env=lambda: s3(moto())),
    Case("S3 key refused", source(f"s3://{BUCKET}"), None,
         (f"access to s3://{BUCKET}/img000.png is refused (HTTP 403", "AWS_ACCESS_KEY_ID"),
         env=lambda: s3(moto_checking_credentials(), key="AKIANOBODYKNOWS")),
    Case("S3 bucket without the slices", source(f"s3://{EMPTY}"), None, (f"s3://{EMPTY}", "img000.png"),
         env=lambda: s3(empty_bucket())),
    Case("GCS bucket that does not exist", source(f"gs://{MISSING}"), None,
         (f"bucket gs://{MISSING} does not exist", "TENSORSTORE_GCS_HTTP_URL"),
         env=lambda: gcs(gcs_emulator())),
    Case("GCS endpoint refusing connections", source(f"gs://{BUCKET}"), None,
         (f"cannot reach gs://{BUCKET}/img000.png", "TENSORSTORE_GCS_HTTP_URL", "network"),
         env=lambda: gcs(closed_port())),
    Case("source folder missing", lambda c: c.update(source=c["source"] + "_gone"), None,
         ("folder file://", "src_gone does not exist")),
    Case("source is a file", None, file_for_folder, ("src is a file, not a folder",)),
    Case("slice linked from outside", None, slice_linked_from_outside, ("img001.png", "resolves to", "outside")),
    Case("source folder linked from outside", None, folder_linked_from_outside,
         ("img000.png", "resolves to", "outside")),
]
