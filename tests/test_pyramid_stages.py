"""The warp and pyramid stages end to end, in-process, checked with third-party readers.

Each stage runs like the orchestrator runs it (every mini-task of the plan, result cached at
ctx.cache_url). Volumes: 1000×777×37 (odd sizes, one block, five scales) and 2100×1100×20 (six
blocks plus two top scales).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorstore as ts
from cloudvolume import CloudVolume
from support.shard_files import difference
from support.volumes import psnr

from emprocess import storage
from emprocess.align import transforms_url
from emprocess.batch import run_and_cache
from emprocess.pyramid import stages as pyramid
from emprocess.pyramid.downsample import mean2
from emprocess.pyramid.writers import ALIGNED_CHUNKS, open_scale, open_zarr
from emprocess.stages import RunContext

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IDENTITY = [[1, 0, 0], [0, 1, 0]]
PIPELINE = [*pyramid.ALIGN_STAGES, *pyramid.STAGES]  # align.intensity and align.warp, then the pyramid


def em_like(width: int, height: int, depth: int, seed: int = 0) -> np.ndarray:
    """Blurred noise drifting with z: smooth membranes-and-cells-like texture, (z, y, x) uint8."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((height + depth, width + depth)).astype(np.float32), (0, 0), 3)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return np.stack([base[z:z + height, z:z + width] for z in range(depth)])


def make_run(tmp: Path, slices: np.ndarray, minz: int, **conf) -> RunContext:
    """A run over PNG slices with identity transforms (what align.collect writes with skip_align)."""
    src = tmp / "src"
    src.mkdir(parents=True)
    depth, height, width = slices.shape
    for i, image in enumerate(slices):
        assert cv2.imwrite(str(src / f"img{minz + i:03d}.png"), image)
    maxz = minz + depth - 1
    ctx = RunContext.create({"id": "t", "image": "img%03d.png", "minz": minz, "maxz": maxz,
                             "source": f"file://{src}", **conf}, "test-run")
    zs = range(minz, maxz + 1)
    storage.write_json(transforms_url(ctx.locations.process), {
        "minz": minz, "maxz": maxz, "width": width, "height": height,
        "transforms": {str(z): IDENTITY for z in zs}, "source_sizes": {str(z): [width, height] for z in zs}})
    return ctx


def run_stage(stage, ctx: RunContext, on_task=None, limit: int | None = None) -> list[dict]:
    """The mini-tasks of the stage's plan (the first ``limit`` of them), as the orchestrator runs
    them: skip those whose result is cached, cache the others' results."""
    tasks = stage.plan(ctx)
    for task in tasks[:limit]:
        if storage.exists(ctx.cache_url(stage.name, task["key"])):
            continue
        run_and_cache(stage, ctx, task, lambda task: stage.execute(task["payload"]))
        if on_task is not None:
            on_task(stage, task)
    return tasks


def run_all(ctx: RunContext, on_task=None) -> dict[str, list[dict]]:
    return {stage.name: run_stage(stage, ctx, on_task) for stage in PIPELINE}


def path_of(url: str) -> Path:
    return Path(storage.parse(url).path)


def read_scale(ctx: RunContext, encoding: str, scale: int) -> np.ndarray:
    """Scale ``scale`` through tensorstore, as (z, y, x)."""
    url = ctx.locations.jpeg if encoding == "jpeg" else ctx.locations.raw
    layout = pyramid.run_layout(ctx)
    view = open_scale(url, layout, scale, encoding, ctx.conf.jpeg_quality if encoding == "jpeg" else None)
    return view.read().result().transpose(2, 1, 0)


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """1000×777×37 from slice 3, CLAHE on: one short block, five scales, no top task."""
    ctx = make_run(tmp_path_factory.mktemp("odd"), em_like(1000, 777, 37), minz=3)
    tasks = run_all(ctx)
    aligned = open_zarr(ctx.locations.aligned, (37, 777, 1000), ALIGNED_CHUNKS, create=False).read().result()
    return ctx, tasks, aligned


def test_plans_have_one_task_per_slice_block_and_volume(odd_run):
    ctx, tasks, _ = odd_run
    assert [t["key"] for t in tasks["align.warp"]] == [f"{z:08d}" for z in range(3, 40)]
    assert [t["key"] for t in tasks["pyramid.meta"]] == ["info"]
    assert [t["key"] for t in tasks["pyramid.shard"]] == ["x0_y0_z0"]
    assert tasks["pyramid.top"] == []
    assert storage.exists(ctx.cache_url("pyramid.shard", "x0_y0_z0"))


def test_plans_are_empty_without_the_pyramid(tmp_path):
    ctx = make_run(tmp_path, em_like(70, 50, 2), minz=0, stages=["align"])
    assert all(stage.plan(ctx) == [] for stage in PIPELINE)


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_cloudvolume_and_tensorstore_read_every_scale(odd_run, encoding):
    ctx, _, _ = odd_run
    url = ctx.locations.jpeg if encoding == "jpeg" else ctx.locations.raw
    layout = pyramid.run_layout(ctx)
    assert layout.num_scales == 5
    for scale in range(layout.num_scales):
        cv = CloudVolume("precomputed://" + url, mip=scale, progress=False)
        data = np.asarray(cv[:, :, :])[..., 0]
        assert data.shape == layout.scale_size(scale)
        assert list(cv.bounds.minpt) == list(layout.scale_offset(scale))
        tensor = ts.open({"driver": "neuroglancer_precomputed", "kvstore": storage.kvstore_spec(url),
                          "scale_index": scale}).result()
        assert np.array_equal(tensor.read().result()[..., 0], data)


def test_raw_scale_0_equals_the_aligned_slices(odd_run):
    ctx, _, aligned = odd_run
    assert aligned.std() > 20  # CLAHE'd texture, not an empty volume
    assert np.array_equal(read_scale(ctx, "raw", 0), aligned)


def test_jpeg_scale_0_is_close_to_the_aligned_slices(odd_run):
    ctx, _, aligned = odd_run
    assert psnr(read_scale(ctx, "jpeg", 0), aligned) >= 38


def test_each_scale_is_the_mean_of_the_one_below(odd_run):
    ctx, _, _ = odd_run
    for scale in range(1, 5):
        raw_below, raw = read_scale(ctx, "raw", scale - 1), read_scale(ctx, "raw", scale)
        assert np.array_equal(raw, mean2(raw_below)), scale
        jpeg_below, jpeg = read_scale(ctx, "jpeg", scale - 1), read_scale(ctx, "jpeg", scale)
        assert psnr(jpeg, mean2(jpeg_below)) >= 32, scale
        assert psnr(jpeg, raw) >= 36, scale
        # the far edges (odd sizes) too
        assert np.abs(jpeg[-1].astype(int) - raw[-1]).mean() < 4
        assert np.abs(jpeg[:, :, -1].astype(int) - raw[:, :, -1]).mean() < 4


def test_info_and_provenance(odd_run):
    ctx, _, _ = odd_run
    info = storage.read_json(storage.join(ctx.locations.jpeg, "info"))
    assert info["scales"][0]["voxel_offset"] == [0, 0, 3]
    assert info["scales"][0]["size"] == [1000, 777, 37]
    assert info["scales"][0]["resolution"] == [8.0, 8.0, 8.0]
    assert info["scales"][0]["jpeg_quality"] == 90
    prov = storage.read_json(storage.join(ctx.locations.raw, "provenance"))
    assert prov["processing"][0]["method"]["conf"]["minz"] == 3
    assert prov["processing"][0]["method"]["run_id"] == "test-run"
    assert prov["processing"][0]["by"].startswith("emprocess ")
    assert CloudVolume("precomputed://" + ctx.locations.raw).provenance.description.endswith("(raw)")


def test_thumbnails_are_written_per_slice(odd_run):
    ctx, _, aligned = odd_run
    thumb = cv2.imread(str(path_of(ctx.locations.thumbnail(3))), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(thumb, aligned[0])


def digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def output_files(ctx: RunContext) -> list[Path]:
    roots = [ctx.locations.ng, ctx.locations.chunk, ctx.locations.tmp, storage.join(ctx.locations.process, "align")]
    return sorted(p for root in roots for p in path_of(root).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def blocks_run(tmp_path_factory):
    """2100×1100×20: six blocks and two top scales; records the files each mini-task writes."""
    ctx = make_run(tmp_path_factory.mktemp("blocks"), em_like(2100, 1100, 20, seed=1), minz=0)
    written: dict[tuple[str, str], set[str]] = {}
    state: dict[str, tuple[int, int]] = {}

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in output_files(ctx)}

    def record(stage, task):
        nonlocal state
        now = snapshot()
        written[stage.name, task["key"]] = {p for p, stamp in now.items() if state.get(p) != stamp}
        state = now

    state = snapshot()
    tasks = run_all(ctx, record)
    return ctx, tasks, written


def test_no_two_mini_tasks_write_the_same_file(blocks_run):
    ctx, tasks, written = blocks_run
    planned = {(name, t["key"]): set(pyramid.planned_outputs(name, t["payload"]))
               for name, stage_tasks in tasks.items() for t in stage_tasks}
    assert len(tasks["pyramid.shard"]) == 6 and len(tasks["pyramid.top"]) == 1
    counts = Counter(url for outputs in planned.values() for url in outputs)
    assert [url for url, n in counts.items() if n > 1] == []
    for key, files in written.items():
        urls = {f"file://{p}" for p in files}
        # zarr.json is created once, conditionally (if absent), by whichever task comes first
        unplanned = {u for u in urls - planned[key] if not u.endswith("zarr.json")}
        assert unplanned == set(), key
    for (name, key), outputs in planned.items():
        if name != "align.intensity":  # an 8-bit stack needs no intensity rule
            assert all(storage.exists(u) for u in outputs), (name, key)


def test_block_volume_reads_at_every_scale(blocks_run):
    ctx, _, _ = blocks_run
    layout = pyramid.run_layout(ctx)
    assert layout.num_scales == 7 and list(layout.top_scales) == [5, 6]
    below = read_scale(ctx, "raw", 0)
    for scale in range(1, 7):
        raw = read_scale(ctx, "raw", scale)
        assert np.array_equal(raw, mean2(below)), scale
        cv = CloudVolume("precomputed://" + ctx.locations.jpeg, mip=scale, progress=False)
        jpeg = np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0)
        assert psnr(jpeg, raw) >= 36, scale
        below = raw
    assert all(n <= 64 for n in layout.scale_size(6))


def test_rerunning_any_mini_task_rewrites_identical_bytes(blocks_run):
    ctx, tasks, _ = blocks_run
    before = digest(output_files(ctx))
    for name in ("align.warp", "pyramid.meta", "pyramid.shard", "pyramid.top"):
        stage = next(s for s in PIPELINE if s.name == name)
        for task in tasks[name][:2]:
            stage.execute(task["payload"])
    assert digest(output_files(ctx)) == before


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    slices = em_like(1100, 600, 8, seed=2)
    whole = make_run(tmp_path / "whole", slices, minz=0)
    run_all(whole)
    resumed = make_run(tmp_path / "resumed", slices, minz=0)
    for stage in PIPELINE[:3]:  # intensity, warp and meta
        run_stage(stage, resumed)
    run_stage(pyramid.SHARD, resumed, limit=1)  # killed after the first block
    (path_of(resumed.cache_url("align.warp", f"{3:08d}"))).unlink()  # and one warp result was lost
    run_all(resumed)

    def relative_files(ctx: RunContext) -> dict[str, Path]:
        roots = {name: path_of(url) for name, url in (("ng", ctx.locations.ng), ("chunk", ctx.locations.chunk),
                                                      ("tmp", ctx.locations.tmp))}
        return {f"{name}/{p.relative_to(root)}": p for name, root in roots.items() for p in root.rglob("*")
                if p.is_file() and p.name != "provenance"}  # provenance names the run's own source

    def digests(files: dict[str, Path]) -> dict[str, str]:
        return {key: hashlib.sha256(p.read_bytes()).hexdigest() for key, p in files.items()}

    expected, actual = relative_files(whole), relative_files(resumed)
    assert len([k for k in expected if k.endswith(".shard")]) == 2 * (2 * 5 + 1)  # 2 blocks × 5 scales + top
    changed = [k for k, digest in digests(expected).items() if digests(actual).get(k) != digest and k.endswith(".shard")]
    assert digests(actual) == digests(expected), [difference(expected[k], actual[k]) for k in changed if k in actual]


def test_raw_volume_is_optional(tmp_path):
    ctx = make_run(tmp_path, em_like(130, 70, 5), minz=0, createRawPyramid=False)
    tasks = run_all(ctx)
    assert not os.path.exists(path_of(ctx.locations.raw))
    assert all(p["raw"] is None for p in (t["payload"] for t in tasks["pyramid.shard"]))
    assert np.asarray(CloudVolume("precomputed://" + ctx.locations.jpeg, mip=1)[:, :, :]).shape == (65, 35, 3, 1)


def real_stack(folder: str, pattern: str) -> np.ndarray:
    images = sorted((SHARED_DATA / folder).glob(pattern))
    if not images:
        pytest.skip(f"{SHARED_DATA / folder} is absent")
    return np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in images])


def test_fibsem_slices_keep_38_db_at_the_default_quality(tmp_path):
    """Real FIB-SEM slices, CLAHE off (CLAHE adds high-frequency contrast that costs baseline JPEG at
    quality 90 about 1.5 dB on real EM, with any encoder: a property of the contrast setting)."""
    slices = real_stack("em", "iso.*.png")
    ctx = make_run(tmp_path, slices, minz=3493, **{"clip-limit": 0})
    run_all(ctx)
    aligned = open_zarr(ctx.locations.aligned, slices.shape, ALIGNED_CHUNKS, create=False).read().result()
    assert np.array_equal(aligned, slices)
    assert np.array_equal(read_scale(ctx, "raw", 0), aligned)
    assert psnr(read_scale(ctx, "jpeg", 0), aligned) >= 38


def test_isbi_tem_stack(tmp_path):
    """Noisier serial-section TEM: every scale reads back; JPEG at quality 90 measures 37.8 dB here
    (the same as OpenCV's encoder on the same 64³ chunks), so the bound is 37.5."""
    slices = real_stack("isbi2012/image", "*.png")
    ctx = make_run(tmp_path, slices, minz=0, resolution=[4, 4, 50], **{"clip-limit": 0})
    run_all(ctx)
    assert np.array_equal(read_scale(ctx, "raw", 0), slices)
    assert psnr(read_scale(ctx, "jpeg", 0), slices) >= 37.5
    for scale in range(1, pyramid.run_layout(ctx).num_scales):
        assert np.array_equal(read_scale(ctx, "raw", scale), mean2(read_scale(ctx, "raw", scale - 1)))
    cv = CloudVolume("precomputed://" + ctx.locations.jpeg, mip=0, progress=False)
    assert cv.resolution.tolist() == [4, 4, 50]
