"""Serve local outputs to neuroglancer: static files with HTTP Range requests and CORS.

Sharded precomputed volumes are read with Range requests, and neuroglancer runs on another origin,
so Python's plain ``http.server`` (no Range, no CORS) is not enough.
"""

from __future__ import annotations

import json
import os
import re
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from emprocess.chunkedgraph.properties import largest_bodies
from emprocess.pyramid.viewer import SHOWN_BODIES, neuroglancer_url
from emprocess.run_layout import COMPLETE_FILE, process_suffix

RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeCorsHandler(SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "Range")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges")
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_OPTIONS(self) -> None:
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.end_headers()

    def do_GET(self) -> None:
        match = RANGE_RE.match(self.headers.get("Range", "").strip())
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().do_GET()
        size = os.path.getsize(path)
        first, last = match.groups()
        if first == "":  # suffix range: the last N bytes
            start, stop = max(0, size - int(last or 0)), size - 1
        else:
            start, stop = int(first), min(int(last) if last else size - 1, size - 1)
        if start >= size or start > stop:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(stop - start + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def make_server(directory: str, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), partial(RangeCorsHandler, directory=directory))


def viewer_links(directory: str, base_url: str) -> list[tuple[str, str]]:
    """(run id, neuroglancer URL) for every completed run whose outputs lie under ``directory``.

    A ChunkedGraph-only run is shown over the images of the latest earlier run of the same dataset.
    """
    root = Path(directory).resolve()

    def http(url: str | None) -> str | None:
        if not url or not url.startswith("file://"):
            return None
        path = Path(url.removeprefix("file://"))
        return f"{base_url.rstrip('/')}/{path.relative_to(root).as_posix()}" if path.is_relative_to(root) else None

    runs = [json.loads(marker.read_text()) for marker in root.glob(f"*{process_suffix('file')}/*/{COMPLETE_FILE}")]
    images: dict[str, tuple[str | None, str | None]] = {}  # dataset id → (jpeg, raw) of its latest image run
    links = []
    for complete in sorted(runs, key=lambda run: run["finished"]):
        outputs, dataset = complete["outputs"], complete["conf"]["id"]
        jpeg, raw, segmentation = (http(outputs.get(name)) for name in ("jpeg", "raw", "segmentation"))
        if jpeg:
            images[dataset] = (jpeg, raw)
        elif segmentation:
            jpeg, raw = images.get(dataset, (None, None))
        if jpeg or segmentation:
            shown = largest_bodies(outputs["segmentation"], SHOWN_BODIES) if segmentation else []
            links.append((complete["run_id"], neuroglancer_url(jpeg, raw, segmentation, segments=shown)))
    return links
