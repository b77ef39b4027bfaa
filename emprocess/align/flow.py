"""Patch flow: the displacement field between two roughly aligned EM images, for elastic alignment.

After the affine pre-alignment what is left is local (section stretch, charging, creep), so it is
measured patch by patch: a PATCH² patch of ``fixed`` around each point of a regular grid is correlated
with ``moving`` around the same point.

Conventions (OpenCV: pixel centres at integers). Grid point (i, j) is the centre of the patch whose
top-left pixel is (j·stride, i·stride), i.e. pixel (origin + j·stride, origin + i·stride) with
origin = (patch − 1) / 2; there are (width − patch) // stride + 1 points across. Vectors are (dx, dy)
with fixed(p) ≈ moving(p + v(p)): content that sits 3 px further right in ``moving`` gives v = (+3, 0).
That grid stops half a patch short of the image's edges. With ``edges`` it reaches them: both images
are read as zero-padded by patch // 2 px, so origin = −0.5 and there are width // stride + 1 points
across (for an even patch, whatever its size: passes with different patches share the grid); a patch
on the edge is measured on its part inside (see the content rule), and its vector is that part's.

Method, coarse to fine:
  1. coarse: both images are halved (area average) and patches of the same size, so covering twice the
     area, are correlated on every other grid point; filtered like the result (below), filled in from
     the nearest valid point, interpolated to the full grid and rounded, they say where to cut each
     moving patch at full resolution;
  2. fine: each fixed patch is correlated with the moving patch cut at that integer offset;
  3. sub-pixel: a Lucas–Kanade step (translation; gain and offset normalised; weighted by the window)
     on the moving patch cut at the integer peak, then REFINE_STEPS more on it resampled at the
     estimate with OpenCV's cubic kernel. They converge on the intensity optimum, free of the bias of
     peak interpolation and of the window: on shifted real EM the parabola fit alone is off by
     0.08–0.15 px (median), the steps by 0.01 px (0.03 px when the shift was made by Fourier
     interpolation, whose kernel differs from the one resampling here). Without ``sub_pixel`` the
     steps, and the refinement rule below, are left out: the parabola's vertex stands.
Correlation is normalised cross-correlation of zero-mean, Hann-windowed patches whose spectra are
partly whitened (divided by |F|^WHITENING). Measured on the real EM in ../shared/data, this keeps
FIB-SEM neighbours (peaks ~0.54, 93 % valid) apart from unrelated sections (peaks 0.12–0.13, 95th
percentile ≤ 0.20, nothing valid), where plain correlation's broad peaks on smooth membranes reach
0.3 between unrelated sections and phase correlation (full whitening) loses true matches to noise.
Pixels within MASK_MARGIN px of a zero pixel (pre-warp fill, black regions, outside the image) get no
weight in either step, so a partly filled patch is measured on its content alone.

Reach: each level searches ±patch/4 px of its own resolution (a peak on that border is taken to lie
beyond it), so with two levels shifts just under patch/2 px (32 px for the default patch) are found;
MAX_SHIFT caps the result. Images narrower or shorter than 2·patch have no coarse level: ±patch/4.

Filtering: a vector becomes NaN when
  * content: either patch (the moving one as cut, offset included) has a standard deviation below
    MIN_STD grey levels, or more than MAX_ZERO_FRACTION of zero pixels (pre-warp fill, black regions;
    EDGE_ZERO_FRACTION with ``edges``, so a patch half past the edge, or half over fill, keeps its vector);
  * peak: the correlation peak is below MIN_PEAK, or the highest other local maximum, further than
    EXCLUSION px from it, exceeds MAX_RATIO × the peak (repeated or ambiguous texture), or the peak
    lies on the search border;
  * refinement: the sub-pixel steps moved the estimate more than MAX_REFINEMENT px from the peak
    (they did not settle, as on a single straight edge);
  * size: |v| > MAX_SHIFT;
  * consistency: it differs by more than MAX_DEVIATION px (Euclidean) from the component-wise median
    of its valid 8-neighbours; judging needs MIN_NEIGHBOURS valid neighbours (all the grid offers
    when it offers fewer), and vectors with too few are dropped as isolated: a lone match among
    failures is most likely chance. A 1×1 grid has nothing to judge by and keeps its vector.
    A field curving so fast that it leaves the median of the neighbours by more than MAX_DEVIATION
    (8 px waves ~260 px long do, at STRIDE 32) loses its crests to this rule.

Cost: per grid point, three FFTs of a patch at full resolution and a quarter of that at half, one
cubic resampling; everything is vectorised over CHUNK patches at a time. A 4096² pair (16,129
points) takes ~4 s on one core (measured with another process busy on the second core).
Memory: besides the two images, their halves (a quarter each) and one chunk's patches. Each patch is cut
from the image as it lies, zero outside it, and its usable pixels are found on its own window: a padded
copy or a full-size mask would be 0.4 GB each at 20k × 20k, several per flow.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

PATCH = 64  # px side of a correlated patch, at the resolution the flow is computed on
STRIDE = 32  # px between grid points
MAX_SHIFT = PATCH // 2  # px: largest accepted |v|, the two levels' reach with the default patch
WHITENING = 0.5  # spectra are divided by |F|^WHITENING: 0 is plain correlation, 1 phase correlation
MIN_PEAK = 0.2  # lowest accepted correlation peak (see the measurements above)
MAX_RATIO = 0.7  # highest accepted second peak / peak
EXCLUSION = 4  # px around the peak where other maxima belong to it
MIN_STD = 2.0  # grey levels: a patch with less is featureless
MAX_ZERO_FRACTION = 0.25  # largest share of zero (fill or black) pixels in a patch
EDGE_ZERO_FRACTION = 0.5  # the same with ``edges``: a patch centred on the image's edge is half padding
MAX_REFINEMENT = 1.0  # px the sub-pixel steps may move the estimate away from the correlation peak
MASK_MARGIN = 2  # px: pixels this close to a zero pixel are left out (the cubic kernel's reach, plus a step)
MAX_DEVIATION = 3.0  # px a vector may differ from the median of its valid neighbours
MIN_NEIGHBOURS = 2  # valid neighbours needed to judge (and keep) a vector
REFINE_STEPS = 1  # resampled Lucas–Kanade steps after the one at the integer peak
CUBIC_A = -0.75  # the cubic kernel's parameter, OpenCV's INTER_CUBIC one
CHUNK = 64  # patches processed at once: each temporary (~1 MB) stays in L2 cache, 1.6× faster than 512
EPSILON = 1e-6  # keeps divisions by zero (blank patches) finite


@dataclass(frozen=True)
class Flow:
    """Displacements on a regular grid: point (i, j) sits at pixel (origin + j*stride, origin + i*stride)."""

    origin: float  # px of grid point (0, 0) on both axes: the first patch's centre, (patch - 1) / 2
    stride: int  # px between grid points
    vectors: np.ndarray  # (ny, nx, 2) float32 (dx, dy): fixed(p) ≈ moving(p + v(p)); NaN where invalid
    peak: np.ndarray  # (ny, nx) float32 correlation peak at full resolution (0..1)
    ratio: np.ndarray  # (ny, nx) float32 second-highest local maximum / peak (lower is more distinctive)

    @property
    def valid(self) -> np.ndarray:
        """(ny, nx) bool: where a vector was kept."""
        return ~np.isnan(self.vectors[..., 0])


@dataclass(frozen=True)
class _Level:
    """Per-point results of one level, flat over the grid."""

    vectors: np.ndarray  # (n, 2) float32, px of that level
    peak: np.ndarray  # (n,) float32
    ratio: np.ndarray  # (n,) float32
    trusted: np.ndarray  # (n,) bool: passed the content, peak and refinement rules


def patch_flow(fixed: np.ndarray, moving: np.ndarray, patch: int = PATCH, stride: int = STRIDE,
               max_deviation: float = MAX_DEVIATION, edges: bool = False, sub_pixel: bool = True) -> Flow:
    """The flow of ``fixed`` to ``moving`` (2-D uint8, same shape; ``moving`` pre-warped into the
    frame of ``fixed``, zero where it has no content) on the grid of ``patch``² patches every ``stride``
    px: fixed(p) ≈ moving(p + v(p)), NaN where a filter rejected v. Displacements just under patch/2
    px are reached (patch/4 when the images are smaller than 2·patch); ``max_deviation`` is the
    consistency rule's bound (a pass that a later one checks may be lenient); ``edges`` extends the
    grid to the images' edges; without ``sub_pixel`` the Lucas–Kanade steps are left out (a pass that
    a later one corrects needs no more than the correlation peak); see the module notes."""
    if fixed.shape != moving.shape or fixed.ndim != 2:
        raise ValueError(f"need two 2-D images of one shape, got {fixed.shape} and {moving.shape}")
    pad = patch // 2 if edges else 0  # px of zeros the images are read as padded with
    max_zero = EDGE_ZERO_FRACTION if edges else MAX_ZERO_FRACTION
    height, width = fixed.shape[0] + 2 * pad, fixed.shape[1] + 2 * pad
    ny, nx = max(0, (height - patch) // stride + 1), max(0, (width - patch) // stride + 1)
    origin = (patch - 1) / 2 - pad
    if ny == 0 or nx == 0:
        empty = np.zeros((0, 0), np.float32)
        return Flow(origin, stride, np.zeros((0, 0, 2), np.float32), empty, empty)
    tops = np.repeat(np.arange(ny) * stride, nx) - pad  # image px: the first patches start in the padding
    lefts = np.tile(np.arange(nx) * stride, ny) - pad
    offsets = _coarse_offsets(fixed, moving, pad, patch, stride, (ny, nx), max_deviation, max_zero)
    fine = _measure(fixed, moving, tops, lefts, offsets.reshape(-1, 2), patch, max_zero, refine=sub_pixel)
    vectors = fine.vectors.reshape(ny, nx, 2)
    keep = _accepted(vectors, fine.trusted.reshape(ny, nx), max_deviation)
    vectors = np.where(keep[..., None], vectors, np.nan).astype(np.float32)
    return Flow(origin, stride, vectors, fine.peak.reshape(ny, nx), fine.ratio.reshape(ny, nx))


def _coarse_offsets(fixed: np.ndarray, moving: np.ndarray, pad: int, patch: int, stride: int,
                    grid: tuple[int, int], max_deviation: float, max_zero: float) -> np.ndarray:
    """(ny, nx, 2) int: where to cut each moving patch at full resolution, from the half-resolution
    flow, of the images zero-padded by ``pad``, on every other grid point (zeros when the images are
    too small for a coarse level)."""
    height, width = fixed.shape[0] + 2 * pad, fixed.shape[1] + 2 * pad
    half = (width // 2, height // 2)
    if min(half) < patch:
        return np.zeros((*grid, 2), int)
    (fixed_half, half_pad), (moving_half, _) = _halved(fixed, pad), _halved(moving, pad)
    # coarse point (I, J) is centred on fine point (2I, 2J); half-resolution pixel k on full-resolution 2k + 0.5
    centres = [(patch - 1) / 2 + np.arange(0, count, 2) * stride for count in grid]
    tops, lefts = (np.clip(np.rint((c - 0.5) / 2 - (patch - 1) / 2), 0, size - patch).astype(int) - half_pad
                   for c, size in zip(centres, (half[1], half[0])))
    ny, nx = len(tops), len(lefts)
    coarse = _measure(fixed_half, moving_half, np.repeat(tops, nx), np.tile(lefts, ny),
                      np.zeros((ny * nx, 2), int), patch, max_zero, refine=False)
    vectors = 2 * coarse.vectors.reshape(ny, nx, 2)
    trusted = _accepted(vectors, coarse.trusted.reshape(ny, nx), max_deviation)
    if not trusted.any():
        return np.zeros((*grid, 2), int)
    filled = nearest_filled(vectors, trusted)
    rows, cols = np.meshgrid(np.arange(grid[0]) / 2, np.arange(grid[1]) / 2, indexing="ij")
    offsets = [ndimage.map_coordinates(filled[..., axis], [rows, cols], order=1, mode="nearest") for axis in range(2)]
    return np.clip(np.rint(np.stack(offsets, -1)), -MAX_SHIFT, MAX_SHIFT).astype(int)


def _halved(image: np.ndarray, pad: int) -> tuple[np.ndarray, int]:
    """``image`` zero-padded by ``pad`` px and halved (area average), as an image and the padding it still
    lacks. With even sides and padding each 2×2 block is the image's own or all padding, so the image is
    halved alone, without a full-size padded copy; otherwise a padded copy is halved."""
    height, width = image.shape
    if pad == 0 or (pad % 2 == 0 and height % 2 == 0 and width % 2 == 0):
        return cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA), pad // 2
    padded = np.pad(image, pad)
    return cv2.resize(padded, (padded.shape[1] // 2, padded.shape[0] // 2), interpolation=cv2.INTER_AREA), 0


def nearest_filled(vectors: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """(ny, nx, 2) ``vectors`` with each one not ``kept`` replaced by its nearest kept one."""
    nearest = ndimage.distance_transform_edt(~kept, return_distances=False, return_indices=True)
    return vectors[nearest[0], nearest[1]]


def _accepted(vectors: np.ndarray, trusted: np.ndarray, max_deviation: float) -> np.ndarray:
    """(ny, nx) bool: trusted vectors within MAX_SHIFT that agree with their neighbours."""
    kept = trusted & (np.hypot(vectors[..., 0], vectors[..., 1]) <= MAX_SHIFT)
    return kept & _consistent(vectors, kept, max_deviation)


def _consistent(vectors: np.ndarray, valid: np.ndarray, max_deviation: float) -> np.ndarray:
    """(ny, nx) bool: within ``max_deviation`` px of the median of the valid 8-neighbours, which must
    number MIN_NEIGHBOURS (or all the grid offers, when fewer)."""
    ny, nx = valid.shape
    padded = np.full((ny + 2, nx + 2, 2), np.nan, np.float32)
    padded[1:-1, 1:-1] = np.where(valid[..., None], vectors, np.nan)
    inside = np.zeros((ny + 2, nx + 2), bool)
    inside[1:-1, 1:-1] = True
    around = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    neighbours = np.stack([padded[1 + dy:ny + 1 + dy, 1 + dx:nx + 1 + dx] for dy, dx in around])
    offered = sum(inside[1 + dy:ny + 1 + dy, 1 + dx:nx + 1 + dx].astype(int) for dy, dx in around)
    count = (~np.isnan(neighbours[..., 0])).sum(0)
    judged = np.sort(neighbours, axis=0)  # NaNs last
    low = np.take_along_axis(judged, np.maximum(count - 1, 0)[None, ..., None] // 2, 0)[0]
    high = np.take_along_axis(judged, (count // 2)[None, ..., None], 0)[0]
    median = (low + high) / 2
    close = np.hypot(*(vectors - median).transpose(2, 0, 1)) <= max_deviation
    return np.where(offered == 0, True, close & (count >= np.minimum(MIN_NEIGHBOURS, offered)))


def _measure(fixed: np.ndarray, moving: np.ndarray, tops: np.ndarray, lefts: np.ndarray, offsets: np.ndarray,
             patch: int, max_zero: float, refine: bool) -> _Level:
    """Correlate each fixed patch at (top, left) (image px, the image read as zero outside) with the
    moving patch at (top, left) + offset (int (dx, dy)), CHUNK patches at a time, those more than
    ``max_zero`` zero untrusted; ``refine`` adds the sub-pixel steps."""
    search = patch // 4
    fixed_source, moving_source = _Source(fixed, patch), _Source(moving, patch)
    window = _hann(patch)
    n = len(tops)
    vectors, trusted = np.zeros((n, 2), np.float32), np.zeros(n, bool)
    peak, ratio = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for start in range(0, n, CHUNK):
        part = slice(start, start + CHUNK)
        top, left, offset = tops[part], lefts[part], offsets[part]
        fixed_patches, fixed_usable = fixed_source.cut(top, left, np.zeros_like(offset))
        moving_patches, moving_usable = moving_source.cut(top, left, offset)
        weight = window * (fixed_usable & moving_usable)
        shift, peak[part], ratio[part], inside = _correlate(fixed_patches, moving_patches, weight, search)
        trusted[part] = _has_content(fixed_patches, max_zero) & _has_content(moving_patches, max_zero) & inside
        trusted[part] &= (peak[part] >= MIN_PEAK) & (ratio[part] <= MAX_RATIO)
        estimate = offset + shift
        if refine:
            refined = _refine(fixed_patches, weight, moving_source, top, left, offset + np.rint(shift).astype(int))
            trusted[part] &= np.hypot(*(refined - estimate).T) <= MAX_REFINEMENT
            estimate = refined
        vectors[part] = estimate
    return _Level(vectors, peak, ratio, trusted)


class _Source:
    """Patches of one image, read as zero outside it: their pixels (float32) and which of them are
    usable (further than MASK_MARGIN px from a zero pixel), cut at integer or sub-pixel offsets."""

    def __init__(self, image: np.ndarray, patch: int):
        self.image, self.patch = image, patch

    def cut(self, tops: np.ndarray, lefts: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pixels, usable), each (n, patch, patch), of the patches at (top, left) + integer (dx, dy)."""
        margin, size = MASK_MARGIN, self.patch + 2 * MASK_MARGIN
        windows = self._windows(tops + offsets[:, 1] - margin, lefts + offsets[:, 0] - margin, size)
        usable = windows > 0
        holed = ~usable.all((1, 2))  # most windows hold no zero pixel, so nothing to erode
        if holed.any():
            # eroded stacked, the windows spill into each other only in the margin, which is cut off
            kernel = np.ones((2 * margin + 1,) * 2, np.uint8)
            stacked = usable[holed].view(np.uint8).reshape(-1, size)
            usable[holed] = cv2.erode(stacked, kernel).reshape(-1, size, size).view(bool)
        inner = (slice(None), slice(margin, margin + self.patch), slice(margin, margin + self.patch))
        return windows[inner].astype(np.float32), usable[inner]

    def pixels(self, tops: np.ndarray, lefts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(n, patch, patch) float32: the pixels alone of the patches at (top, left) + integer (dx, dy)."""
        return self._windows(tops + offsets[:, 1], lefts + offsets[:, 0], self.patch).astype(np.float32)

    def resample(self, tops: np.ndarray, lefts: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """(n, patch, patch) float32: the patches at (top, left) + sub-pixel (dx, dy), cubic-interpolated."""
        whole = np.floor(shifts).astype(int)
        fraction = (shifts - whole).astype(np.float32)
        # one pixel before and two after: the cubic kernel's support
        support = self._windows(tops + whole[:, 1] - 1, lefts + whole[:, 0] - 1, self.patch + 3).astype(np.float32)
        taps = np.arange(-1, 3, dtype=np.float32)
        weights_x, weights_y = (_cubic(taps - fraction[:, axis, None])[..., None, None] for axis in range(2))
        size, product = self.patch, np.empty_like(support[:, :self.patch])
        rows = support[:, :size] * weights_y[:, 0]
        for tap in range(1, 4):
            rows += np.multiply(support[:, tap:tap + size], weights_y[:, tap], out=product)
        out = rows[:, :, :size] * weights_x[:, 0]
        for tap in range(1, 4):
            out += np.multiply(rows[:, :, tap:tap + size], weights_x[:, tap], out=product[:, :, :size])
        return out

    def _windows(self, tops: np.ndarray, lefts: np.ndarray, size: int) -> np.ndarray:
        """(n, size, size) in the image's dtype: the windows with top-left pixel (top, left), zero outside
        the image. All are copied as blocks, those reaching outside first moved inside; these (a few,
        along the edges) are then redone one by one."""
        height, width = self.image.shape
        if height < size or width < size:
            windows = np.zeros((len(tops), size, size), self.image.dtype)
        else:
            view = sliding_window_view(self.image, (size, size))
            windows = view[np.clip(tops, 0, height - size), np.clip(lefts, 0, width - size)]
        outside = (tops < 0) | (lefts < 0) | (tops > height - size) | (lefts > width - size)
        for index in np.flatnonzero(outside):
            top, left = int(tops[index]), int(lefts[index])
            bottom, right = min(top + size, height), min(left + size, width)
            windows[index] = 0
            if max(top, 0) < bottom and max(left, 0) < right:
                windows[index, max(-top, 0):bottom - top, max(-left, 0):right - left] = \
                    self.image[max(top, 0):bottom, max(left, 0):right]
        return windows


def _hann(patch: int) -> np.ndarray:
    """(patch, patch) float32 Hann window, positive everywhere."""
    taper = np.hanning(patch + 2)[1:-1]
    return np.outer(taper, taper).astype(np.float32)


def _has_content(patches: np.ndarray, max_zero: float) -> np.ndarray:
    """(n,) bool: standard deviation ≥ MIN_STD and at most ``max_zero`` of the pixels zero."""
    flat = patches.reshape(len(patches), -1)
    mean = flat.mean(1)
    variance = np.einsum("ni,ni->n", flat, flat) / flat.shape[1] - mean * mean
    zero_fraction = 1 - np.count_nonzero(flat, axis=1) / flat.shape[1]
    return (variance >= MIN_STD ** 2) & (zero_fraction <= max_zero)


def _dot(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(n,) the inner product of each pair of patches (a weighted mean, for weights that sum to 1)."""
    return np.einsum("nij,nij->n", first, second)


def _spectra(patches: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Partly whitened spectra of the weighted patches, made zero-mean, and their norms (Parseval)."""
    centred = patches - _dot(patches, weight)[:, None, None]
    centred *= weight
    spectra = scipy.fft.rfft2(centred, workers=1)
    power = spectra.real ** 2 + spectra.imag ** 2
    scale = (power + EPSILON) ** np.float32(-WHITENING / 2)
    spectra *= scale
    power *= scale
    power *= scale  # now that of the whitened spectra
    # the half spectrum stands for each column twice, but for column 0 and (even sizes) the last
    twice = np.full(power.shape[-1], 2, np.float32)
    twice[0] = 1
    if patches.shape[-1] % 2 == 0:
        twice[-1] = 1
    return spectra, np.sqrt(np.einsum("nij,j->n", power, twice)) / patches.shape[-1]


def _correlate(fixed: np.ndarray, moving: np.ndarray, weight: np.ndarray, search: int):
    """Per patch pair: the shift (dx, dy) maximising the normalised correlation within ±search px
    (parabola-refined), the peak, the second-peak ratio, and whether the peak lies inside the border."""
    n, patch = len(fixed), fixed.shape[-1]
    weight = weight / (weight.sum((1, 2), keepdims=True) + EPSILON)
    spectrum_fixed, norm_fixed = _spectra(fixed, weight)
    spectrum_moving, norm_moving = _spectra(moving, weight)
    # surface[s] = Σ_x fixed(x) · moving(x + s), cropped to |s| ≤ search + 1 (index search + 1 is s = 0)
    cross = np.conjugate(spectrum_fixed, out=spectrum_fixed)
    cross *= spectrum_moving
    surface = scipy.fft.irfft2(cross, s=(patch, patch), workers=1)
    reach = search + 1
    wrap = np.arange(-reach, reach + 1) % patch
    surface = surface[:, wrap[:, None], wrap[None, :]] / (norm_fixed * norm_moving + EPSILON)[:, None, None]
    row, col = np.divmod(surface[:, 1:-1, 1:-1].reshape(n, -1).argmax(1), 2 * search + 1)
    row, col, each = row + 1, col + 1, np.arange(n)
    peak = surface[each, row, col]
    dx = _parabola(surface[each, row, col - 1], peak, surface[each, row, col + 1])
    dy = _parabola(surface[each, row - 1, col], peak, surface[each, row + 1, col])
    shift = np.stack([col - reach + dx, row - reach + dy], 1)
    inside = (np.abs(col - reach) < search) & (np.abs(row - reach) < search)
    return shift, peak, _second_peak_ratio(surface, row, col, peak), inside


def _parabola(before: np.ndarray, centre: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Sub-pixel offset of the vertex of the parabola through three samples (0 when not a maximum).
    With the centre the largest the vertex lies within ±0.5; on a flat peak, rounding could put it
    anywhere, so it is clipped there."""
    curvature = before - 2 * centre + after
    offset = np.where(curvature < 0, 0.5 * (before - after) / np.where(curvature < 0, curvature, -1), 0)
    return np.clip(offset, -0.5, 0.5)


def _second_peak_ratio(surface: np.ndarray, row: np.ndarray, col: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """The highest local maximum further than EXCLUSION px from the peak, over the peak (≥ 0)."""
    size = surface.shape[-1]
    core = surface[:, 1:-1, 1:-1]
    maximum = np.ones(core.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                maximum &= core >= surface[:, 1 + dy:size - 1 + dy, 1 + dx:size - 1 + dx]
    index = np.arange(1, size - 1)
    far = (index[:, None] - row[:, None, None]) ** 2 + (index - col[:, None, None]) ** 2 > EXCLUSION ** 2
    second = np.where(maximum & far, core, -np.inf).reshape(len(core), -1).max(1)
    return np.maximum(second, 0) / np.maximum(peak, EPSILON)


def _refine(fixed: np.ndarray, weight: np.ndarray, moving: _Source, tops: np.ndarray, lefts: np.ndarray,
            start: np.ndarray) -> np.ndarray:
    """(n, 2) float32: Lucas–Kanade steps from the integer ``start``, the first on the patch cut there,
    REFINE_STEPS more on the patch resampled at the estimate. Each solves, to first order, for the r
    with moving(p + v) ≈ fixed(p − r), both made zero-mean and unit-norm under ``weight``."""
    weight = weight / (weight.sum((1, 2), keepdims=True) + EPSILON)
    template = fixed - _dot(fixed, weight)[:, None, None]
    template /= np.sqrt(_dot(template * template, weight) + EPSILON)[:, None, None]
    along_x, along_y = _gradients(template)
    weighted = (along_x * weight, along_y * weight)
    xx, xy, yy = _dot(weighted[0], along_x), _dot(weighted[0], along_y), _dot(weighted[1], along_y)
    inverse = np.linalg.inv(np.stack([np.stack([xx + EPSILON, xy], -1), np.stack([xy, yy + EPSILON], -1)], -2))
    weighted_sums = np.stack([w.sum((1, 2)) for w in weighted], -1)
    template_terms = np.stack([_dot(w, template) for w in weighted], -1)
    estimate = start.astype(np.float32)
    for step in range(1 + REFINE_STEPS):
        patches = moving.resample(tops, lefts, estimate) if step else moving.pixels(tops, lefts, start)
        mean = _dot(patches, weight)
        spread = np.sqrt(np.maximum(_dot(patches * patches, weight) - mean ** 2, 0) + EPSILON)
        moving_terms = np.stack([_dot(w, patches) for w in weighted], -1)
        mismatch = (moving_terms - mean[:, None] * weighted_sums) / spread[:, None] - template_terms
        estimate -= np.clip(np.einsum("nab,nb->na", inverse, mismatch), -MAX_REFINEMENT, MAX_REFINEMENT)
    return estimate


def _gradients(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) of each patch by central differences, zero on the patch border."""
    along_x, along_y = np.zeros_like(values), np.zeros_like(values)
    np.subtract(values[:, :, 2:], values[:, :, :-2], out=along_x[:, :, 1:-1])
    np.subtract(values[:, 2:], values[:, :-2], out=along_y[:, 1:-1])
    along_x *= 0.5
    along_y *= 0.5
    return along_x, along_y


def _cubic(distance: np.ndarray) -> np.ndarray:
    """The Keys cubic convolution kernel with parameter CUBIC_A."""
    t = np.abs(distance)
    a = CUBIC_A
    near = (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    far = a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0)).astype(np.float32)
