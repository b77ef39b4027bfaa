"""Request limits checked before a body is parsed: its size (413) and how deep its JSON nests (422).

Starlette reads any body it is sent, and Python's JSON parser recurses once per level, so an
oversized or deeply nested request would cost memory and time (or a RecursionError, a 500) before
any validation could refuse it.
"""

from __future__ import annotations

import json
import re

import numpy as np

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def json_depth(body: bytes) -> int:
    """How deep the JSON text ``body`` nests its arrays and objects (brackets inside strings skipped)."""
    skeleton = np.frombuffer(_STRING.sub(b"", body), np.uint8)
    steps = np.isin(skeleton, _OPEN).astype(np.int64) - np.isin(skeleton, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


class BodyLimits:
    """ASGI middleware: POST bodies over ``max_bytes`` get 413, JSON deeper than ``max_depth`` 422."""

    def __init__(self, app, max_bytes: int, max_depth: int):
        self.app, self.max_bytes, self.max_depth = app, max_bytes, max_depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await _refuse(send, 413, self._too_large())
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _refuse(send, 413, self._too_large())
        if json_depth(bytes(body)) > self.max_depth:
            return await _refuse(send, 422, f"the request's JSON nests deeper than {self.max_depth} levels")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes (EMPROCESS_MAX_BODY_BYTES)"


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
