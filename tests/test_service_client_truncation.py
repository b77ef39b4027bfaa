"""ServiceClient against a real uvicorn server behind a local TCP proxy that cuts replies in half."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from emprocess.workflow.local_run import free_port
from emprocess.workflow.service_client import ServiceClient

ATTEMPTS = 3
# (endpoint, upstream HTTP/1.0, framing the server really sent, error requests raises on half of it)
FRAMINGS = {
    "content-length": ("/fixed", False, b"content-length:", "ChunkedEncodingError"),
    "chunked": ("/streamed", False, b"transfer-encoding: chunked", "ChunkedEncodingError"),
    "until-close": ("/streamed", True, None, "JSONDecodeError"),
}


def reply_for(key: str) -> dict:
    """A few KB of JSON, so half of it is well-formed framing around broken JSON."""
    return {"key": key, "values": [f"value-{i:05d}" for i in range(300)]}


def counting_app(calls: list[str]) -> FastAPI:
    """``/fixed`` answers with a Content-Length; ``/streamed`` with a body of unknown length, which
    uvicorn sends chunked to HTTP/1.1 clients and delimited by closing to HTTP/1.0 ones."""
    app = FastAPI()

    @app.post("/fixed")
    def fixed(payload: dict) -> dict:
        calls.append(payload["key"])
        return reply_for(payload["key"])

    @app.post("/streamed")
    def streamed(payload: dict) -> StreamingResponse:
        calls.append(payload["key"])
        return StreamingResponse(iter([json.dumps(reply_for(payload["key"])).encode()]),
                                 media_type="application/json")

    return app


@contextmanager
def serving(app: FastAPI) -> Iterator[int]:
    """``app`` served by uvicorn (h11, which honours HTTP/1.0 framing) on a free 127.0.0.1 port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), http="h11",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield server.config.port
    finally:
        server.should_exit = True
        thread.join(10)


def read_request(conn: socket.socket) -> bytes:
    """One whole request (head and Content-Length body) from ``conn``; b"" if it closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while length and len(body) < int(length[1]):
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return head + b"\r\n\r\n" + body


class CuttingProxy:
    """Relays one request per connection to 127.0.0.1:``upstream`` (asking it to close after its reply,
    optionally as HTTP/1.0) and returns the first ``cut`` replies as headers plus half the body, then
    closes; later replies pass through whole. Keeps each reply's head in ``heads``."""

    def __init__(self, upstream: int, cut: int, http10: bool = False):
        self.upstream, self.cut, self.http10 = upstream, cut, http10
        self.cuts_made = 0
        self.heads: list[bytes] = []
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", free_port()))
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                self.relay(conn)

    def relay(self, conn: socket.socket) -> None:
        request = read_request(conn)
        if not request:
            return
        request = re.sub(rb"(?im)^connection:[^\r\n]*\r\n", b"", request, count=1)
        request = request.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
        if self.http10:
            request = request.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
        reply = b""
        with socket.create_connection(("127.0.0.1", self.upstream), timeout=5) as upstream:
            upstream.sendall(request)
            while chunk := upstream.recv(65536):
                reply += chunk
        head_end = reply.index(b"\r\n\r\n") + 4
        self.heads.append(reply[:head_end].lower())
        if self.cuts_made < self.cut:
            self.cuts_made += 1
            reply = reply[: head_end + (len(reply) - head_end) // 2]
        conn.sendall(reply)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(5)
        self.listener.close()


@contextmanager
def cut_service(framing: str, cut: int) -> Iterator[tuple[ServiceClient, CuttingProxy, list[str]]]:
    """A client, the proxy it talks through and the keys the server was called with."""
    calls: list[str] = []
    with serving(counting_app(calls)) as port:
        proxy = CuttingProxy(port, cut, http10=FRAMINGS[framing][1])
        try:
            yield ServiceClient(proxy.url, timeout_s=5, max_attempts=ATTEMPTS, backoff_base_s=0.01), proxy, calls
        finally:
            proxy.close()
    for head in proxy.heads:  # the server really used the framing the case is named after
        marker = FRAMINGS[framing][2]
        assert marker in head if marker else (b"content-length:" not in head and b"chunked" not in head)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_truncated_replies_are_retried_until_one_arrives_whole(framing, caplog):
    endpoint, _, _, error = FRAMINGS[framing]
    with caplog.at_level(logging.WARNING, "emprocess.service_client"), cut_service(framing, ATTEMPTS - 1) as (
        client, proxy, calls
    ):
        assert client.post(endpoint, {"key": "k007"}) == reply_for("k007")
    assert calls == ["k007"] * ATTEMPTS and proxy.cuts_made == ATTEMPTS - 1
    retries = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(retries) == ATTEMPTS - 1 and all(error in m for m in retries)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_truncated_replies_use_up_the_same_retry_budget(framing):
    endpoint, _, _, error = FRAMINGS[framing]
    with cut_service(framing, ATTEMPTS + 2) as (client, proxy, calls):
        with pytest.raises(RuntimeError, match=f"failed after {ATTEMPTS} attempts; last: truncated.*{error}"):
            client.post(endpoint, {"key": "k008"})
    assert calls == ["k008"] * ATTEMPTS and proxy.cuts_made == ATTEMPTS
