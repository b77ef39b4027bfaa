"""Bad-input cases about the conf (and the first slice checks): see ``support.refusals``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from support.refusals import SIZE, Case


def truncate(src: Path) -> None:
    data = (src / "img002.png").read_bytes()
    (src / "img002.png").write_bytes(data[: len(data) // 2])


def other_size(src: Path) -> None:
    cv2.imwrite(str(src / "img001.png"), np.zeros((SIZE, SIZE + 8), np.uint8))


def not_an_image(src: Path) -> None:
    (src / "img003.png").write_text("this is not a png")


def colour(src: Path) -> None:
    cv2.imwrite(str(src / "img000.png"), np.zeros((SIZE, SIZE, 3), np.uint8) + 40)


CASES = [Case(name, change, damage, expected if isinstance(expected, tuple) else (expected,))
         for name, change, damage, expected in [
    ("missing key", lambda c: c.pop("image"), None, "image"),
    ("minz > maxz", lambda c: c.update(minz=3, maxz=1), None, "minz"),
    ("negative z", lambda c: c.update(minz=-1), None, "minz"),
    ("template without %d", lambda c: c.update(image="img.png"), None, "'image'"),
    ("template with two fields", lambda c: c.update(image="img%03d_%03d.png"), None, "'image'"),
    ("unknown key", lambda c: c.update(jpeg_qualty=80), None, "jpeg_qualty"),
    ("bad URL scheme", lambda c: c.update(source="ftp://host/stack"), None, "ftp"),
    ("dotdot in path", lambda c: c.update(source=c["source"] + "/../elsewhere"), None, ".."),
    ("template escaping source", lambda c: c.update(image="../img%03d.png"), None, "'image'"),
    ("invalid bucket", lambda c: c.update(source="gs://Bad_Bucket!"), None, "bucket"),
    ("bucket name too long for the run's buckets", lambda c: c.update(source="gs://" + "a" * 50), None,
     "'source': bucket name"),
    ("jpeg quality out of range", lambda c: c.update(jpeg_quality=0), None, "jpeg_quality"),
    ("negative clip limit", lambda c: c.update(**{"clip-limit": -0.1}), None, "clip-limit"),
    ("resolution of two values", lambda c: c.update(resolution=[8, 8]), None, "resolution"),
    ("unknown stage", lambda c: c.update(stages=["align", "segment"]), None, "stages"),
    ("meshing without its graph", lambda c: c.update(stages=["meshing"]), None, "meshing needs chunkedgraph"),
    ("chunk size not a power of two",
     lambda c: c.update(segmentation={"watershed": c["source"], "chunk_size": [100, 128, 128]}), None, "chunk_size"),
    ("missing slice", lambda c: c.update(maxz=5), None, "img004.png does not exist"),
    ("truncated PNG", None, truncate, "img002.png"),
    ("slices of different sizes", None, other_size, "img001.png"),
    ("not an image", None, not_an_image, "img003.png"),
    ("colour slice", None, colour, "img000.png"),
    ("reuse of an unknown run", lambda c: c.update(reuse_alignment="manual__2001-01-01T00:00:00+00:00"), None,
     "reuse_alignment"),
    ("maxz of 1e30", lambda c: c.update(maxz=1e30), None, "maxz"),
    ("maxz beyond 10^7 slices", lambda c: c.update(maxz=10**12), None, "maxz"),
    ("minz not a whole number", lambda c: c.update(minz=0.5), None, "minz"),
    ("minz as a float", lambda c: c.update(minz=0.0), None, "minz"),
    ("chunk size below 16", lambda c: c.update(segmentation={"watershed": c["source"], "chunk_size": [8, 8, 8]}), None,
     "chunk_size"),
    ("chunk size above 4096",
     lambda c: c.update(segmentation={"watershed": c["source"], "chunk_size": [8192, 8192, 8192]}), None, "chunk_size"),
    ("mesh simplification factor above 100",
     lambda c: c.update(segmentation={"watershed": c["source"], "mesh": {"simplification_factor": 1000}}), None,
     "simplification_factor"),
    ("resolution of 0 nm", lambda c: c.update(resolution=0), None, "resolution"),
    ("resolution of 1e9 nm", lambda c: c.update(resolution=1e9), None, "resolution"),
    ("resolution with one value out of range", lambda c: c.update(resolution=[8, 8, 1e6]), None, "resolution"),
    ("downsample_factor of 1e30", lambda c: c.update(downsample_factor=1e30), None, "downsample_factor"),
    ("downsample_factor too big for the slices", lambda c: c.update(downsample_factor=2), None,
     "'downsample_factor': 2 shrinks the 96x96 px slices to 48x48 px"),
    # Airflow's Params word it "param id" ... "'maxLength': 128"
    ("id too long", lambda c: c.update(id="a" * 129), None, ("id", "128")),
    ("jpeg quality above 100", lambda c: c.update(jpeg_quality=101), None, "jpeg_quality"),
    ("clip limit above 1", lambda c: c.update(**{"clip-limit": 2}), None, "clip-limit"),
]]
