"""cg.meta input validation: bad watersheds, sizes, tables and chunk sizes fail before any write."""

from __future__ import annotations

import numpy as np
import pytest
from support.chunkedgraph import STAGE, make_context, run_graph, write_transforms, write_volume
from support.refusals import Case, spoiled
from support.refusals import segmentation as refusals_segmentation

from emprocess import storage
from emprocess.chunkedgraph.agglomeration import load_table
from emprocess.config import ConfError
from emprocess.stages import InputError, RunContext
from emprocess.validate import validate_run

SHAPE = (48, 40, 36)


def labels(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 30, SHAPE).astype(np.uint32)


def context(tmp_path, stages=("chunkedgraph",), **segmentation):
    segmentation = {"watershed": f"file://{tmp_path}/watershed", "chunk_size": [16, 16, 16], **segmentation}
    return make_context(tmp_path, segmentation, depth=SHAPE[2], stages=stages)


def run_meta(ctx):
    (task,) = STAGE["cg.meta"].plan(ctx)
    return STAGE["cg.meta"].execute(task["payload"])


def assert_fails_before_writing(ctx, match):
    with pytest.raises(InputError, match=match):
        run_meta(ctx)
    assert storage.listdir(ctx.locations.chunk) == []


def test_missing_watershed(tmp_path):
    assert_fails_before_writing(context(tmp_path), "watershed file://.*/watershed: no precomputed volume there")


def test_watershed_that_is_not_a_segmentation(tmp_path):
    write_volume(f"file://{tmp_path}/watershed", labels().astype(np.uint8), kind="image")
    assert_fails_before_writing(context(tmp_path), "not a segmentation \\(type 'image'\\)")


def test_watershed_with_a_non_id_data_type(tmp_path):
    write_volume(f"file://{tmp_path}/watershed", labels().astype(np.float32))
    assert_fails_before_writing(context(tmp_path), "data_type 'float32', expected uint32 or uint64")


def test_watershed_size_must_match_the_aligned_volume(tmp_path):
    write_volume(f"file://{tmp_path}/watershed", labels())
    ctx = context(tmp_path)
    write_transforms(ctx, width=SHAPE[0] + 1, height=SHAPE[1], depth=SHAPE[2])
    with pytest.raises(InputError, match=r"size \[48, 40, 36\] does not match the run's aligned volume \[49, 40, 36\]"):
        run_meta(ctx)
    assert not storage.exists(storage.join(ctx.locations.chunkedgraph, "meta.json"))


def test_matching_transforms_are_accepted(tmp_path):
    write_volume(f"file://{tmp_path}/watershed", labels())
    ctx = context(tmp_path)
    write_transforms(ctx, *SHAPE)
    assert run_meta(ctx)["size"] == list(SHAPE)


def test_without_transforms_the_align_stage_must_not_be_wanted(tmp_path):
    write_volume(f"file://{tmp_path}/watershed", labels())
    ctx = context(tmp_path, stages=("align", "pyramid", "chunkedgraph"))
    with pytest.raises(InputError, match="transforms.json not found"):
        run_meta(ctx)
    assert run_meta(context(tmp_path))["grid"] == [3, 3, 3]


def test_chunk_size_must_be_powers_of_two_from_16_to_4096(tmp_path):
    write_volume(f"file://{tmp_path}/watershed", labels())
    for bad, payload_refusal in (([0, 16, 16], "greater than or equal to 16"), ([8, 16, 16], "greater than or equal to 16"),
                                 ([-16, 16, 16], "greater than or equal to 16"), ([24, 16, 16], "powers of two from 16"),
                                 ([8192, 16, 16], "less than or equal to 4096")):
        with pytest.raises(ConfError, match="positive power of two, at least 16 and at most 4096"):
            context(tmp_path, chunk_size=bad)
        ctx = context(tmp_path)
        (task,) = STAGE["cg.meta"].plan(ctx)
        with pytest.raises(InputError, match=payload_refusal):
            STAGE["cg.meta"].execute({**task["payload"], "chunk_size": bad})
    assert storage.listdir(ctx.locations.chunk) == []


def test_unknown_table_ids_are_counted_and_the_graph_still_builds(tmp_path):
    volume = labels()
    write_volume(f"file://{tmp_path}/watershed", volume)
    present = np.unique(volume[volume != 0])
    table = np.stack([np.concatenate([present, [1000, 1001, 1002]]), np.ones(present.size + 3, np.uint32)], axis=1)
    np.save(tmp_path / "bodies.npy", table)
    ctx = context(tmp_path, agglomeration=f"file://{tmp_path}/bodies.npy")
    results = run_graph(ctx)
    meta = results["cg.meta"]["meta"]
    assert meta["unknown_supervoxels"] == 3
    assert "3 of 32 supervoxel ids are not in watershed" in meta["warnings"][0]
    assert len(results["cg.flatten"]) == 27


def test_a_table_mapping_one_supervoxel_to_two_bodies_is_refused(tmp_path):
    write_volume(f"file://{tmp_path}/watershed", labels())
    (tmp_path / "bodies.csv").write_text("supervoxel,body\n1,5\n2,5\n1,6\n")
    ctx = context(tmp_path, agglomeration=f"file://{tmp_path}/bodies.csv")
    assert_fails_before_writing(ctx, "supervoxel 1 is mapped to two bodies")


def test_table_formats_load_alike(tmp_path):
    rows = np.array([[3, 10], [1, 10], [2, 11], [3, 10]], dtype=np.uint64)
    np.save(tmp_path / "t.npy", rows)
    np.savez(tmp_path / "one.npz", rows)
    np.savez(tmp_path / "two.npz", supervoxels=rows[:, 0], bodies=rows[:, 1])
    (tmp_path / "t.csv").write_text("sv,body\n3,10\n1,10\n2,11\n3,10\n")
    for name in ("t.npy", "one.npz", "two.npz", "t.csv"):
        supervoxels, bodies = load_table(f"file://{tmp_path}/{name}")
        assert supervoxels.tolist() == [1, 2, 3] and bodies.tolist() == [10, 11, 10], name


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("t.txt", b"1,2\n", "unsupported file type"),
        ("t.csv", b"1,2,3\n", "expected two columns"),
        ("t.csv", b"1,-2\n", "cannot read it as .csv"),
        ("t.csv", b"0,2\n", "supervoxel id 0 is background"),
        ("missing.csv", None, "not found"),
    ],
)
def test_bad_tables_name_the_url(tmp_path, name, content, match):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=f"agglomeration file://{tmp_path}/{name}: .*{match}"):
        load_table(f"file://{tmp_path}/{name}")


def test_negative_ids_in_npy_are_refused(tmp_path):
    np.save(tmp_path / "t.npy", np.array([[1, -4]], dtype=np.int64))
    with pytest.raises(InputError, match="negative id -4"):
        load_table(f"file://{tmp_path}/t.npy")


@pytest.mark.parametrize(("change", "damage", "found"), [
    (refusals_segmentation.segmentation("bodies.npy"),
     refusals_segmentation.with_table("bodies.npy", np.array([[1, 2], [3, 2]])), {"agglomeration_rows": 2}),
    (refusals_segmentation.segmentation(skip_align=True), refusals_segmentation.watershed(), {"grid": [3, 3, 1]}),
    (refusals_segmentation.segmentation(chunk_size=[16, 16, 16], stages=["chunkedgraph"]),
     refusals_segmentation.watershed(shape=(40, 30, 20)), {"watershed_size": [40, 30, 20], "grid": [3, 2, 2]}),
    (refusals_segmentation.segmentation(reuse_alignment=refusals_segmentation.REUSED_RUN),
     lambda src: (refusals_segmentation.reused_alignment(src),
                  refusals_segmentation.write_watershed(src, refusals_segmentation.labels((120, 96, 4)))),
     {"watershed_size": [120, 96, 4]}),
    (refusals_segmentation.segmentation(), refusals_segmentation.watershed(shape=(130, 100, 4)),  # aligned: wider
     {"sampled_chunks": 16}),
], ids=["table", "skip_align", "graph only", "reused alignment", "pairwise alignment"])
def test_validate_passes_the_refusal_catalogues_good_segmentation(tmp_path, change, damage, found):
    """The catalogue's segmentation cases each spoil one thing of inputs that pass."""
    conf = spoiled(Case("good", change, damage), tmp_path)
    result = validate_run(RunContext.create(conf, "manual__2020-01-01T00:00:00+00:00"))
    assert found.items() <= result.items()
