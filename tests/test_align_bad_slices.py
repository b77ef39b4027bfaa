"""Bad and missing slices (emprocess.align.bad): found, skipped by the alignment chain over a bridge,
and replaced in the output by a copy of the nearest good neighbour.

The decisions are checked on hand-written measures and pair results; the whole path on real EM
from ../shared/data (skipped when absent): a stack with a blank slice, a noise slice and a missing
file, in both alignment modes.
"""

from __future__ import annotations

from html import escape

import cv2
import numpy as np
import pytest
from support.align_pairs import GOOD, pair, translation
from test_align_accuracy import real_slice, similarity
from test_align_collect import context, outputs, run_collect
from test_align_elastic import ALIGN_STAGES, misregistration, read_align, run_stack

from emprocess import registry
from emprocess.align import bad
from emprocess.align.stages import BRIDGE, PAIRS
from emprocess.batch import run_in_process
from emprocess.config import ConfError, parse_conf
from emprocess.errors import InputError
from emprocess.stages import RunContext
from emprocess.pyramid.writers import open_zarr
from emprocess.report.page import render
from emprocess.report.summary import run_summary
from emprocess.validate import check_slices

SIDE = 520


def measures(**changed) -> dict:
    return {**GOOD, **changed}


# --- decisions -------------------------------------------------------------------------------------


def test_blank_saturated_and_unfocused_slices_are_found_against_their_neighbours():
    found = {z: measures() for z in range(10)}
    found[2] = measures(std=0.2)  # constant
    found[4] = measures(std=3.0)  # a twentieth of its neighbours' 40
    found[6] = measures(saturated=0.8)
    found[8] = measures(focus=50.0)  # a tenth of its neighbours'
    reasons = bad.detected(found, [], "replace")
    assert sorted(reasons) == [2, 4, 6, 8]
    assert reasons[2].startswith("blank") and reasons[4].startswith("near-constant")
    assert reasons[6].startswith("saturated (80%") and reasons[8].startswith("out of focus")
    slightly_worse = {z: measures(focus=500.0 * (0.5 if z == 5 else 1), std=40 * (0.5 if z == 3 else 1))
                      for z in range(10)}
    assert bad.detected(slightly_worse, [], "replace") == {}
    bright = {z: measures(saturated=0.6 if z != 5 else 0.7) for z in range(10)}  # a stack of bright resin
    assert bad.detected(bright, [], "replace") == {}


def test_keep_and_an_explicit_list_override_the_measures_but_not_missing_files():
    found = {z: measures(std=0.0 if z == 2 else 40.0) for z in range(6)}
    assert bad.detected(found, [5], "keep") == {5: bad.MISSING}
    assert bad.detected(found, [5], [1, 3]) == {1: bad.LISTED, 3: bad.LISTED, 5: bad.MISSING}


def test_a_slice_is_suspect_when_both_its_pairs_fall_back_but_not_in_a_long_failing_run():
    assert bad.suspects([3, 4], [], 0, 9) == [4]
    assert bad.suspects([3, 4, 5], [], 0, 9) == [4, 5]  # two neighbours: a run of MAX_SUSPECT_RUN
    assert bad.suspects(range(0, 9), [], 0, 9) == []  # every pair fails: the stack's own trouble
    assert bad.suspects([1, 2], [2], 0, 9) == []  # a detected slice is no suspect


def test_a_suspect_is_replaced_only_where_its_neighbours_register_to_each_other():
    # slice 2 blank (detected), 3 and 4 both fail on both sides, the noise is 4: 3 ↔ 5 registers
    detected = {2: "blank"}
    suspected = [3, 4]
    planned = bad.candidate_bridges(detected, suspected, 0, 9)
    assert planned == [(1, 3), (1, 4), (1, 5), (3, 5)]
    registered = {span: span in {(1, 3), (3, 5), (1, 5)} for span in planned}  # (1, 4) ends on the noise
    replaced = bad.accepted(detected, suspected, registered, 0, 9)
    assert list(replaced) == [2, 4]  # 3 registers to 5 once 4 is gone: it stays, though (1, 5) registers too
    assert replaced[4] == bad.UNREGISTERED.format(first=3, last=5)
    nothing = {span: span == (1, 3) for span in planned}
    assert list(bad.accepted(detected, suspected, nothing, 0, 9)) == [2]
    # noise next to a blank slice: its neighbours are the nearest slices not detected bad
    assert bad.candidate_bridges({1: "blank"}, [2], 0, 3) == [(0, 2), (0, 3)]
    assert list(bad.accepted({1: "blank"}, [2], {(0, 2): False, (0, 3): True}, 0, 3)) == [1, 2]
    # two noise slices in a row: neither passes alone, the run does
    pair_run = bad.accepted({}, [4, 5], {(3, 5): False, (4, 6): False, (3, 6): True}, 0, 9)
    assert list(pair_run) == [4, 5] and pair_run[5] == bad.UNREGISTERED.format(first=3, last=6)


def test_replacements_copy_the_nearest_good_slice_and_the_chain_bridges_inner_runs():
    replaced = {0, 1, 4, 5, 9}
    assert [bad.nearest_good(z, replaced, 0, 9) for z in sorted(replaced)] == [2, 2, 3, 6, 8]
    assert bad.bridges(replaced, 0, 9) == [(3, 6)]  # runs at the stack's ends need none
    with pytest.raises(InputError, match="every slice is bad or missing"):
        bad.nearest_good(1, {0, 1, 2}, 0, 2)


def test_collect_skips_a_blank_slice_over_its_bridge_and_names_it(tmp_path, caplog):
    ctx = context(tmp_path, minz=10, maxz=14)
    results = [pair(z, translation(1, 0), translation(1, 0), measures1=measures(std=0.0) if z == 12 else GOOD,
                    measures2=measures(std=0.0) if z == 11 else GOOD) for z in range(10, 14)]
    results[1]["affine"]["found"] = results[2]["affine"]["found"] = False  # the blank one registers to nothing
    results[1]["translation"]["found"] = results[2]["translation"]["found"] = False
    summary = run_collect(ctx, results, bridges={(11, 13): pair(11, translation(5, 0), translation(5, 0))})
    transforms, _, pairs = outputs(ctx)
    assert summary["replaced"] == [12] and transforms["replaced"] == {"12": 11}
    (entry,) = pairs["replaced"]
    assert (entry["z"], entry["copy_of"]) == (12, 11) and entry["reason"].startswith("blank")
    assert pairs["fallbacks"] == [] and [e["skipped"] for e in pairs["pairs"]] == [False, True, True, False]
    assert [(b["first"], b["last"], b["model"]) for b in pairs["bridges"]] == [(11, 13, "translation")]
    shift = {z: transforms["transforms"][str(z)][0][2] for z in range(10, 15)}
    assert shift[11] - shift[10] == 1 and shift[13] - shift[11] == 5 and shift[14] - shift[13] == 1
    assert transforms["transforms"]["12"] == transforms["transforms"]["11"]
    assert "slice 12 replaced by a copy of slice 11: blank" in caplog.text


def test_keep_leaves_the_chain_as_it_was(tmp_path):
    ctx = context(tmp_path, minz=10, maxz=13, bad_slices="keep")
    results = [pair(z, translation(1, 0), translation(1, 0), measures2=measures(std=0.0)) for z in range(10, 13)]
    assert BRIDGE.plan(ctx) == []  # under keep (and missing files refused) nothing is read, nothing bridged
    summary = run_collect(ctx, results)
    transforms, _, pairs = outputs(ctx)
    assert summary["replaced"] == [] and "replaced" not in transforms and pairs["bridges"] == []


# --- conf and validation -----------------------------------------------------------------------------


def test_the_conf_names_bad_slices_outside_the_stack():
    base = {"id": "t", "image": "s%03d.png", "minz": 0, "maxz": 9, "source": "file:///tmp/x"}
    with pytest.raises(ConfError, match="bad_slices.*outside minz..maxz.*12"):
        parse_conf({**base, "bad_slices": [3, 12]})
    with pytest.raises(ConfError, match="missing_slices"):
        parse_conf({**base, "missing_slices": "skip"})


def test_a_missing_file_fails_by_default_and_is_listed_under_replace(tmp_path):
    (tmp_path / "src").mkdir()
    for z in (0, 1, 3):
        assert cv2.imwrite(str(tmp_path / "src" / f"s{z:03d}.png"), np.full((80, 90), 50 + z, np.uint8))
    conf = {"id": "t", "image": "s%03d.png", "minz": 0, "maxz": 3, "source": f"file://{tmp_path}/src",
            "downsample_factor": 1}
    with pytest.raises(ConfError, match="s002.png does not exist"):
        check_slices(RunContext.create(conf, "run-1"))
    replaced = RunContext.create({**conf, "missing_slices": "replace"}, "run-1")
    assert check_slices(replaced)["missing"] == [2]
    assert bad.missing_slices(replaced.conf) == [2]
    assert [t["payload"]["z"] for t in PAIRS.plan(replaced)] == [[0, 1]]  # slice 3 alone makes no pair
    (tmp_path / "src" / "s005.png").write_bytes((tmp_path / "src" / "s003.png").read_bytes())
    alone = RunContext.create({**conf, "minz": 3, "maxz": 5, "missing_slices": "replace"}, "run-3")
    assert PAIRS.plan(alone) == []  # slices 3 and 5 have no pair: still the missing 4 is bridged
    assert [t["key"] for t in BRIDGE.plan(alone)] == ["z00000003-00000005"]
    (tmp_path / "src" / "s005.png").unlink()
    identity = RunContext.create({**conf, "missing_slices": "replace", "skip_align": True}, "run-2")
    run_collect(identity, [])
    transforms, _, pairs = outputs(identity)
    assert transforms["replaced"] == {"2": 1} and transforms["source_sizes"]["2"] == [90, 80]
    assert pairs["replaced"] == [{"z": 2, "copy_of": 1, "reason": bad.MISSING}]
    (tmp_path / "src" / "s001.png").unlink()
    (tmp_path / "src" / "s000.png").unlink()
    (tmp_path / "src" / "s003.png").unlink()
    with pytest.raises(ConfError, match="no slice of s000.png..s003.png exists"):
        check_slices(replaced)


# --- real EM: a blank slice, a noise slice and a missing file ------------------------------------------


@pytest.mark.parametrize("mode", ["affine", "elastic"])
def test_a_blank_a_noise_and_a_missing_slice_are_replaced_and_their_neighbours_stay_in_register(tmp_path, mode):
    """Eight slices of two real FIB-SEM neighbours, alternating, each under a small known affine;
    slice 2 is blank, slice 4 noise, slice 6's file is missing. The run succeeds, the three are
    replaced by copies of slices 1, 3 and 5 with their reasons, and the good slices around each are in
    register as well as the real neighbours are by the DIS measure (~1 px)."""
    originals = [real_slice(0), real_slice(1)]
    slices = []
    for z in range(8):
        rng = np.random.default_rng(z)
        move = similarity(rng.uniform(-1, 1), 1.0, 0.0, rng.uniform(-10, 10, 2), (SIDE, SIDE))
        slices.append(cv2.warpAffine(originals[z % 2], move, (SIDE, SIDE), flags=cv2.INTER_CUBIC))
    slices[2] = np.full_like(slices[2], 128)
    slices[4] = np.random.default_rng(4).integers(0, 256, slices[4].shape, dtype=np.uint8)
    ctx, volume = run_stack(tmp_path, slices, align_mode=mode, missing_slices="replace", remove=[6])
    pairs = read_align(ctx, "pairs.json")
    replaced = {e["z"]: (e["copy_of"], e["reason"]) for e in pairs["replaced"]}
    assert sorted(replaced) == [2, 4, 6] and [replaced[z][0] for z in (2, 4, 6)] == [1, 3, 5]
    assert replaced[2][1].startswith("blank") and replaced[6][1] == bad.MISSING
    assert replaced[4][1] == bad.UNREGISTERED.format(first=3, last=5)
    assert pairs["fallbacks"] == []
    assert [(b["first"], b["last"], b["fallback"]) for b in pairs["bridges"]] == [(1, 3, False), (3, 5, False),
                                                                                  (5, 7, False)]
    for z, (copy, _) in replaced.items():
        assert np.array_equal(volume[z], volume[copy]), z
    page = render(run_summary(ctx, registry.pipeline()))
    assert "3 slices replaced" in page
    for z, (copy, reason) in replaced.items():
        assert f'<td class="number">{z}</td><td class="number">{copy}</td><td>{escape(reason)}</td>' in page
    reference = misregistration(*_aligned_pair(tmp_path / "reference", originals, mode))
    for first, last in ((0, 1), (1, 3), (3, 5), (5, 7)):
        measured = misregistration(volume[first], volume[last])
        assert measured <= max(1.5, reference + 0.5), (first, last, measured, reference)


def _aligned_pair(folder, originals: list[np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The two real neighbours aligned by the same mode: what "in register" means for this data."""
    _, volume = run_stack(folder, originals, align_mode=mode)
    return volume[0], volume[1]


def test_a_replaced_slice_renders_its_copy_when_the_alignment_is_reused(tmp_path):
    """reuse_alignment keeps the replacements: the reused run's slice 2 is again slice 1's copy."""
    originals = [real_slice(0), real_slice(1)]
    slices = [originals[0], originals[1], np.full_like(originals[0], 90), originals[1], originals[0]]
    first, volume = run_stack(tmp_path, slices)
    assert read_align(first, "transforms.json")["replaced"] == {"2": 1}
    second = RunContext.create({**first.conf.to_json(), "reuse_alignment": first.run_id}, "run-2")
    for stage in ALIGN_STAGES:
        run_in_process(stage, second, 0, 1)
    assert [e["z"] for e in read_align(second, "pairs.json")["replaced"]] == [2]
    again = open_zarr(second.locations.aligned, volume.shape, (1, 1024, 1024), create=False).read().result()
    assert np.array_equal(again, volume) and np.array_equal(again[2], again[1])


@pytest.mark.parametrize("shape", [(5, 7), (16, 9), (17, 12), (33, 40)])
def test_the_focus_measure_taken_in_bands_equals_the_whole_images(monkeypatch, shape):
    monkeypatch.setattr(bad, "FOCUS_BAND_ROWS", 8)  # bands end inside these images, and at their edges
    image = np.random.default_rng(shape[0]).integers(0, 256, shape, dtype=np.uint8)
    whole = float(cv2.Laplacian(image, cv2.CV_32F).astype(np.float64).var())
    assert bad.laplacian_variance(image) == pytest.approx(whole, rel=1e-12)
