"""Every spelling of a location against every endpoint of both services: nothing outside the allowed
prefix is read or written, whichever way it is written.

Both services run as real uvicorn processes (started in a temp working folder, so relative paths
would land there), allowed one folder. Each endpoint gets a valid payload under that folder, then each
location field in turn is replaced by each spelling. A spelling that storage would accept but that
names a place outside must be answered 403; one storage refuses, 422 naming the field; and no file
inside, outside or in the working folder may change.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from emprocess.workflow.local_run import service

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def outside_spellings(allowed: Path, outside: Path) -> list[str]:
    """Locations storage accepts that lie outside ``allowed`` (which holds a symlink ``link`` to
    ``outside``, and has a sibling ``allowed.name + '_evil'``)."""
    return [
        f"{outside}/a.png",  # a plain path
        f"file://{outside}/a.png",
        f"FILE://{outside}/a.png",
        f"File://{outside}/a.png",
        f"  file://{outside}/a.png \n",  # surrounding white space is stripped, as storage does
        f"file://localhost{outside}/a.png",
        f"file://LOCALHOST{outside}/a.png",
        f"file:///{outside}/a.png",  # '//' is '/' for the OS
        f"//{outside}//a.png",
        f"{allowed}/link/a.png",  # a symlink inside that leads outside
        f"file://{allowed}/link/a.png",
        f"file://{allowed}/link",
        f"file://{allowed}_evil/a.png",  # a sibling sharing the prefix's name
        f"{allowed}_evil",
        "gs://other-bucket/a.png",
        "GS://other-bucket/a.png",
        "other-bucket",  # a bare name is a GCS bucket
        "s3://other-bucket/a.png",
        "file:///",
    ]


def refused_spellings(allowed: Path, outside: Path) -> list[str]:
    """Locations storage refuses: relative, dot segments (also encoded), odd forms, credentials."""
    return [
        "outside/a.png",
        "./a.png",
        "../outside/a.png",
        "~/a.png",
        f"file://{allowed}/../{outside.name}/a.png",
        f"{allowed}/./a.png",
        f"file://{allowed}/%2e%2e/{outside.name}/a.png",
        f"file://{allowed}/%2E%2E%2F{outside.name}",
        f"file:{outside}/a.png",
        f"file://{allowed}/a.png\x00/../../{outside.name}",
        f"file://{allowed}\\..\\{outside.name}",
        f"file://{outside}/a.png?x=1",
        f"file://{allowed}/a.png#{outside}",
        f"s3://AKIDEXAMPLE:{SECRET}@other-bucket/a.png",
        f"gs://user:{SECRET}@other-bucket/a.png",
        "file://otherhost/tmp/a.png",
        "http://127.0.0.1:9/a.png",
        "",
    ]


def payloads(root: str) -> dict[str, dict]:
    """A valid payload for every endpoint, every location under ``root`` (a file:// URL)."""
    layout = {"size": [64, 64, 4], "voxel_offset": [0, 0, 0], "resolution": [8.0, 8.0, 8.0]}
    graph = {"graph": f"{root}/graph", "chunk": [0, 0, 0]}
    return {
        "/align": {"images": [f"{root}/a.png", f"{root}/b.png"], "z": [0, 1], "downsample": 1},
        "/bridge": {"img1": f"{root}/a.png", "img2": f"{root}/b.png", "downsample": 1},
        "/alignedslice": {
            "z": 0, "slice": f"{root}/a.png", "source_size": [64, 64], "transform": [[1, 0, 0], [0, 1, 0]],
            "width": 64, "height": 64, "depth": 2, "z_index": 0, "clip_limit": 0.02, "aligned": f"{root}/aligned",
            "thumbnail": f"{root}/thumbs/0.png",
            "intensity": f"{root}/intensity.json"},
        "/intensity": {"url": f"{root}/intensity.json", "sample": [f"{root}/a.png"]},
        "/ngmeta": {"jpeg": f"{root}/jpeg", "raw": f"{root}/raw", "ome_zarr": f"{root}/ome", "layout": layout,
                    "jpeg_quality": 90,
                    "provenance": {"description": "d", "sources": [], "owners": [], "method": {}}},
        "/ngshard": {"block": [0, 0, 0], "aligned": f"{root}/aligned", "jpeg": f"{root}/jpeg", "raw": f"{root}/raw",
                     "seed": f"{root}/seed", "ome_zarr": f"{root}/ome", "layout": layout, "jpeg_quality": 90},
        "/ngtop": {"seed": f"{root}/seed", "jpeg": f"{root}/jpeg", "raw": f"{root}/raw", "ome_zarr": f"{root}/ome",
                   "layout": layout, "jpeg_quality": 90},
        "/cg/meta": {"graph": f"{root}/graph", "watershed": f"{root}/ws", "supervoxels": f"{root}/sv",
                     "agglomeration": f"{root}/agg.npy", "chunk_size": [32, 32, 16], "test": False,
                     "transforms": f"{root}/transforms.json", "require_transforms": False},
        "/cg/layer2": {**graph, "layer": 2, "watershed": f"{root}/ws", "supervoxels": f"{root}/sv"},
        "/cg/layer": {**graph, "layer": 3},
        "/cg/flatten": {**graph, "supervoxels": f"{root}/sv", "segmentation": f"{root}/seg"},
        "/mesh/meta": {"graph": f"{root}/graph", "segmentation": f"{root}/seg"},
        "/mesh/layer": {**graph, "segmentation": f"{root}/seg", "mesh": f"{root}/seg/mesh", "pending": f"{root}/pend",
                        "layer": 2, "simplification_factor": 4.0},
        "/mesh/shards": {"mesh": f"{root}/seg/mesh", "pending": f"{root}/pend", "shard": 0},
        "/skel/meta": {"graph": f"{root}/graph", "segmentation": f"{root}/seg"},
        "/skel/chunk": {"graph": f"{root}/graph", "segmentation": f"{root}/seg", "skeletons": f"{root}/seg/skel",
                        "pending": f"{root}/pend", "chunk": [0, 0, 0]},
        "/skel/merge": {"pending": f"{root}/pend", "skeletons": f"{root}/seg/skel", "shard": 0},
    }


def location_paths(value, root: str, path=()) -> list[tuple]:
    """Where in a payload the locations under ``root`` are (key and index paths)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in location_paths(v, root, path + (k,))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in location_paths(v, root, path + (i,))]
    return [path] if isinstance(value, str) and value.startswith(root) else []


def replaced(payload: dict, path: tuple, value: str) -> dict:
    if len(path) == 1:
        return {**payload, path[0]: value} if isinstance(payload, dict) else \
            [value if i == path[0] else v for i, v in enumerate(payload)]
    inner = replaced(payload[path[0]], path[1:], value)
    return {**payload, path[0]: inner} if isinstance(payload, dict) else \
        [inner if i == path[0] else v for i, v in enumerate(payload)]


def snapshot(folder: Path) -> dict[str, tuple]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def tree(tmp_path, monkeypatch):
    allowed, outside, work = tmp_path / "allowed", tmp_path / "outside", tmp_path / "work"
    for folder in (allowed, outside, work, tmp_path / "allowed_evil"):
        folder.mkdir()
    texture = (np.random.default_rng(0).integers(0, 255, (64, 64))).astype(np.uint8)
    for folder in (allowed, outside, tmp_path / "allowed_evil"):
        cv2.imwrite(str(folder / "a.png"), texture)
        cv2.imwrite(str(folder / "b.png"), texture)
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    monkeypatch.chdir(work)  # the services' working folder: relative paths would land here
    return tmp_path


@pytest.mark.parametrize("name", ["fiji", "emwrite"])
def test_no_spelling_reaches_outside_the_allowed_prefix(tree, name):
    allowed, outside = tree / "allowed", tree / "outside"
    root = f"file://{allowed}"
    to_403, to_422 = outside_spellings(allowed, outside), refused_spellings(allowed, outside)
    assert len(to_403) >= 15 and len(to_422) >= 15
    before = snapshot(tree)
    logs = tree / "logs"
    logs.mkdir()
    with service(name, [root], logs) as url:
        paths = set(requests.get(url + "/openapi.json").json()["paths"]) - {"/healthz"}
        all_payloads = payloads(root)
        assert paths <= set(all_payloads), f"add a payload for {paths - set(all_payloads)}"
        answers = []
        for endpoint in sorted(paths):
            fields = location_paths(all_payloads[endpoint], root)
            assert fields, endpoint
            for field in fields:
                for spelling, expected in [(s, 403) for s in to_403] + [(s, 422) for s in to_422]:
                    reply = requests.post(url + endpoint, json=replaced(all_payloads[endpoint], field, spelling),
                                          timeout=60)
                    answers.append((endpoint, field, spelling, expected, reply.status_code, reply.text))
    wrong = [a for a in answers if a[3] != a[4]]
    assert not wrong, "\n".join(f"{e} {f} {s!r}: {got}, not {want}: {text[:200]}"
                                 for e, f, s, want, got, text in wrong[:20])
    for endpoint, field, spelling, expected, status, text in answers:
        if expected == 422:  # named by its field
            assert repr(".".join(map(str, field))) in text, (endpoint, field, spelling, text)
        assert SECRET not in text
    assert SECRET not in (logs / f"{name}.log").read_text()
    after = snapshot(tree)
    after.pop(str(logs / f"{name}.log"))
    after.pop(str(logs))
    assert after == before, "files changed: " + ", ".join(sorted(set(after.items()) ^ set(before.items())))
    assert not os.listdir(tree / "work")
