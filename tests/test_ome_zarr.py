"""The OME-Zarr output (``"formats": ["precomputed", "ome-zarr"]``), written by the pyramid's own tasks.

A 1100×150×70 stack from slice 5 at 4×5×30 nm runs the pyramid stages in-process, each at width 2
(the two workers of a stage run at once): two blocks in x, two 64-slice shards deep at scale 0, six
scales of which the last is pyramid.top's. Every scale is read back with tensorstore, zarr-python
and ome-zarr, and compared with the raw precomputed volume.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr
from ome_zarr.format import FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Reader
from test_pyramid_stages import em_like, make_run, path_of, read_scale, run_stage

from emprocess import storage
from emprocess.batch import run_in_process
from emprocess.config import ConfError, parse_conf
from emprocess.pyramid import ome_zarr
from emprocess.pyramid import stages as pyramid
from emprocess.pyramid.downsample import mean2
from emprocess.pyramid.layout import PyramidLayout
from emprocess.pyramid.writers import ALIGNED_CHUNKS, open_zarr
from emprocess.stages import InputError, RunContext

WIDTH = 2
SIZE = (1100, 150, 70)  # x, y, z
RESOLUTION = [4, 5, 30]  # nm, x, y, z
MINZ = 5


def run_at_width(ctx: RunContext) -> dict[str, list[dict]]:
    """Every stage of the pipeline, its ``WIDTH`` workers at once; the plans."""
    for stage in pyramid.ALIGN_STAGES:
        run_stage(stage, ctx)
    plans = {}
    for stage in pyramid.STAGES:
        with ThreadPoolExecutor(WIDTH) as pool:
            for done in [pool.submit(run_in_process, stage, ctx, w, WIDTH, threads=1) for w in range(WIDTH)]:
                done.result()
        plans[stage.name] = stage.plan(ctx)
    return plans


@pytest.fixture(scope="module")
def ome_run(tmp_path_factory):
    x, y, z = SIZE
    ctx = make_run(tmp_path_factory.mktemp("ome"), em_like(x, y, z, seed=3), minz=MINZ, resolution=RESOLUTION,
                   formats=["precomputed", "ome-zarr"])
    plans = run_at_width(ctx)
    aligned = open_zarr(ctx.locations.aligned, (z, y, x), ALIGNED_CHUNKS, create=False).read().result()
    return ctx, plans, aligned


def halved(size: tuple[int, ...], times: int) -> tuple[int, ...]:
    for _ in range(times):
        size = tuple(-(-n // 2) for n in size)
    return size


def files_under(url: str) -> dict[str, Path]:
    root = path_of(url)
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_run_has_blocks_slabs_and_a_top_scale(ome_run):
    ctx, plans, _ = ome_run
    layout = pyramid.run_layout(ctx)
    assert len(plans["pyramid.shard"]) == 2 and list(layout.top_scales) == [5]
    assert ome_zarr.shard_shape(layout, 0) == (64, 192, 1024)
    assert ome_zarr.shard_shape(layout, 5) == (64, 64, 64)
    assert sorted(p for p in files_under(ctx.locations.ome_zarr) if p.startswith("0/c/")) == [
        "0/c/0/0/0", "0/c/0/0/1", "0/c/1/0/0", "0/c/1/0/1"]


def test_tensorstore_and_zarr_read_every_scale_as_the_raw_volume(ome_run):
    ctx, _, aligned = ome_run
    layout = pyramid.run_layout(ctx)
    group = zarr.open_group(path_of(ctx.locations.ome_zarr), mode="r")
    assert layout.num_scales == 6
    for scale in range(layout.num_scales):
        expected = read_scale(ctx, "raw", scale)
        assert expected.shape == halved(aligned.shape, scale)
        tensor = ts.open({"driver": "zarr3", "kvstore": storage.kvstore_spec(storage.join(ctx.locations.ome_zarr,
                                                                                          str(scale)))}).result()
        assert np.array_equal(tensor.read().result(), expected), scale
        array = group[str(scale)]
        assert array.shape == expected.shape and array.dtype == np.uint8
        assert array.shards == ome_zarr.shard_shape(layout, scale) and array.chunks == (64, 64, 64)
        assert np.array_equal(array[:], expected), scale


def test_scale_0_is_the_aligned_volume_and_scale_1_its_mean(ome_run):
    ctx, _, aligned = ome_run
    group = zarr.open_group(path_of(ctx.locations.ome_zarr), mode="r")
    assert aligned.std() > 20
    assert np.array_equal(group["0"][:], aligned)
    assert np.array_equal(group["1"][:], mean2(aligned))


def test_multiscales_metadata_places_every_level_in_nanometres(ome_run):
    ctx, _, _ = ome_run
    attributes = zarr.open_group(path_of(ctx.locations.ome_zarr), mode="r").attrs.asdict()
    ome = attributes["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert multiscale["axes"] == [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    datasets = multiscale["datasets"]
    assert [d["path"] for d in datasets] == [str(s) for s in range(6)]
    rz, ry, rx = RESOLUTION[::-1]
    for scale, dataset in enumerate(datasets):
        f = 2 ** scale
        assert dataset["coordinateTransformations"] == [
            {"type": "scale", "scale": [rz * f, ry * f, rx * f]},
            # voxel centres: level s's voxel 0 is the mean of level 0's voxels 0..2^s - 1, the
            # precomputed voxel [MINZ, MINZ + 2^s) × [0, 2^s)² (as neuroglancer overlays them)
            {"type": "translation", "translation": [(MINZ + f / 2) * rz, f / 2 * ry, f / 2 * rx]}]
    FormatV05().validate_coordinate_transformations(3, len(datasets),
                                                    [d["coordinateTransformations"] for d in datasets])
    array = zarr.open_group(path_of(ctx.locations.ome_zarr), mode="r")["0"]
    assert array.metadata.dimension_names == ("z", "y", "x")


def test_ome_zarr_reads_the_image(ome_run):
    ctx, _, aligned = ome_run
    location = parse_url(path_of(ctx.locations.ome_zarr))
    assert location.version == "0.5"
    (node,) = [n for n in Reader(location)() if any(isinstance(spec, Multiscales) for spec in n.specs)]
    assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert [tuple(level.shape) for level in node.data] == [halved(aligned.shape, s) for s in range(6)]
    assert np.array_equal(node.data[1].compute(), mean2(aligned))
    assert node.metadata["coordinateTransformations"][2][0] == {"type": "scale", "scale": [120, 20, 16]}


def test_the_plans_give_every_ome_zarr_file_to_one_mini_task(ome_run):
    ctx, plans, _ = ome_run
    root = ctx.locations.ome_zarr
    owners = Counter(url for name, tasks in plans.items() for task in tasks
                     for url in pyramid.planned_outputs(name, task["payload"]) if url.startswith(root + "/"))
    assert [url for url, n in owners.items() if n > 1] == []
    assert set(owners) == {storage.join(root, path) for path in files_under(root)}
    layout = pyramid.run_layout(ctx)
    for task in plans["pyramid.shard"]:
        planned = ome_zarr.block_shard_paths(layout, tuple(task["payload"]["block"]))
        assert {p.split("/")[0] for p in planned} == {str(s) for s in layout.block_scales}
        outputs = set(pyramid.planned_outputs("pyramid.shard", task["payload"]))
        assert {storage.join(root, p) for p in planned} <= outputs
    # each block's footprint holds its own shards: the shard grid divides the block grid at every block scale
    for scale in layout.block_scales:
        side = 1024 >> scale
        shard = ome_zarr.shard_shape(layout, scale)
        assert all(side % n == 0 or n >= size for n, size in zip(shard, np.array(layout.scale_size(scale))[::-1]))


def test_a_rerun_rewrites_identical_bytes(ome_run):
    ctx, plans, _ = ome_run
    files = files_under(ctx.locations.ome_zarr)
    before = {path: hashlib.sha256(p.read_bytes()).hexdigest() for path, p in files.items()}
    stamps = {path: p.stat().st_mtime_ns for path, p in files.items()}
    for stage in pyramid.STAGES:
        for task in plans[stage.name]:
            stage.execute(task["payload"])
    after = files_under(ctx.locations.ome_zarr)
    assert {path: hashlib.sha256(p.read_bytes()).hexdigest() for path, p in after.items()} == before
    assert all(after[path].stat().st_mtime_ns != stamp for path, stamp in stamps.items())  # rewritten, not skipped


def test_a_volume_of_another_geometry_is_refused_before_any_write(tmp_path):
    url = f"file://{tmp_path}/image.ome.zarr"
    ome_zarr.write_metadata(url, PyramidLayout((200, 100, 30), (0, 0, 0), (8, 8, 8)))
    writer = ome_zarr.OmeZarrWriter(url, PyramidLayout((200, 100, 31), (0, 0, 0), (8, 8, 8)))
    with pytest.raises(InputError, match="image.ome.zarr/0"):
        writer.write(0, (0, 0, 0), np.zeros((31, 100, 200), np.uint8))
    assert not (tmp_path / "image.ome.zarr" / "0" / "c").exists()


def test_precomputed_alone_writes_no_ome_zarr(tmp_path):
    ctx = make_run(tmp_path, em_like(130, 70, 5), minz=0)
    tasks = {stage.name: run_stage(stage, ctx) for stage in (*pyramid.ALIGN_STAGES, *pyramid.STAGES)}
    assert ctx.conf.formats == ["precomputed"]
    assert all(t["payload"]["ome_zarr"] is None for name in ("pyramid.meta", "pyramid.shard") for t in tasks[name])
    assert path_of(ctx.locations.jpeg).exists() and not path_of(ctx.locations.ome_zarr).exists()


CONF = {"id": "t", "image": "img%03d.png", "minz": 0, "maxz": 1, "source": "file:///data/src"}


@pytest.mark.parametrize("formats, problem", [
    ([], "'formats': list \"precomputed\""),
    (["ome-zarr"], "'formats': list \"precomputed\""),
    (["precomputed", "tiff"], "'formats.1': Input should be 'precomputed' or 'ome-zarr'"),
    ("ome-zarr", "'formats': Input should be a valid list"),
])
def test_bad_formats_are_refused_naming_the_key(formats, problem):
    with pytest.raises(ConfError) as refused:
        parse_conf({**CONF, "formats": formats})
    assert problem in str(refused.value)


def test_formats_default_to_precomputed_and_keep_one_order():
    assert parse_conf(CONF).formats == ["precomputed"]
    formats = parse_conf({**CONF, "formats": ["ome-zarr", "precomputed", "ome-zarr"]}).formats
    assert formats == ["precomputed", "ome-zarr"]
