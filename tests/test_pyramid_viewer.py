"""The neuroglancer link: JSON state in the fragment with precomputed:// layer sources."""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

from emprocess.pyramid.viewer import neuroglancer_url


def state_of(url: str) -> dict:
    fragment = urlsplit(url).fragment
    assert fragment.startswith("!")
    return json.loads(unquote(fragment[1:]))


def test_jpeg_layer_only():
    url = neuroglancer_url("http://127.0.0.1:8000/ng/neuroglancer/jpeg/")
    assert url.startswith("https://neuroglancer-demo.appspot.com/#!")
    state = state_of(url)
    assert state["layers"] == [{"type": "image", "source": "precomputed://http://127.0.0.1:8000/ng/neuroglancer/jpeg",
                                "name": "em"}]
    assert "position" not in state
    assert " " not in url and "{" not in url  # the fragment is fully percent-encoded


def test_raw_layer_hidden_and_position_and_viewer():
    url = neuroglancer_url("https://storage.googleapis.com/b_ng_r/neuroglancer/jpeg",
                           "https://storage.googleapis.com/b_chunk_r/neuroglancer/raw",
                           position=(500, 388, 20), viewer="http://localhost:8080")
    assert url.startswith("http://localhost:8080/#!")
    state = state_of(url)
    raw = state["layers"][1]
    assert raw["source"] == "precomputed://https://storage.googleapis.com/b_chunk_r/neuroglancer/raw"
    assert raw["visible"] is False
    assert state["position"] == [500.0, 388.0, 20.0]
    assert state["selectedLayer"]["layer"] == "em"


def test_segmentation_layer_and_segmentation_only():
    with_bodies = state_of(neuroglancer_url("http://h/jpeg", None, "http://h/segmentation"))
    assert [layer["type"] for layer in with_bodies["layers"]] == ["image", "segmentation"]
    alone = state_of(neuroglancer_url(None, None, "http://h/segmentation"))
    assert alone["layers"] == [
        {"type": "segmentation", "source": "precomputed://http://h/segmentation", "name": "bodies"}]
    assert alone["selectedLayer"]["layer"] == "bodies"
