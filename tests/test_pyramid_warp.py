"""Aligned slices: warp, CLAHE, thumbnails, the 16-bit rule and the align.warp work (the
align.intensity stage that stores the rule: test_intensity_stage.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from emprocess import storage
from emprocess.pyramid import intensity
from emprocess.pyramid.aligned import warp_outputs
from emprocess.pyramid.stages import INTENSITY, WARP
from emprocess.pyramid.warp import THUMBNAIL_SIDE, clahe, thumbnail_png, warp
from emprocess.pyramid.writers import ALIGNED_CHUNKS, open_zarr
from emprocess.stages import InputError

IDENTITY = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def texture(shape, seed=0, low=0, high=255) -> np.ndarray:
    noise = np.random.default_rng(seed).random(shape).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (low + smooth * (high - low)).round()


def test_identity_warp_is_exact_and_translation_fills_zeros():
    image = texture((300, 200)).astype(np.uint8)
    assert np.array_equal(warp(image, np.array(IDENTITY), 200, 300), image)
    moved = warp(image, np.array([[1, 0, 5], [0, 1, 7]], np.float64), 210, 1100)
    assert np.array_equal(moved[7:307, 5:205], image)
    assert not moved[:7].any() and not moved[:, :5].any() and not moved[307:].any()


def test_warp_rotates_into_the_aligned_frame():
    image = np.zeros((40, 60), np.uint8)
    image[10, 50] = 200  # x=50, y=10
    quarter_turn = np.array([[0, -1, 39], [1, 0, 0]], np.float64)  # (x, y) -> (39 - y, x)
    out = warp(image, quarter_turn, 40, 60)
    assert out.shape == (60, 40)
    assert out[50, 29] == 200


def test_warp_bands_join_without_seams():
    image = texture((2500, 900), seed=3).astype(np.uint8)
    matrix = np.array([[0.99, 0.05, 10.3], [-0.05, 0.99, 20.7]])
    banded = warp(image, matrix, 950, 2600)
    whole = cv2.warpAffine(image, matrix, (950, 2600), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    assert np.abs(banded.astype(int) - whole).max() <= 1


def test_clahe_raises_contrast_and_keeps_outside_black():
    image = texture((512, 512), low=100, high=140).astype(np.uint8)
    image[:, :100] = 0
    out = clahe(image, 0.02)
    assert np.all(out[:, :100] == 0)
    assert out[:, 100:].std() > 2 * image[:, 100:].std()
    assert clahe(image, 0) is image


def test_thumbnail_long_side_is_bounded():
    image = texture((1000, 3000)).astype(np.uint8)
    thumb = cv2.imdecode(np.frombuffer(thumbnail_png(image), np.uint8), cv2.IMREAD_UNCHANGED)
    assert thumb.shape == (683, THUMBNAIL_SIDE)
    small = cv2.imdecode(np.frombuffer(thumbnail_png(image[:100, :50]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(small, image[:100, :50])


def test_sample_slices_are_spread_over_the_stack():
    assert intensity.sample_slices(10, 10) == [10]
    assert intensity.sample_slices(0, 2) == [0, 1, 2]
    assert intensity.sample_slices(0, 100) == [0, 25, 50, 75, 100]


def test_intensity_rule_maps_percentiles_and_keeps_zero():
    rule = intensity.Intensity(1000, 3000)
    lut = rule.lut()
    assert (lut[0], lut[1], lut[1000], lut[2000], lut[3000], lut[65535]) == (0, 1, 1, 128, 255, 255)
    image = np.random.default_rng(0).integers(0, 65536, (2100, 30), dtype=np.uint16)
    assert np.array_equal(rule.apply(image), lut[image])


def write_png(path: Path, image: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return f"file://{path}"


def warp_payload(tmp_path: Path, z: int, slice_url: str, **extra) -> dict:
    payload = {
        "z": z, "slice": slice_url, "source_size": None, "transform": IDENTITY, "width": 120, "height": 90,
        "depth": 3, "z_index": z, "clip_limit": 0.0, "aligned": f"file://{tmp_path}/tmp/aligned",
        "thumbnail": f"file://{tmp_path}/process/align/thumbnails/{z}.png",
        "intensity": f"file://{tmp_path}/process/align/intensity.json",
    }
    payload.update(extra)
    return payload


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_sixteen_bit_stack_uses_one_stored_rule(tmp_path):
    slices = [texture((90, 120), seed=z, low=2000, high=12000).astype(np.uint16) for z in range(3)]
    slices[1][:10] = 0  # outside the imaged area
    urls = [write_png(tmp_path / "src" / f"{z}.png", s) for z, s in enumerate(slices)]
    # align.intensity stores the rule before any warp task runs; every warp task applies it
    measured = INTENSITY.execute({"url": f"file://{tmp_path}/process/align/intensity.json", "sample": urls})
    slice1 = WARP.execute(warp_payload(tmp_path, 1, urls[1]))
    slice0 = WARP.execute(warp_payload(tmp_path, 0, urls[0]))
    stored = storage.read_json(f"file://{tmp_path}/process/align/intensity.json")
    assert slice1["intensity"] == slice0["intensity"] == measured["intensity"]
    assert measured["intensity"] == {"low": stored["low"], "high": stored["high"]}
    assert stored["sample"] == urls and stored["percentiles"] == [0.1, 99.9]
    assert 2000 <= stored["low"] < 3000 and 11000 < stored["high"] <= 12000
    assert slice0["source_dtype"] == "uint16"
    aligned = open_zarr(f"file://{tmp_path}/tmp/aligned", (3, 90, 120), ALIGNED_CHUNKS, create=False).read().result()
    rule = intensity.Intensity(stored["low"], stored["high"])
    assert np.array_equal(aligned[0], rule.lut()[slices[0]])
    assert np.all(aligned[1, :10] == 0) and np.all(aligned[1, 10:] > 0)


def test_warp_task_writes_its_outputs_and_rewrites_identical_bytes(tmp_path):
    image = texture((90, 120), seed=5).astype(np.uint8)
    url = write_png(tmp_path / "src" / "2.png", image)
    payload = warp_payload(tmp_path, 2, url, clip_limit=0.02, transform=[[1, 0, 3.5], [0, 1, -2.25]],
                           source_size=[120, 90])
    result = WARP.execute(payload)
    assert result["source_size"] == [120, 90] and result["intensity"] is None
    for out in warp_outputs(WARP.parse_payload(payload)):
        assert storage.exists(out), out
    before = digest_tree(tmp_path)
    WARP.execute(payload)
    assert digest_tree(tmp_path) == before


def test_warp_errors_name_the_slice(tmp_path):
    image = texture((90, 120)).astype(np.uint8)
    url = write_png(tmp_path / "src" / "0.png", image)
    with pytest.raises(InputError, match="slice 0 is 120×90, but was aligned as 100×90"):
        WARP.execute(warp_payload(tmp_path, 0, url, source_size=[100, 90]))
    with pytest.raises(InputError, match="slice 0: transform"):
        WARP.execute(warp_payload(tmp_path, 0, url, transform=[[1, 0], [0, 1]]))
    with pytest.raises(InputError, match="slice 0: transform"):
        WARP.execute(warp_payload(tmp_path, 0, url, transform=[[1, 0, 0], [0, 1]]))
    with pytest.raises(InputError, match="singular"):
        WARP.execute(warp_payload(tmp_path, 0, url, transform=[[0, 0, 0], [0, 0, 0]]))
    missing = f"file://{tmp_path}/src/nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        WARP.execute(warp_payload(tmp_path, 0, missing))
    colour = write_png(tmp_path / "src" / "colour.png", np.dstack([image] * 3))
    with pytest.raises(InputError, match="colour.png"):
        WARP.execute(warp_payload(tmp_path, 0, colour))
