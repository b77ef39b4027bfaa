"""align.intensity: the stack's 16-bit → 8-bit rule is measured once, before align.warp, which only
reads it; and the output checks of align.intensity and align.warp trust what the work reports."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.pyramid import aligned, intensity
from emprocess.pyramid.stages import INTENSITY, WARP
from emprocess.stages import InputError, RunContext

IDENTITY = [[1, 0, 0], [0, 1, 0]]


def make_run(tmp_path: Path, slices: list[np.ndarray]) -> RunContext:
    """A run over PNG slices 0..n-1 with identity transforms (what align.collect writes with skip_align)."""
    src = tmp_path / "src"
    src.mkdir(parents=True)
    for z, image in enumerate(slices):
        assert cv2.imwrite(str(src / f"img{z:03d}.png"), image)
    height, width = slices[0].shape
    maxz = len(slices) - 1
    ctx = RunContext.create({"id": "t", "image": "img%03d.png", "minz": 0, "maxz": maxz,
                             "source": f"file://{src}"}, "test-run")
    zs = range(maxz + 1)
    storage.write_json(transforms_url(ctx.locations.process), {
        "minz": 0, "maxz": maxz, "width": width, "height": height,
        "transforms": {str(z): IDENTITY for z in zs}, "source_sizes": {str(z): [width, height] for z in zs}})
    return ctx


def sixteen_bit(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.integers(2000, 12000, (60, 80), dtype=np.uint16) for _ in range(count)]


def counting(monkeypatch, module) -> list[str]:
    """Every URL ``module`` decodes with ``read_image`` from now on."""
    reads: list[str] = []
    read = module.read_image

    def counted(url: str) -> np.ndarray:
        reads.append(url)
        return read(url)

    monkeypatch.setattr(module, "read_image", counted)
    return reads


def test_the_rule_is_measured_once_and_each_warp_reads_only_its_slice(tmp_path, monkeypatch):
    ctx = make_run(tmp_path, sixteen_bit(9))
    (task,) = INTENSITY.plan(ctx)
    sample = [ctx.conf.slice_url(z) for z in (0, 2, 4, 6, 8)]
    assert (task["key"], task["payload"]) == ("intensity", {"url": ctx.locations.intensity, "sample": sample})
    sample_reads = counting(monkeypatch, intensity)
    result = INTENSITY.execute(task["payload"])
    assert sample_reads == sample
    stored = storage.read_json(ctx.locations.intensity)
    assert result == {"intensity": {"low": stored["low"], "high": stored["high"]}, "files": [ctx.locations.intensity]}

    def no_measuring(*args):
        raise AssertionError("a warp task measured the rule again")

    monkeypatch.setattr(intensity, "measure", no_measuring)
    slice_reads = counting(monkeypatch, aligned)
    for task in WARP.plan(ctx):
        assert task["payload"]["intensity"] == ctx.locations.intensity
        before = len(slice_reads)
        assert WARP.execute(task["payload"])["intensity"] == result["intensity"]
        assert slice_reads[before:] == [task["payload"]["slice"]]
    assert len(sample_reads) == len(sample)


def test_the_stored_rule_is_todays_document_and_a_rerun_rewrites_identical_bytes(tmp_path):
    ctx = make_run(tmp_path, sixteen_bit(3))
    (task,) = INTENSITY.plan(ctx)
    INTENSITY.execute(task["payload"])
    first = storage.read(ctx.locations.intensity)
    sample = task["payload"]["sample"]
    expected = f"file://{tmp_path}/expected.json"
    storage.write_json(expected, intensity.document(intensity.measure(sample, aligned.read_image), sample))
    assert first == storage.read(expected)
    INTENSITY.execute(task["payload"])
    assert storage.read(ctx.locations.intensity) == first


def test_an_8_bit_stack_needs_no_rule_and_no_pixel_is_read(tmp_path, monkeypatch):
    ctx = make_run(tmp_path, [np.full((60, 80), 90 + z, np.uint8) for z in range(4)])
    monkeypatch.setattr(intensity, "read_image", lambda url: pytest.fail(f"decoded {url}"))
    (task,) = INTENSITY.plan(ctx)
    result = INTENSITY.execute(task["payload"])
    assert result == {"intensity": None, "files": []}
    assert not storage.exists(ctx.locations.intensity)
    assert INTENSITY.check(INTENSITY.parse_payload(task["payload"]), INTENSITY.parse_result(result))
    for task in WARP.plan(ctx):
        assert WARP.execute(task["payload"])["intensity"] is None


def test_a_16_bit_slice_without_a_stored_rule_is_refused_naming_the_file(tmp_path):
    ctx = make_run(tmp_path, sixteen_bit(2))
    task = WARP.plan(ctx)[0]
    with pytest.raises(InputError, match="slice 0 is 16-bit, but .*intensity.json holds no intensity rule"):
        WARP.execute(task["payload"])


def test_warp_reports_its_thumbnail_written_last_and_its_check_verifies_it(tmp_path):
    ctx = make_run(tmp_path, [np.full((1100, 1030), 90, np.uint8)] * 2)
    task = WARP.plan(ctx)[1]
    payload = WARP.parse_payload(task["payload"])
    result = WARP.parse_result(WARP.execute(task["payload"]))
    assert result.files == [payload.thumbnail]
    assert all(storage.exists(url) for url in aligned.warp_outputs(payload))
    assert WARP.check(payload, result)
    assert WARP.check(payload, result.model_copy(update={"files": []}))  # a fake service writes nothing
    Path(storage.parse(payload.thumbnail).path).unlink()
    assert not WARP.check(payload, result)
