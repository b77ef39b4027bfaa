"""align.collect and the ALIGN plans: model choice, composition, bounding box, the three outputs.

Pair results here are written by hand (the schema align.pairs returns), so every rule is checked
on exactly known numbers; the registration itself is tested in test_align_accuracy.py.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.align_pairs import SIZE, pair, rotation, translation

from emprocess import registry, run_layout, storage
from emprocess.align import compose
from emprocess.align.stages import BRIDGE, COLLECT, PAIRS, PAIRS_PER_TASK
from emprocess.config import run_key
from emprocess.stages import InputError, RunContext


def context(tmp_path: Path, **conf) -> RunContext:
    base = {"id": "t", "image": "s%03d.png", "minz": 10, "maxz": 13, "source": f"file://{tmp_path}/src"}
    return RunContext.create({**base, **conf}, "run-1")


def run_collect(ctx: RunContext, results: list[dict], bridges: dict[tuple[int, int], dict] | None = None) -> dict:
    """Store ``results`` as the align.pairs cache (one per planned key, in order) and ``bridges`` as the
    align.bridge cache (a bridge not given registers nothing), then collect."""
    write_pairs(ctx, results)
    for task in BRIDGE.plan(ctx):
        first, last = (int(z) for z in task["key"][1:].split("-"))
        found = (bridges or {}).get((first, last), pair(first))
        storage.write_json(ctx.cache_url(BRIDGE.name, task["key"]), {k: v for k, v in found.items() if k != "z"})
    (task,) = COLLECT.plan(ctx)
    result = COLLECT.execute(task["payload"])
    assert COLLECT.check(COLLECT.parse_payload(task["payload"]), COLLECT.parse_result(result))
    return result


def write_pairs(ctx: RunContext, results: list[dict]) -> None:
    by_first = {}
    for result in results:
        by_first.setdefault(result["z"], result)
    for task in PAIRS.plan(ctx):
        zs = task["payload"]["z"]
        storage.write_json(ctx.cache_url(PAIRS.name, task["key"]), {"pairs": [by_first[z] for z in zs[:-1]]})


def outputs(ctx: RunContext) -> tuple[dict, str, dict]:
    folder = storage.join(ctx.locations.process, "align")
    return (storage.read_json(storage.join(folder, "transforms.json")),
            storage.read(storage.join(folder, "transforms.csv")).decode(),
            storage.read_json(storage.join(folder, "pairs.json")))


def write_slices(folder: Path, sizes: dict[int, tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for z, (w, h) in sizes.items():
        assert cv2.imwrite(str(folder / f"s{z:03d}.png"), np.full((h, w), 100, np.uint8))


# --- model choice -----------------------------------------------------------------------------------


def test_negligible_affine_gives_way_to_the_translation():
    # 0.05° over a 400×300 slice moves corners by < 0.5 px relative to the pure shift
    choice = compose.choose(pair(0, rotation(0.05, 5, 7), translation(5, 7)))
    assert (choice.model, choice.fallback) == ("translation", False)
    assert choice.departure_px < compose.NEGLIGIBLE_PX
    np.testing.assert_allclose(choice.matrix[:2], translation(5, 7))


def test_a_real_rotation_keeps_the_affine():
    choice = compose.choose(pair(0, rotation(0.5, 5, 7), translation(5, 7)))
    assert (choice.model, choice.fallback) == ("affine", False)
    # 0.5° about the origin moves the far corner (399.5, 299.5) by 2·sin(0.25°)·|corner| px
    far = math.hypot(399.5, 299.5) * 2 * math.sin(math.radians(0.25))
    assert choice.departure_px == pytest.approx(far, rel=1e-6)


def test_missing_affine_falls_back_to_translation_then_identity():
    shifted = compose.choose(pair(0, None, translation(3, 4)))
    assert (shifted.model, shifted.fallback) == ("translation", True)
    assert "affine not found" in shifted.reason
    nothing = compose.choose(pair(0))
    assert (nothing.model, nothing.fallback) == ("identity", True)
    np.testing.assert_array_equal(nothing.matrix, np.eye(3))


def test_affine_without_translation_is_used_without_fallback():
    choice = compose.choose(pair(0, rotation(3.0, 1, 1), None))
    assert (choice.model, choice.fallback, choice.departure_px) == ("affine", False, None)


# --- composition and frame --------------------------------------------------------------------------


def test_composition_chains_pairs_from_an_identity_first_slice():
    pairs = {0: compose.homogeneous(translation(10, 0)), 1: compose.homogeneous(rotation(90))}
    chained = compose.compose(0, 2, pairs)
    np.testing.assert_array_equal(chained[0], np.eye(3))
    # a pixel of slice 2 goes through slice 1 (rotation) and then slice 0 (shift)
    point = np.array([[3.0, 4.0]])
    np.testing.assert_allclose(compose.apply(chained[2], point), [[-4.0 + 10, 3.0]], atol=1e-12)


def test_frame_shifts_by_whole_pixels_to_a_non_negative_origin():
    transforms = {0: np.eye(3), 1: compose.homogeneous(translation(-20.25, 35.5))}
    framed, width, height = compose.frame(transforms, {0: [100, 50], 1: [100, 50]})
    shift = framed[0][:2, 2]
    # whole pixels, so slice 0 is copied without resampling; slice 1's left edge (-20.75) lands in pixel 0
    assert shift.tolist() == [21.0, 0.0]
    edges = np.concatenate([compose.apply(framed[z], compose.slice_corners([100, 50])) for z in framed])
    assert edges.min(axis=0).tolist() == [0.25, -0.5]
    assert (width, height) == (121, 86)  # right edge 99.5 + 21, bottom edge 49.5 + 35.5
    assert edges[:, 0].max() <= width - 0.5 and edges[:, 1].max() <= height - 0.5


def test_identity_frame_is_the_largest_slice():
    framed, width, height = compose.frame({0: np.eye(3), 1: np.eye(3)}, {0: [30, 80], 1: [50, 20]})
    assert (width, height) == (50, 80)
    assert all(np.array_equal(t, np.eye(3)) for t in framed.values())


# --- plans -------------------------------------------------------------------------------------------


def test_pairs_plan_covers_every_adjacent_pair_once(tmp_path):
    ctx = context(tmp_path, minz=3, maxz=3 + 2 * PAIRS_PER_TASK + 2, downsample_factor=2)
    tasks = PAIRS.plan(ctx)
    covered = [z for t in tasks for z in t["payload"]["z"][:-1]]
    assert covered == list(range(3, ctx.conf.maxz))
    assert [t["key"] for t in tasks] == ["z00000003-00000011", "z00000011-00000019", "z00000019-00000021"]
    first = tasks[0]["payload"]
    assert first["images"] == [ctx.conf.slice_url(z) for z in range(3, 12)]
    assert first["downsample"] == 2
    assert all(url.startswith("file:///") for t in tasks for url in t["payload"]["images"])


@pytest.mark.parametrize("conf", [
    {"skip_align": True}, {"reuse_alignment": "run-0"}, {"minz": 5, "maxz": 5}, {"stages": ["pyramid"]},
])
def test_pairs_plan_is_empty_when_not_wanted(tmp_path, conf):
    assert PAIRS.plan(context(tmp_path, **conf)) == []


def test_collect_plan_names_every_pairs_result_and_the_reused_run(tmp_path):
    ctx = context(tmp_path, maxz=30)
    write_pairs(ctx, [pair(z, translation(1, 0), translation(1, 0)) for z in range(10, 30)])
    (task,) = COLLECT.plan(ctx)
    assert task["key"] == "collect"
    assert task["payload"]["pairs"] == [ctx.cache_url("align.pairs", t["key"]) for t in PAIRS.plan(ctx)]
    assert task["payload"]["process"] == ctx.locations.process
    reused = context(tmp_path, reuse_alignment="manual__2024-01-01")
    (task,) = COLLECT.plan(reused)
    reused_key = run_key("manual__2024-01-01", reused.conf.source)
    assert task["payload"]["reuse"] == run_layout.run_locations(reused.conf.source, reused_key).process
    assert task["payload"]["pairs"] == []
    assert COLLECT.plan(context(tmp_path, stages=["pyramid"])) == []


def test_stages_are_registered_for_the_fiji_service():
    assert registry.get("align.pairs") is PAIRS and registry.get("align.collect") is COLLECT
    assert (PAIRS.service, PAIRS.endpoint, COLLECT.service) == ("fiji", "/align", None)
    assert PAIRS in registry.for_service("fiji")


# --- collect -----------------------------------------------------------------------------------------


def test_collect_writes_the_agreed_schema(tmp_path):
    ctx = context(tmp_path)  # slices 10..13
    results = [pair(10, rotation(1.0, -30, 5), translation(-30, 5)), pair(11, rotation(0.01, 4, 4), translation(4, 4)),
               pair(12, rotation(-1.0, 2, -60), None, size2=[420, 310])]
    summary = run_collect(ctx, results)
    transforms, csv, pairs = outputs(ctx)
    assert set(transforms) == {"minz", "maxz", "width", "height", "transforms", "source_sizes"}
    assert (transforms["minz"], transforms["maxz"]) == (10, 13)
    assert transforms["source_sizes"] == {"10": SIZE, "11": SIZE, "12": SIZE, "13": [420, 310]}
    assert (summary["width"], summary["height"]) == (transforms["width"], transforms["height"])
    # every slice lies inside the frame, which starts at pixel 0
    edges = np.concatenate([compose.apply(np.array(m), compose.slice_corners(transforms["source_sizes"][z]))
                            for z, m in transforms["transforms"].items()])
    assert edges.min() >= -0.5 and edges[:, 0].max() <= transforms["width"] - 0.5
    assert edges[:, 1].max() <= transforms["height"] - 0.5
    # slice 11 relative to slice 10 is the pair's affine; slice 12 relative to 11 is the translation
    t = {z: compose.homogeneous(m) for z, m in transforms["transforms"].items()}
    np.testing.assert_allclose(np.linalg.inv(t["10"]) @ t["11"], compose.homogeneous(rotation(1.0, -30, 5)), atol=1e-9)
    np.testing.assert_allclose(np.linalg.inv(t["11"]) @ t["12"], compose.homogeneous(translation(4, 4)), atol=1e-9)
    assert [p["model"] for p in pairs["pairs"]] == ["affine", "translation", "affine"]
    assert pairs["mode"] == "pairwise" and pairs["fallbacks"] == [] == summary["fallbacks"]
    rows = csv.strip().split("\n")
    assert rows[0] == "z,a,b,c,d,e,f,source_width,source_height"
    assert [float(v) for v in rows[4].split(",")] == [13, *np.ravel(transforms["transforms"]["13"]), 420, 310]


def test_fallbacks_are_flagged_in_pairs_json_and_logged(tmp_path, caplog):
    ctx = context(tmp_path)
    results = [pair(10, rotation(1.0)), pair(11, None, translation(7, -3)), pair(12)]
    with caplog.at_level(logging.WARNING, logger="emprocess.align"):
        summary = run_collect(ctx, results)
    transforms, _, pairs = outputs(ctx)
    assert pairs["fallbacks"] == [11, 12] == summary["fallbacks"]
    flagged = {p["z"]: (p["model"], p["fallback"]) for p in pairs["pairs"]}
    assert flagged == {10: ("affine", False), 11: ("translation", True), 12: ("identity", True)}
    logged = [r.getMessage() for r in caplog.records if r.name == "emprocess.align" and r.levelno == logging.WARNING]
    assert any("11→12" in m and "translation used" in m for m in logged)
    assert any("12→13" in m and "identity used" in m for m in logged)
    t = {z: compose.homogeneous(m) for z, m in transforms["transforms"].items()}
    np.testing.assert_allclose(np.linalg.inv(t["12"]) @ t["13"], np.eye(3), atol=1e-12)


def test_collect_is_idempotent(tmp_path):
    ctx = context(tmp_path)
    results = [pair(10, rotation(0.7, 3, 1)), pair(11, None, translation(1, 2)), pair(12)]
    run_collect(ctx, results)
    names = ("transforms.json", "transforms.csv", "pairs.json")
    first = [storage.read(storage.join(ctx.locations.process, "align", n)) for n in names]
    run_collect(ctx, results)
    second = [storage.read(storage.join(ctx.locations.process, "align", n)) for n in names]
    assert first == second


def test_missing_or_conflicting_pair_results_are_input_errors(tmp_path):
    ctx = context(tmp_path)
    write_pairs(ctx, [pair(z, rotation(0)) for z in range(10, 13)])
    (task,) = COLLECT.plan(ctx)
    (key,) = [t["key"] for t in PAIRS.plan(ctx)]
    storage.write_json(ctx.cache_url(PAIRS.name, key), {"pairs": [pair(10, rotation(0)), pair(12, rotation(0))]})
    with pytest.raises(InputError, match=r"z=\[11\]"):
        COLLECT.execute(task["payload"])
    storage.write_json(ctx.cache_url(PAIRS.name, key), {"pairs": [
        pair(10, rotation(0)), pair(11, rotation(0), size1=[401, 300]), pair(12, rotation(0))]})
    with pytest.raises(InputError, match="slice 11"):
        COLLECT.execute(task["payload"])


def test_missing_pairs_result_names_its_url(tmp_path):
    with pytest.raises(FileNotFoundError, match=PAIRS.plan(context(tmp_path))[0]["key"]):
        COLLECT.plan(context(tmp_path))  # its bridges are planned from the pairs results
    ctx = context(tmp_path, bad_slices="keep")  # no bridges: the plan reads nothing
    (task,) = COLLECT.plan(ctx)
    with pytest.raises(FileNotFoundError, match=task["payload"]["pairs"][0]):
        COLLECT.execute(task["payload"])


def test_skip_align_gives_identities_and_the_largest_slice(tmp_path):
    write_slices(tmp_path / "src", {10: (64, 48), 11: (80, 40), 12: (64, 48), 13: (70, 50)})
    ctx = context(tmp_path, skip_align=True)
    summary = run_collect(ctx, [])
    transforms, _, pairs = outputs(ctx)
    assert (transforms["width"], transforms["height"]) == (80, 50) == (summary["width"], summary["height"])
    assert all(m == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] for m in transforms["transforms"].values())
    assert transforms["source_sizes"] == {"10": [64, 48], "11": [80, 40], "12": [64, 48], "13": [70, 50]}
    assert (pairs["mode"], pairs["pairs"]) == ("skip_align", [])


def test_a_single_slice_is_its_own_frame(tmp_path):
    write_slices(tmp_path / "src", {7: (33, 21)})
    ctx = context(tmp_path, minz=7, maxz=7)
    run_collect(ctx, [])
    transforms, csv, _ = outputs(ctx)
    assert transforms["transforms"] == {"7": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}
    assert (transforms["width"], transforms["height"]) == (33, 21)
    assert csv.strip().split("\n")[1] == "7,1.0,0.0,0.0,0.0,1.0,0.0,33,21"


def test_skip_align_with_a_missing_slice_names_it(tmp_path):
    write_slices(tmp_path / "src", {10: (8, 8), 11: (8, 8), 13: (8, 8)})
    (task,) = COLLECT.plan(context(tmp_path, skip_align=True))
    with pytest.raises(FileNotFoundError, match="s012.png"):
        COLLECT.execute(task["payload"])


def test_reuse_takes_the_other_runs_transforms_and_frame(tmp_path):
    earlier = context(tmp_path, minz=8, maxz=14)  # run id "run-1"
    run_collect(earlier, [pair(z, rotation(0.3 * z, z, -z)) for z in range(8, 14)])
    reference, _, _ = outputs(earlier)
    ctx = RunContext.create({**earlier.conf.to_json(), "reuse_alignment": "run-1", "minz": 10, "maxz": 13}, "run-2")
    assert PAIRS.plan(ctx) == []
    summary = run_collect(ctx, [])
    transforms, _, pairs = outputs(ctx)
    assert (transforms["width"], transforms["height"]) == (reference["width"], reference["height"])
    assert transforms["transforms"] == {z: reference["transforms"][z] for z in ("10", "11", "12", "13")}
    assert summary["mode"] == pairs["mode"] == "reused"
    assert pairs["reused_from"] == earlier.locations.process
    assert [p["z"] for p in pairs["pairs"]] == [10, 11, 12]
    wider = RunContext.create({**earlier.conf.to_json(), "reuse_alignment": "run-1", "minz": 5, "maxz": 13}, "run-3")
    (task,) = COLLECT.plan(wider)
    with pytest.raises(InputError, match="covers slices 8..14"):
        COLLECT.execute(task["payload"])
