"""Shared pytest fixtures, one section per topic (add a new section rather than growing another's)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus

import pytest

# ==== Object stores: a real S3 API (moto server) and GCS API (gcp-storage-emulator) per session ==========
#
# Each fixture starts its server on 127.0.0.1 once per session, points every client at it through the
# environment for the rest of the session (boto3, tensorstore and google-cloud-storage all read it at
# open), and yields an ObjectStoreServer. Use a fresh bucket per test (``new_bucket``): the servers and
# storage.py's kvstore cache live as long as the session, so reused names would share state.


@dataclass
class ObjectStoreServer:
    """A running object-store API: its ``endpoint`` URL and helpers to make uniquely named buckets."""

    scheme: str  # "s3" or "gs"
    endpoint: str  # http://127.0.0.1:PORT
    _create: Callable[[str], None]
    _exists: Callable[[str], bool]
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def bucket_name(self, prefix: str = "test") -> str:
        """A bucket name no test has used in this session (the bucket is not created)."""
        return f"{prefix}-{next(self._counter)}"

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a fresh bucket and return its URL, e.g. ``s3://test-3``."""
        name = self.bucket_name(prefix)
        self._create(name)
        return f"{self.scheme}://{name}"

    def bucket_exists(self, name: str) -> bool:
        return self._exists(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ObjectStoreServer]:
    """moto's S3 server; AWS_ENDPOINT_URL and dummy credentials set for the session."""
    import boto3
    from botocore.exceptions import ClientError
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")

    def exists(name: str) -> bool:
        try:
            client.head_bucket(Bucket=name)
        except ClientError:
            return False
        return True

    with pytest.MonkeyPatch.context() as env:
        # Settings a developer's shell may carry that would override or confuse ours.
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield ObjectStoreServer("s3", endpoint, lambda name: client.create_bucket(Bucket=name), exists)
    server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[ObjectStoreServer]:
    """gcp-storage-emulator, in memory, with the two fixes tensorstore needs (see ``_fixed_gcs_routes``).

    Environment for the session: TENSORSTORE_GCS_HTTP_URL (tensorstore), STORAGE_EMULATOR_HOST
    (google-cloud-storage, which then goes anonymous) and GOOGLE_AUTH_TOKEN_FOR_TESTING, which makes
    tensorstore send a fixed token instead of looking for real credentials or a GCE metadata server.
    """
    from gcp_storage_emulator import server as emulator
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    with pytest.MonkeyPatch.context() as env:
        env.setattr(emulator, "HANDLERS", _fixed_gcs_routes(emulator.HANDLERS))
        server = emulator.create_server("127.0.0.1", 0, in_memory=True)
        server.start()
        port = server._api._httpd.server_address[1]  # the emulator does not expose the port it bound
        endpoint = f"http://127.0.0.1:{port}"
        env.setenv("TENSORSTORE_GCS_HTTP_URL", endpoint)
        env.setenv("STORAGE_EMULATOR_HOST", endpoint)
        env.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
        client = gcs.Client(project="emprocess-test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": endpoint})
        try:
            yield ObjectStoreServer("gs", endpoint, client.create_bucket,
                                    lambda name: client.lookup_bucket(name) is not None)
        finally:
            server.stop()


def _fixed_gcs_routes(routes: tuple) -> tuple:
    """The emulator's routes, made to behave like GCS where tensorstore depends on it.

    - Listing ignores ``startOffset``/``endOffset``, and tensorstore lists a key range with those alone:
      ``listdir`` would return neighbouring keys and ``delete_range`` would empty the whole bucket.
    - Reads carry no ``x-goog-generation`` header, so tensorstore's read-modify-write (any partial chunk
      write) fails with "Malformed StorageGeneration".
    - Suffix ranges (``Range: bytes=-N``, the last N bytes) are ignored, which tensorstore reports as
      FAILED_PRECONDITION; GCS serves them.
    """
    from gcp_storage_emulator.handlers import objects

    def list_range(request, response, storage):
        objects.ls(request, response, storage)
        if response.status != HTTPStatus.OK:
            return
        start = request.query.get("startOffset", [""])[0]
        end = request.query.get("endOffset", [""])[0]  # empty: no upper bound
        listing = json.loads(response._content)  # the emulator keeps the JSON body here until it is sent
        listing["items"] = [o for o in listing["items"] if start <= o["name"] and (not end or o["name"] < end)]
        response.json(listing)

    def with_generation(handler):
        def handle(request, response, storage):
            handler(request, response, storage)
            if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
                obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
                response["x-goog-generation"] = obj["generation"]
                response["x-goog-metageneration"] = obj["metageneration"]

        return handle

    class SuffixAsOffset:
        """The request with ``bytes=-N`` restated as the equivalent ``bytes=start-``."""

        def __init__(self, request, size: int):
            self._request, self._size = request, size

        def __getattr__(self, name):
            return getattr(self._request, name)

        def get_header(self, name, default=None):
            value = self._request.get_header(name, default)
            suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", value or "") if name.lower() == "range" else None
            return f"bytes={max(0, self._size - int(suffix[1]))}-" if suffix else value

    def with_suffix_ranges(handler):
        def handle(request, response, storage):
            try:
                size = len(storage.get_file(request.params["bucket_name"], request.params["object_id"]))
            except Exception:  # missing object: the handler answers 404 itself
                return handler(request, response, storage)
            handler(SuffixAsOffset(request, size), response, storage)

        return handle

    fixes = {objects.ls: list_range, objects.get: with_generation(with_suffix_ranges(objects.get)),
             objects.download: with_generation(with_suffix_ranges(objects.download))}
    return tuple((pattern, {method: fixes.get(handler, handler) for method, handler in methods.items()})
                 for pattern, methods in routes)


# ==== Mail: a real SMTP server (aiosmtpd) per session =====================================================


@dataclass
class SmtpServer:
    """A running SMTP server on 127.0.0.1 that keeps every message it is given."""

    connection: str  # the Airflow connection URI of the server (for AIRFLOW_CONN_SMTP_DEFAULT)
    messages: list = field(default_factory=list)  # email.message.EmailMessage, in arrival order

    def to(self, address: str) -> list:
        return [m for m in self.messages if address in m["To"]]


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    from email import message_from_bytes, policy

    from aiosmtpd.controller import Controller

    from emprocess.workflow.local_run import free_port

    port = free_port()
    server = SmtpServer(f"smtp://127.0.0.1:{port}?disable_ssl=true&disable_tls=true&timeout=10&retry_limit=0"
                        "&from_email=emprocess%40lab.example")

    class Inbox:
        async def handle_DATA(self, smtp, session, envelope):
            server.messages.append(message_from_bytes(envelope.content, policy=policy.default))
            return "250 OK"

    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    yield server
    controller.stop()


# ==== A small sample and both services for it (DAG runs through Airflow) ================================


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory) -> dict:
    """The synthetic sample, 4 slices of 256²: its conf."""
    from emprocess.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("small") / "sample", size=256, n_slices=4, seed=5)


@pytest.fixture(scope="module")
def service_connections(small_sample, tmp_path_factory) -> Iterator[dict[str, str]]:
    """Both services on loopback, allowed what the sample's runs read and write; yields the Airflow
    connections to them as ``{"AIRFLOW_CONN_…": URL}``."""
    from contextlib import ExitStack

    from emprocess.config import parse_conf
    from emprocess.registry import SERVICES
    from emprocess.workflow.local_run import allowed_prefixes, service

    logs = tmp_path_factory.mktemp("service-logs")
    allowed = allowed_prefixes(parse_conf(small_sample))
    with ExitStack() as stack:
        yield {f"AIRFLOW_CONN_{svc.connection}": stack.enter_context(service(svc.name, allowed, logs))
               for svc in SERVICES.values()}
