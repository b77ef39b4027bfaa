"""A neuroglancer link that opens the pyramid with stock ``precomputed://`` sources.

The volumes must be served with CORS and Range support: over HTTP(S) by a local server, or from a
public bucket, which neuroglancer opens as gs:// or s3:// itself. The viewer state goes in the URL
fragment as JSON, which neuroglancer reads on load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import quote

DEFAULT_VIEWER = "https://neuroglancer-demo.appspot.com/"
SHOWN_BODIES = 5  # bodies a run's viewer link selects: the largest


def neuroglancer_url(jpeg_url: str | None, raw_url: str | None = None,
                     segmentation_url: str | None = None, *, segments: Sequence[int] = (),
                     position: tuple[float, float, float] | None = None, viewer: str = DEFAULT_VIEWER) -> str:
    """The viewer URL showing the JPEG pyramid (and the raw volume, hidden, and the root-ID
    segmentation, when given, with ``segments`` selected: their meshes and skeletons show in 3D).

    ``position`` is a voxel (x, y, z) to centre on; neuroglancer picks the volume's centre otherwise.
    """
    layers = []
    if jpeg_url:
        layers.append({"type": "image", "source": "precomputed://" + jpeg_url.rstrip("/"), "name": "em"})
    if raw_url:
        layers.append({"type": "image", "source": "precomputed://" + raw_url.rstrip("/"), "name": "raw",
                       "visible": False})
    if segmentation_url:
        layers.append({"type": "segmentation", "source": "precomputed://" + segmentation_url.rstrip("/"),
                       "name": "bodies", **({"segments": [str(s) for s in segments]} if segments else {})})
    if not layers:
        raise ValueError("a viewer link needs at least one layer")
    state: dict = {"layers": layers, "selectedLayer": {"layer": layers[0]["name"], "visible": True},
                   "layout": "4panel"}
    if position is not None:
        state["position"] = [float(v) for v in position]
    fragment = quote(json.dumps(state, separators=(",", ":")), safe="")
    return f"{viewer.rstrip('/')}/#!{fragment}"
