"""The synthetic sample: deterministic, EM-like in the ways later stages rely on, and honest about its truth."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scipy import ndimage as ndi

from emprocess import storage
from emprocess.sample import IMAGE_TEMPLATE, make_volume, write_sample


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def volume():
    return make_volume(256, 16, seed=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return out, write_sample(out, size=256, n_slices=6, seed=5)


def test_volume_shapes_and_types(volume):
    image, labels = volume
    assert image.shape == labels.shape == (16, 256, 256)
    assert image.dtype == np.uint8 and labels.dtype == np.uint32
    assert labels.min() >= 1
    assert image.std() > 20  # not a flat image


def test_cells_are_many_and_span_several_slices(volume):
    _, labels = volume
    ids, counts = np.unique(labels, return_counts=True)
    assert len(ids) > 20
    slices_per_cell = [len(np.unique(np.nonzero(labels == i)[0])) for i in ids[counts > 5000]]
    assert np.median(slices_per_cell) >= 6
    for z in range(labels.shape[0] - 1):
        assert (labels[z] == labels[z + 1]).mean() > 0.85, z


def test_neighbouring_slices_look_alike_but_the_stack_changes(volume):
    image, _ = volume
    near = [ncc(image[z], image[z + 1]) for z in range(image.shape[0] - 1)]
    assert min(near) > 0.8
    assert ncc(image[0], image[-1]) < min(near) - 0.3  # a real 3D volume, not one slice repeated


def test_membranes_are_darker_than_cell_interiors(volume):
    image, labels = volume
    plane, cells = image[8].astype(float), labels[8]
    border = np.zeros(cells.shape, bool)
    border[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    border[1:, :] |= cells[1:, :] != cells[:-1, :]
    interior = ndi.distance_transform_edt(~border) > 4
    assert plane[border].mean() < plane[interior].mean() - 40


def test_same_seed_same_bytes_other_seed_other_image(tmp_path):
    runs = [write_sample(tmp_path / name, size=96, n_slices=3, seed=seed)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["conf.json", "img00000.png", "img00001.png", "img00002.png", "labels.npy", "truth.json"]
    for name in names:
        if name != "conf.json":
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert {**runs[0], "source": ""} == {**runs[1], "source": ""}
    assert (tmp_path / "a" / "img00001.png").read_bytes() != (tmp_path / "c" / "img00001.png").read_bytes()


def test_written_files_and_conf(written):
    out, conf = written
    assert conf == json.loads((out / "conf.json").read_text())
    assert conf == {"id": "sample", "image": "img%05d.png", "minz": 0, "maxz": 5,
                    "source": f"file://{out.resolve()}", "resolution": 8}
    assert storage.parse(conf["source"]).path == str(out.resolve())
    for z in range(6):
        plane = cv2.imread(str(out / (IMAGE_TEMPLATE % z)), cv2.IMREAD_UNCHANGED)
        assert plane.shape == (256, 256) and plane.dtype == np.uint8
    labels = np.load(out / "labels.npy")
    assert labels.shape == (6, 256, 256) and labels.dtype == np.uint32
    assert np.array_equal(labels, make_volume(256, 6, 5)[1])
    truth = json.loads((out / "truth.json").read_text())
    assert truth["size"] == [256, 256] and truth["n_slices"] == 6 and "WARP_INVERSE_MAP" in truth["convention"]
    assert sorted(truth["transforms"], key=int) == [str(z) for z in range(6)]


def test_transforms_stay_within_the_stated_range(written):
    out, _ = written
    transforms = json.loads((out / "truth.json").read_text())["transforms"]
    assert np.array_equal(transforms["0"], np.eye(2, 3))
    centre = np.full(2, 255 / 2)
    for z in range(1, 6):
        m = np.array(transforms[str(z)])
        linear = m[:, :2]
        angle = np.degrees(np.arctan2(linear[1, 0], linear[0, 0]))
        assert 0 < abs(angle) <= 1.0
        assert abs(np.sqrt(abs(np.linalg.det(linear))) - 1) <= 0.005
        assert np.linalg.norm(m @ [*centre, 1] - centre) <= 15.0


def test_stored_transforms_map_slices_back_onto_the_truth(written):
    out, _ = written
    truth_image, _ = make_volume(256, 6, 5)
    transforms = json.loads((out / "truth.json").read_text())["transforms"]
    inner = (slice(40, -40), slice(40, -40))  # away from the reflected borders
    moved_scores = []
    for z in range(6):
        plane = cv2.imread(str(out / (IMAGE_TEMPLATE % z)), cv2.IMREAD_UNCHANGED)
        back = cv2.warpAffine(plane, np.array(transforms[str(z)]), (256, 256),
                              flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
        assert ncc(back[inner], truth_image[z][inner]) > 0.98, z
        moved_scores.append(ncc(plane[inner], truth_image[z][inner]))
    assert moved_scores[0] > 0.999  # slice 0 is the truth itself
    assert min(moved_scores[1:]) < 0.8  # the others really were moved
