"""RANSAC + robust refinement of the two pairwise models: affine and translation.

Thresholds are the reference Fiji job's, in pixels of the image the features were found on (the
callers scale them by the downsample factor): a candidate is an inlier within MAX_EPSILON = 25 px,
and a model counts as found only with ≥ MIN_INLIERS = 20 inliers making up ≥ MIN_INLIER_RATIO = 5 %
of the ratio-test candidates. RANSAC's 25 px tolerance is coarse, so the consensus set is then
refined: refit by least squares and drop inliers whose residual exceeds MAX_TRUST × the median
residual, until stable.

Two guards go beyond the reference, so a chance consensus is never returned as a transform:
  * precision — the refined inliers' RMS residual must be ≤ MAX_RESIDUAL_FRACTION × epsilon (5 px):
    matches that agree only by chance scatter over the whole 25 px tolerance (measured RMS 9–17 px
    between the ISBI serial sections) while true correspondences agree to about a pixel;
  * plausibility — an affine whose singular values leave SCALE_RANGE (halving or doubling lengths)
    is a lock onto repeated texture, never a change between neighbouring slices.

A consensus that fails only the precision guard is still used, flagged ``deformed``, when it cannot be
chance: at least DEFORMED_MIN_INLIERS inliers making up DEFORMED_MIN_RATIO of the candidates, whose
residuals are smooth — each differs from the median residual of its DEFORMED_NEIGHBOURS nearest
inliers by an RMS within the precision bound. That is a real local deformation (charging, creep, a
stretched section) that no affine follows: the best fit is far better than identity, and the pair is
named so the user knows. Chance matches between unrelated sections have scattered residuals and far
fewer inliers (the ISBI neighbours: 4–7 of ~2,000), so they still find nothing.
Everything is seeded, so the same candidates always give the same models.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MAX_EPSILON = 25.0
MIN_INLIERS = 20
MIN_INLIER_RATIO = 0.05
MAX_TRUST = 4.0
MAX_RESIDUAL_FRACTION = 0.2
REFINE_ROUNDS = 20
DEFORMED_MIN_INLIERS = 100
DEFORMED_MIN_RATIO = 0.2
DEFORMED_NEIGHBOURS = 8
SCALE_RANGE = (0.5, 2.0)
RANSAC_ITERATIONS = 40_000  # finds a 5 % inlier set with 3-point samples at > 99 % confidence
RANSAC_SAMPLE = 5_000  # RANSAC scores hypotheses on at most this many candidates, then refines on all
TRANSLATION_HYPOTHESES = 500  # 1-point samples: a 5 % inlier set is missed with p = 0.95^500 ≈ 1e-11


@dataclass(frozen=True)
class ModelFit:
    """A fitted model: ``matrix`` (2×3, maps source into destination pixels) is None when not found.

    ``inliers`` and ``residual_px`` (RMS inlier residual) describe the best consensus even when it
    was rejected, so reports can show how close a failed pair came. ``deformed``: found although its
    residual fails the precision guard, because the residual is a smooth deformation (module doc);
    ``local_residual_px`` is the RMS of what the residuals' local medians leave.
    """

    found: bool
    matrix: np.ndarray | None
    inliers: int
    residual_px: float
    deformed: bool = False
    local_residual_px: float | None = None

    def to_json(self) -> dict:
        return {
            "found": self.found,
            "matrix": None if self.matrix is None else self.matrix.tolist(),
            "inliers": self.inliers,
            "residual_px": self.residual_px,
            "deformed": self.deformed,
            "local_residual_px": self.local_residual_px,
        }


NOT_FOUND = ModelFit(False, None, 0, 0.0)


def fit_affine(src: np.ndarray, dst: np.ndarray, epsilon: float = MAX_EPSILON) -> ModelFit:
    """The affine mapping candidate points ``src`` (N×2) onto ``dst``; inliers lie within ``epsilon``."""
    if len(src) < 3:
        return NOT_FOUND
    sample = _sample(len(src), RANSAC_SAMPLE)
    cv2.setRNGSeed(0)
    matrix, _ = cv2.estimateAffine2D(
        src[sample], dst[sample], method=cv2.RANSAC, ransacReprojThreshold=epsilon,
        maxIters=RANSAC_ITERATIONS, confidence=0.999, refineIters=10,
    )
    if matrix is None:
        return NOT_FOUND
    fit, keep = _refine(src, dst, matrix, epsilon, _least_squares_affine, minimum=3)
    plausible = fit.matrix is not None and _plausible_scale(fit.matrix)
    return _judge(fit, src[keep], dst[keep], len(src), epsilon, plausible)


def fit_translation(src: np.ndarray, dst: np.ndarray, epsilon: float = MAX_EPSILON) -> ModelFit:
    """The translation mapping ``src`` onto ``dst``: 1-point RANSAC over the displacements."""
    if len(src) == 0:
        return NOT_FOUND
    shifts = dst - src
    hypotheses = shifts[_sample(len(src), TRANSLATION_HYPOTHESES)]
    scored = shifts[_sample(len(src), RANSAC_SAMPLE)]
    support = [int((np.hypot(*(scored - h).T) <= epsilon).sum()) for h in hypotheses]
    best = hypotheses[int(np.argmax(support))]
    start = np.array([[1.0, 0.0, best[0]], [0.0, 1.0, best[1]]])
    fit, keep = _refine(src, dst, start, epsilon, _mean_translation, minimum=1)
    return _judge(fit, src[keep], dst[keep], len(src), epsilon, plausible=True)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map N×2 points through a 2×3 or 3×3 affine matrix."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _sample(count: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` of ``count`` candidates, seeded and sorted (all when fewer)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def _refine(src, dst, matrix, epsilon: float, solve, minimum: int) -> tuple[ModelFit, np.ndarray]:
    """Refit on the consensus set, dropping residuals above MAX_TRUST × median until it is stable;
    the fit and its inliers' mask."""
    residuals = np.hypot(*(apply(matrix, src) - dst).T)
    consensus = residuals <= epsilon
    keep = consensus
    for _ in range(REFINE_ROUNDS):
        if keep.sum() < minimum:
            return ModelFit(False, None, int(keep.sum()), 0.0), keep
        matrix = solve(src[keep], dst[keep])
        residuals = np.hypot(*(apply(matrix, src) - dst).T)
        updated = consensus & (residuals <= MAX_TRUST * np.median(residuals[keep]))
        if np.array_equal(updated, keep):
            break
        keep = updated
    return ModelFit(True, matrix, int(keep.sum()), float(np.sqrt(np.mean(residuals[keep] ** 2)))), keep


def _plausible_scale(matrix: np.ndarray) -> bool:
    singular = np.linalg.svd(matrix[:, :2], compute_uv=False)
    return bool(SCALE_RANGE[0] <= singular.min() and singular.max() <= SCALE_RANGE[1])


def _judge(fit: ModelFit, src: np.ndarray, dst: np.ndarray, candidates: int, epsilon: float,
           plausible: bool) -> ModelFit:
    """Apply the acceptance thresholds to the fit of inliers ``src`` → ``dst``; a rejected fit keeps
    its counts but loses its matrix."""
    bound = MAX_RESIDUAL_FRACTION * epsilon
    consensus = (
        fit.matrix is not None
        and plausible
        and fit.inliers >= MIN_INLIERS
        and fit.inliers >= MIN_INLIER_RATIO * candidates
    )
    if consensus and fit.residual_px <= bound:
        return fit
    if consensus and fit.inliers >= max(DEFORMED_MIN_INLIERS, DEFORMED_MIN_RATIO * candidates):
        local = local_residual(src, apply(fit.matrix, src) - dst)
        if local <= bound:
            return ModelFit(True, fit.matrix, fit.inliers, fit.residual_px, True, local)
    return ModelFit(False, None, fit.inliers, fit.residual_px)


def local_residual(points: np.ndarray, residuals: np.ndarray) -> float:
    """RMS of each residual vector's difference from the median residual of its nearest neighbours:
    near 0 for a smooth deformation field, as large as the residuals for scattered chance matches."""
    from scipy.spatial import cKDTree

    k = min(DEFORMED_NEIGHBOURS, len(points) - 1)
    _, neighbours = cKDTree(points).query(points, k=k + 1)
    local = np.median(residuals[neighbours[:, 1:]], axis=1)  # the first neighbour is the point itself
    return float(np.sqrt(np.mean(np.sum((residuals - local) ** 2, axis=1))))


def _least_squares_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    design = np.column_stack([src, np.ones(len(src))])
    solution, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return solution.T


def _mean_translation(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    shift = (dst - src).mean(axis=0)
    return np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
