"""Patch flow (emprocess.align.flow): its sign convention, sub-pixel accuracy, smooth deformations, the
coarse level's reach, the filters and the grid geometry, on real EM (../shared/data, skipped when
absent) and on synthetic texture (blurred noise) where no data is needed.

Known displacements are made with OpenCV: a translation t through ``cv2.warpAffine`` gives
moving(p) = fixed(p − t), so fixed(p) = moving(p + t) and the flow is v = t at every grid point.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from test_align_accuracy import EM_SLICES, ISBI, need

from emprocess.align.flow import MASK_MARGIN, MAX_SHIFT, PATCH, STRIDE, Flow, _halved, _Source, patch_flow

def read(path: Path) -> np.ndarray:
    return cv2.imread(str(need(path)), cv2.IMREAD_UNCHANGED)


def texture(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Blurred noise: EM-like structure a few pixels across, no data needed."""
    noise = np.random.default_rng(seed).random(shape).astype(np.float32)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def translated(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` moved by (dx, dy), cubic-interpolated, zero fill: its flow from ``image`` is (dx, dy)."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), flags=cv2.INTER_CUBIC)


def fourier_translated(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` moved by (dx, dy) by band-limited (Fourier) interpolation, which wraps around."""
    spectrum = ndimage.fourier_shift(np.fft.fft2(image.astype(np.float64)), (dy, dx))
    return np.clip(np.rint(np.fft.ifft2(spectrum).real), 0, 255).astype(np.uint8)


def grid_points(flow: Flow) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) pixel positions of the grid points, as documented."""
    rows, cols = np.mgrid[0 : flow.valid.shape[0], 0 : flow.valid.shape[1]]
    return flow.origin + cols * flow.stride, flow.origin + rows * flow.stride


def errors(flow: Flow, truth) -> np.ndarray:
    """Euclidean errors (px) of the valid vectors against ``truth``, (2,) or (ny, nx, 2)."""
    truth = np.broadcast_to(np.asarray(truth, np.float64), flow.vectors.shape)
    return np.hypot(*(flow.vectors - truth)[flow.valid].T)


def waves(x: np.ndarray, y: np.ndarray, amplitude: float, length: float, seed: int) -> np.ndarray:
    """(..., 2) smooth displacement (dx, dy) at (x, y): products of sines ~``length`` px long, as
    ``smooth_deformation`` in test_align_accuracy.py, but defined everywhere so it can be evaluated
    off the pixel grid."""
    rng = np.random.default_rng(seed)
    field = []
    for _ in range(2):
        phase, lengths = rng.uniform(0, 2 * np.pi, 2), rng.uniform(0.8 * length, 1.2 * length, 2)
        field.append(amplitude * np.sin(2 * np.pi * x / lengths[0] + phase[0]) * np.sin(2 * np.pi * y / lengths[1] + phase[1]))
    return np.stack(field, -1)


# ==== sign convention and accuracy ====================================================================


@pytest.mark.parametrize("move, truth", [
    (lambda image: np.roll(image, 3, axis=1), (3, 0)),  # content 3 px to the right: +x
    (lambda image: np.roll(image, -5, axis=0), (0, -5)),  # content 5 px up: −y
    (lambda image: translated(image, -7, 4), (-7, 4)),
], ids=["roll+3x", "roll-5y", "warp(-7,4)"])
def test_integer_shifts_give_the_documented_sign(move, truth):
    fixed = read(EM_SLICES[0])
    flow = patch_flow(fixed, move(fixed))
    assert flow.valid.mean() >= 0.9
    assert errors(flow, truth).max() <= 0.1


@pytest.mark.parametrize("path", [EM_SLICES[0], ISBI / "00.png"], ids=["fib-sem", "isbi"])
@pytest.mark.parametrize("shift", [(2.3, -1.7), (0.5, 0.5), (-3.6, 1.1)])
def test_sub_pixel_shifts_are_measured_to_hundredths(path, shift):
    """The resampling here uses OpenCV's cubic kernel, as the warp making the test input does, which
    flatters it (measured: median 0.01 px, 95th percentile 0.02 px); a Fourier-interpolated shift has
    no such help (0.03 and 0.05 px): both must stay within the same bounds."""
    fixed = read(path)
    for moving in (translated(fixed, *shift), fourier_translated(fixed, *shift)):
        flow = patch_flow(fixed, moving)
        error = errors(flow, shift)
        assert flow.valid.mean() >= 0.9
        assert np.median(error) <= 0.05
        assert np.percentile(error, 95) <= 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_smooth_deformation_is_followed_at_the_grid_points(seed):
    """moving = remap(fixed, p − d(p)), i.e. moving(p) = fixed(p − d(p)); then fixed(p) = moving(p + v)
    holds for v = d(p + v), solved exactly here by fixed-point iteration (|∇d| < 1), not approximated
    by d(p) (which is off by |∇d|·|d|, up to ~1 px here).

    The waves are 8 px high and ~520 px long (measured: 96–98 % valid, median error 0.16–0.26 px,
    95th percentile 0.4–0.63 px). At ~260 px the patch is the limit, not the method: a 64 px patch
    measures the displacement averaged over its window, which the curvature of such waves moves by up
    to ~1 px from the value at its centre, and their crests leave the median of the neighbours by more
    than the consistency rule's 3 px (about half the vectors are dropped)."""
    fixed = read(EM_SLICES[0])
    ys, xs = np.mgrid[0 : fixed.shape[0], 0 : fixed.shape[1]].astype(np.float32)
    d = waves(xs, ys, 8, 520, seed).astype(np.float32)
    moving = cv2.remap(fixed, xs - d[..., 0], ys - d[..., 1], cv2.INTER_CUBIC)
    flow = patch_flow(fixed, moving)
    x, y = grid_points(flow)
    truth = waves(x, y, 8, 520, seed)
    for _ in range(50):
        truth = waves(x + truth[..., 0], y + truth[..., 1], 8, 520, seed)
    error = errors(flow, truth)
    assert flow.valid.mean() >= 0.9
    assert np.median(error) <= 0.35
    assert np.percentile(error, 95) <= 0.75


@pytest.mark.parametrize("shift", [(20.4, -13.7), (-26.6, 9.2), (30.0, 8.0)])
def test_shifts_beyond_a_quarter_patch_are_found_through_the_coarse_level(shift):
    assert max(abs(s) for s in shift) > PATCH // 4  # out of the fine level's own search
    fixed = read(EM_SLICES[0])
    flow = patch_flow(fixed, translated(fixed, *shift))
    assert flow.valid.mean() >= 0.85  # the rest lie where the shifted image has no content
    assert errors(flow, shift).max() <= 0.1


@pytest.mark.parametrize("shift", [(33.0, 0.0), (-40.0, 20.0)])
def test_shifts_beyond_the_reach_give_no_vectors_rather_than_wrong_ones(shift):
    assert np.hypot(*shift) > MAX_SHIFT
    fixed = read(EM_SLICES[0])
    flow = patch_flow(fixed, translated(fixed, *shift))
    assert flow.valid.mean() <= 0.05
    assert np.all(errors(flow, shift) <= 0.5)


def test_neighbouring_fib_sem_slices_agree_after_a_translation():
    """iso.03493 and iso.03494 are ~50 px apart; registered by a translation, what is left is small
    and smooth (measured: 93 % valid, |v| median 0.26 px)."""
    fixed, second = read(EM_SLICES[0]), read(EM_SLICES[1])
    (dx, dy), _ = cv2.phaseCorrelate(fixed.astype(np.float32), second.astype(np.float32))
    assert abs(dx) > MAX_SHIFT  # unregistered, the pair is beyond the reach
    moving = translated(second, -dx, -dy)
    flow = patch_flow(fixed, moving)
    length = np.hypot(*flow.vectors[flow.valid].T)
    assert flow.valid.mean() >= 0.85
    assert np.median(length) <= 0.5
    assert np.percentile(length, 95) <= 1.5


def test_unrelated_real_sections_give_almost_no_vectors():
    """Sections 750 nm apart, and TEM against FIB-SEM: EM texture, but nothing in common (measured: no
    vector valid; plain correlation would pass many)."""
    fib_sem = read(EM_SLICES[0])[:512, :512]
    pairs = [(read(ISBI / "00.png"), read(ISBI / "15.png")), (read(ISBI / "07.png"), fib_sem)]
    for fixed, moving in pairs:
        assert patch_flow(fixed, moving).valid.mean() <= 0.05


# ==== filters (synthetic texture) ======================================================================


def test_a_blank_region_gives_no_vectors():
    """Patches wholly blank in the moving image are dropped; those partly blank keep a vector, pulled by
    the part with nothing to match (measured up to 0.31 px)."""
    fixed = texture((320, 320), 1)
    moving = translated(fixed, 1.5, -0.5)
    moving[96:288, 64:256] = 128
    flow = patch_flow(fixed, moving)
    x, y = grid_points(flow)
    inside = (x - PATCH / 2 >= 64) & (x + PATCH / 2 <= 256) & (y - PATCH / 2 >= 96) & (y + PATCH / 2 <= 288)
    apart = (x + PATCH / 2 <= 64) | (x - PATCH / 2 >= 256) | (y + PATCH / 2 <= 96) | (y - PATCH / 2 >= 288)
    assert inside.sum() >= 9 and apart.sum() >= 20
    assert not flow.valid[inside].any()
    assert flow.valid[apart].all()
    assert np.hypot(*(flow.vectors[apart] - (1.5, -0.5)).T).max() <= 0.05
    assert errors(flow, (1.5, -0.5)).max() <= 0.5


@pytest.mark.parametrize("unrelated", ["white noise", "other texture"])
def test_an_unrelated_moving_image_gives_almost_no_vectors(unrelated):
    fixed = texture((320, 320), 1)
    if unrelated == "white noise":
        moving = np.random.default_rng(5).integers(0, 256, fixed.shape, dtype=np.uint8)
    else:
        moving = texture(fixed.shape, 9)
    assert patch_flow(fixed, moving).valid.mean() <= 0.05


def test_pre_warp_fill_gives_no_vectors_and_does_not_bias_the_rest():
    """An 80 px zero band down the left of the moving image: patches more than a quarter zero are
    dropped; the next column, 14 of its 64 columns zero, is measured on its content alone."""
    fixed = texture((320, 320), 1)
    moving = translated(fixed, 2, 1)
    moving[:, :80] = 0
    flow = patch_flow(fixed, moving)
    left = grid_points(flow)[0] - (PATCH - 1) / 2  # the patches' first columns: 0, 32, 64, ...
    assert not flow.valid[left <= 32].any()
    assert flow.valid[left >= 64].all()
    assert errors(flow, (2, 1)).max() <= 0.05


def test_a_corrupted_patch_gives_no_vector_and_leaves_the_others():
    """Unrelated texture pasted over one grid point's patch in the moving image. Its neighbours, which
    share a quarter to a half of their area with it, may stay: they are pulled by the foreign part
    (measured up to 0.83 px)."""
    fixed = texture((384, 384), 2)
    moving = translated(fixed, 1.25, -2.5)
    moving[160:224, 160:224] = texture((64, 64), 7)
    flow = patch_flow(fixed, moving)
    truth = (1.25, -2.5)
    corrupted = (5, 5)  # the grid point whose patch starts at (160, 160)
    x, y = grid_points(flow)
    clear = (np.abs(x - x[corrupted]) >= PATCH) | (np.abs(y - y[corrupted]) >= PATCH)
    assert not flow.valid[corrupted]
    assert flow.valid[clear].all()
    assert np.hypot(*(flow.vectors[clear] - truth).T).max() <= 0.05
    assert errors(flow, truth).max() <= 1.0


# ==== grid geometry ====================================================================================


def test_the_grid_geometry_is_as_documented():
    fixed = texture((200, 300), 3)
    flow = patch_flow(fixed, translated(fixed, 1, 0))
    assert flow.vectors.shape == ((200 - PATCH) // STRIDE + 1, (300 - PATCH) // STRIDE + 1, 2) == (5, 8, 2)
    assert flow.peak.shape == flow.ratio.shape == flow.valid.shape == (5, 8)
    assert flow.vectors.dtype == flow.peak.dtype == flow.ratio.dtype == np.float32
    assert (flow.origin, flow.stride) == ((PATCH - 1) / 2, STRIDE)
    other = patch_flow(fixed, translated(fixed, 1, 0), patch=48, stride=20)
    assert other.vectors.shape == ((200 - 48) // 20 + 1, (300 - 48) // 20 + 1, 2) == (8, 13, 2)
    assert (other.origin, other.stride) == (23.5, 20)
    assert errors(other, (1, 0)).max() <= 0.1 and other.valid.mean() >= 0.9


def test_vectors_belong_to_the_documented_positions():
    """A 5 % scaling about (150, 100) moves each point by 0.05 × its distance from there: a vector
    credited to the wrong position, by half a stride, is off by 0.8 px (measured error: median 0.1 px,
    the scaling inside a patch)."""
    fixed = texture((200, 300), 3)
    scale, centre = 1.05, np.array([150.0, 100.0])
    matrix = np.float32([[scale, 0, centre[0] * (1 - scale)], [0, scale, centre[1] * (1 - scale)]])
    moving = cv2.warpAffine(fixed, matrix, (300, 200), flags=cv2.INTER_CUBIC)
    flow = patch_flow(fixed, moving)
    x, y = grid_points(flow)
    truth = np.stack([(scale - 1) * (x - centre[0]), (scale - 1) * (y - centre[1])], -1)
    assert flow.valid.mean() >= 0.9
    assert np.median(errors(flow, truth)) <= 0.2
    assert errors(flow, truth).max() <= 0.4


def test_an_image_smaller_than_a_patch_gives_an_empty_grid():
    fixed = texture((PATCH - 1, 300), 3)
    flow = patch_flow(fixed, fixed)
    assert flow.vectors.shape == (0, 0, 2) and flow.valid.shape == (0, 0)


def test_a_single_patch_keeps_its_vector():
    """A 1×1 grid has no neighbours to judge by (and no coarse level)."""
    fixed = texture((PATCH, PATCH + 10), 3)
    flow = patch_flow(fixed, np.roll(fixed, 2, axis=0))
    assert flow.vectors.shape == (1, 1, 2)
    assert errors(flow, (0, 2)).size == 1 and errors(flow, (0, 2)).max() <= 0.1


def test_images_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        patch_flow(texture((100, 100), 0), texture((100, 120), 0))


# ==== reading past the edges without a padded copy ======================================================


def test_patches_are_cut_as_from_the_zero_padded_image_wherever_they_lie():
    """Patches are cut from the image as it lies: inside, across its edges or wholly outside, their
    pixels and usable masks are those of the image zero-padded, the mask eroded there as a whole."""
    image = texture((70, 90), 5)
    image[30:33, 40:45] = 0  # a hole: pixels within MASK_MARGIN of it are unusable
    patch, pad = 16, 40
    padded = np.pad(image, pad)
    kernel = np.ones((2 * MASK_MARGIN + 1,) * 2, np.uint8)
    usable = cv2.erode((padded > 0).astype(np.uint8), kernel).view(bool)
    # every 3 px, inside the image, across its edges and wholly outside; offsets of up to 5 px stay in the padding
    starts = [np.arange(5 - pad, side + pad - patch - 5, 3) for side in image.shape]
    tops, lefts = (grid.ravel() for grid in np.meshgrid(*starts, indexing="ij"))
    offsets = np.random.default_rng(0).integers(-5, 6, (len(tops), 2))
    pixels, mask = _Source(image, patch).cut(tops, lefts, offsets)
    for top, left, (dx, dy), cut_pixels, cut_mask in zip(tops, lefts, offsets, pixels, mask):
        rows, cols = slice(pad + top + dy, pad + top + dy + patch), slice(pad + left + dx, pad + left + dx + patch)
        assert np.array_equal(cut_pixels, padded[rows, cols]) and np.array_equal(cut_mask, usable[rows, cols])
    assert not mask.all() and mask.any()


@pytest.mark.parametrize("shape, pad", [((64, 90), 16), ((65, 90), 16), ((64, 91), 16), ((64, 90), 3), ((65, 91), 0)])
def test_the_coarse_level_halves_the_zero_padded_image(shape, pad):
    """Even sides and padding are halved without a padded copy, the rest through one; same pixels."""
    image = texture(shape, 6)
    padded = np.pad(image, pad)
    expected = cv2.resize(padded, (padded.shape[1] // 2, padded.shape[0] // 2), interpolation=cv2.INTER_AREA)
    half, missing = _halved(image, pad)
    assert np.array_equal(np.pad(half, missing), expected)
