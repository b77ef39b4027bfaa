"""Small previews of the thumbnails the report page shows, embedded in the page as data URIs.

The page then stands on its own: opened from a folder, a bucket, a download or Airflow's run-report
tab (a sandboxed frame, whose image requests carry no session), it shows its slices without fetching
the full thumbnails (up to 2048 px each), and links each preview to its thumbnail.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from emprocess import storage
from emprocess.report.summary import READ_THREADS

PREVIEW_SIDE = 192  # px, long side; the page shows them 160 px wide
PREVIEW_QUALITY = 80


def preview(url: str) -> str | None:
    """A data URI of a JPEG preview of the image at ``url``, or None if it cannot be read as one."""
    try:
        image = cv2.imdecode(np.frombuffer(storage.read(url), np.uint8), cv2.IMREAD_GRAYSCALE)
    except FileNotFoundError:
        return None
    if image is None:
        return None
    scale = PREVIEW_SIDE / max(image.shape)
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, PREVIEW_QUALITY])[1]
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode()


def previews(process: str, paths: list[str]) -> dict[str, str]:
    """{path: data URI} for the images at ``paths`` (relative to the process location) that could be read."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        made = pool.map(lambda path: preview(storage.join(process, path)), paths)
        return {path: uri for path, uri in zip(paths, made) if uri is not None}
