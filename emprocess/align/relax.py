"""Elastic alignment: relax one displacement field per slice so that neighbouring slices agree.

Conventions. Every slice is affinely pre-aligned into one output frame. Grid point (i, j) sits at frame
pixel (j·S, i·S) (S = ``spacing``); a field is an (ny, nx, 2) array of (dx, dy) in frame px. The flow
F[z, k] (k = 1, 2) says prealigned_z(g) ≈ prealigned_{z+k}(g + F(g)), NaN where unknown. The unknown u_z
gives the elastic output out_z(g) = prealigned_z(g + u_z(g)); out_z = out_{z+k} asks
u_{z+k}(g) = u_z(g) + F[z, k](g + u_z(g)), F between grid points being bilinear in grid units (NaN when a
neighbour is NaN, or the point is more than MARGIN off the grid). Slice 0 is the reference: u_0 = 0.
Indices run 0..count-1; the caller maps them to z.

Energy, quadratic once F is evaluated (x and y decouple and share one matrix):
    Σ w_k |u_{z+k}(g) − u_z(g) − F̃[z, k](g)|²    zero-length springs between sections (REACH_WEIGHTS)
  + λ Σ |u_z(g) − u_z(h)|² over 4-neighbours g~h   in-plane springs (IN_PLANE): sections resist deforming
  + ε Σ |u_{z+1}(g) − u_z(g)|²                     z continuity (CONTINUITY): what has no flow follows its
                                                   neighbours, and the system is never singular
F̃ is F evaluated at g + u_z(g) of the previous solve. The first solve starts from a chain estimate
(u_{z+1} = u_z + F[z, 1](g + u_z), else the reach-2 flow, else u_z): exact for consistent flows and close
for real ones, so even large accumulated displacements are in reach and ITERATIONS = 3 solves converge
(on the tests' stack a 4th changes nothing; starting from F at g, one solve leaves 1.3 px, not 0.17).
Which springs exist is fixed at that first evaluation (where F later falls on NaN, the previous F̃ stays),
so the matrix, and its factorised preconditioner, serve every iteration of a block.

Blocks. Slices are solved BLOCK at a time. The unknowns are the block's slices; the up to two solved
slices before it (or the reference) are known, and springs from them go to the right-hand side. Flows
from the block to slices past its end are not used by this block: they belong to the next one, where they
link its unknowns to its known slices. So ``flows`` is read once per pair, lazily, and only the block
plus two solved slices are held. A block does not see the slices after it, unlike one block for the whole
stack: on the tests' stack the two differ by 0.3 px p95 with consistent flows (the in-plane springs' pull
spreads differently) and 0.7 px with σ 0.3 px flow noise (one block averages noise from both sides).

Parameters, measured on the tests' stack (40 slices, each with its own smooth distortion of up to 8 px
at a 260 px wavelength, 19 % strain at most, flows on a 32 px grid):
  * λ = 0.005. The in-plane springs pull every slice towards its pre-aligned shape: with exact flows the
    error is 0.11, 0.17, 0.29, 0.64 px (p95) at λ = 0.003, 0.005, 0.01, 0.03; with σ 0.3 px of
    independent noise per flow vector it is 1.3, 1.2, 1.0, 0.9 px (a random walk along z that the springs
    only partly average). 0.005 is the largest that keeps the exact error well under 0.25 px; real
    distortions are smoother, which shrinks the pull (∝ λ × curvature) so that a larger λ would also do.
  * ε = 0.01: a slice with no flow at all then follows the mean of its neighbours to 0.5 px (p95); at
    0.001 the in-plane springs flatten it 2.3 px towards its pre-aligned shape. Elsewhere it costs < 0.01 px.
  * MARGIN = 0.5 grid units: a border point displaced off the grid would lose its springs and drift with
    its neighbours (2–7 px off in the tests); F extrapolated from the border cell keeps it as good as the
    interior. ``sample`` itself gives NaN off the grid unless asked for a margin.

Solver. Preconditioned conjugate gradients, both components at once. The preconditioner is the matrix
without its in-plane couplings: ordered point-major, slice-minor it is banded (half-bandwidth 2), so its
Cholesky factor costs O(unknowns), once per block. It holds the stiff z springs exactly and leaves ~9 CG
iterations per solve. A sparse LU of a block (a 3-D mesh) fills in: 40×40 points × 32 slices already take
1 GB and 19 s (SuperLU, MMD ordering), 80×80 × 32 more than 6 GB. Measured for 160×160 points, 64 slices,
blocks of 32: 8 s of one core and 200 MB of arrays at the peak (270 MB resident with the imports).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve_banded, cholesky_banded

BLOCK = 32  # slices solved together
ITERATIONS = 3  # solves per block, F re-evaluated at the displaced grid before each
IN_PLANE = 0.005  # λ: in-plane spring weight, relative to the reach-1 section springs (module notes)
CONTINUITY = 0.01  # ε: z continuity spring weight, everywhere between consecutive slices (module notes)
REACH_WEIGHTS = {1: 1.0, 2: 0.5}  # w_k: section spring weight for flows reaching k slices ahead
MARGIN = 0.5  # grid units off the grid within which F is extrapolated from the border cell
CG_TOLERANCE = 1e-6  # conjugate gradients stop at this residual, relative to the right-hand side
CG_LIMIT = 500  # conjugate gradient iterations at most per solve (a safeguard: ~9 are needed)

log = logging.getLogger("emprocess.align")


def relax(shape: tuple[int, int], count: int, flows: Callable[[int, int], np.ndarray | None],
          block: int = BLOCK, *, spacing: float) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, u) for slice indices 0..count-1 in order, u (ny, nx, 2) float32 (index 0: zeros).

    ``flows(index, k)`` returns F for slice index→index+k (frame grid, NaN where unknown) or None when that
    pair has no flow; it is called once per pair, for the block being solved, so a caller can read flows
    lazily from storage. ``spacing`` is S, the grid spacing in frame px."""
    known = {0: np.zeros((*shape, 2))}  # solved slices the next block links to (at most two)
    for start in range(0, count, block):
        slices = range(max(start, 1), min(start + block, count))
        solved = _solve_block(shape, known, slices, flows, spacing) if slices else {}
        if start == 0:
            yield 0, np.zeros((*shape, 2), np.float32)
        for index in slices:
            yield index, solved[index].astype(np.float32)
        known = {index: u for index, u in {**known, **solved}.items() if index >= slices.stop - 2}


def residuals(u_first: np.ndarray, u_second: np.ndarray, flow: np.ndarray, *, spacing: float) -> np.ndarray:
    """Per grid point |u_second(g) − u_first(g) − F(g + u_first(g))| (NaN where F is unknown): what a pair's
    elastic alignment leaves, for the report."""
    miss = u_second - u_first - _displaced(flow, u_first, spacing)
    return np.hypot(miss[..., 0], miss[..., 1])


def sample(field: np.ndarray, gx: np.ndarray, gy: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Bilinear value of an (ny, nx, C) field at fractional grid coordinates (column gx, row gy), NaN when
    any of the four neighbours is NaN. Points up to ``margin`` grid units off the grid are extrapolated
    from the border cell; points further out are NaN."""
    ny, nx = field.shape[:2]
    inside = (gx >= -margin) & (gx <= nx - 1 + margin) & (gy >= -margin) & (gy <= ny - 1 + margin)
    gx, gy = np.where(inside, gx, 0.0), np.where(inside, gy, 0.0)
    column = np.clip(np.floor(gx).astype(int), 0, max(nx - 2, 0))
    row = np.clip(np.floor(gy).astype(int), 0, max(ny - 2, 0))
    fx, fy = (gx - column)[..., None], (gy - row)[..., None]
    right, below = np.minimum(column + 1, nx - 1), np.minimum(row + 1, ny - 1)
    value = ((1 - fy) * ((1 - fx) * field[row, column] + fx * field[row, right])
             + fy * ((1 - fx) * field[below, column] + fx * field[below, right]))
    return np.where(inside[..., None], value, np.nan)


def _displaced(flow: np.ndarray, u: np.ndarray, spacing: float) -> np.ndarray:
    """F at every grid point g displaced by u(g) (frame px)."""
    rows, columns = np.indices(flow.shape[:2], dtype=np.float64)
    return sample(flow, columns + u[..., 0] / spacing, rows + u[..., 1] / spacing, MARGIN)


@dataclass
class _Spring:
    """The springs from slice ``low`` to slice low + ``reach`` at every grid point."""

    low: int
    reach: int
    flow: np.ndarray | None  # F[low, reach] on the grid; None when the pair has none
    exists: np.ndarray  # (ny, nx) bool: where the spring to the flow exists (fixed at the first evaluation)
    pull: np.ndarray  # (ny, nx, 2): the current F̃, 0 where there is no spring

    @classmethod
    def read(cls, flows: Callable[[int, int], np.ndarray | None], low: int, reach: int, u_low: np.ndarray,
             spacing: float) -> _Spring:
        """Read the pair's flow and evaluate it at the grid displaced by ``u_low``."""
        flow = flows(low, reach)
        if flow is None:
            return cls(low, reach, None, np.zeros(u_low.shape[:2], bool), np.zeros_like(u_low))
        flow = np.asarray(flow, np.float32)
        pull = _displaced(flow, u_low, spacing)
        exists = np.isfinite(pull).all(axis=-1)
        return cls(low, reach, flow, exists, np.where(exists[..., None], pull, 0.0))

    @property
    def high(self) -> int:
        return self.low + self.reach

    @property
    def flow_weight(self) -> np.ndarray:
        return np.where(self.exists, REACH_WEIGHTS[self.reach], 0.0)

    @property
    def weight(self) -> np.ndarray:
        """The total stiffness between the two slices: the flow spring plus, at reach 1, continuity."""
        return self.flow_weight + (CONTINUITY if self.reach == 1 else 0.0)

    def update(self, u_low: np.ndarray, spacing: float) -> None:
        """Re-evaluate F̃ at the displaced grid; where that falls on NaN the previous value stays."""
        if self.flow is not None:
            pull = _displaced(self.flow, u_low, spacing)
            found = np.isfinite(pull).all(axis=-1) & self.exists
            self.pull = np.where(found[..., None], pull, self.pull)


class _Block:
    """One block's unknowns and matrix. The unknowns are x, (2, ny, nx, slices): component-major, then
    point-major, slice-minor, so the z springs sit within two diagonals of each component's vector."""

    def __init__(self, shape: tuple[int, int], known: dict[int, np.ndarray], slices: range):
        self.known, self.slices = known, slices
        self.x = np.zeros((2, *shape, len(slices)))
        # The matrix without its in-plane couplings, in LAPACK's upper banded storage: row 2 the diagonal,
        # rows 1 and 0 the coupling of each slice with the one and two before it (0 across grid points).
        self.bands = np.zeros((3, *shape, len(slices)))
        self.bands[2] = IN_PLANE * _neighbour_sum(np.ones(shape))[..., None]
        self.anchor = np.zeros_like(self.x)  # right-hand side from springs to known slices
        self.factor: np.ndarray | None = None

    def u(self, index: int) -> np.ndarray:
        """Slice index's current u, (ny, nx, 2)."""
        if index in self.known:
            return self.known[index]
        return np.moveaxis(self.x[..., index - self.slices.start], 0, -1)

    def set(self, index: int, u: np.ndarray) -> None:
        self.x[..., index - self.slices.start] = np.moveaxis(u, -1, 0)

    def add(self, spring: _Spring) -> None:
        """Add one spring set's stiffness (and its known end's pull) to the matrix."""
        high = spring.high - self.slices.start
        self.bands[2, ..., high] += spring.weight
        if spring.low in self.known:
            self.anchor[..., high] += spring.weight * np.moveaxis(self.known[spring.low], -1, 0)
        else:
            self.bands[2, ..., high - spring.reach] += spring.weight
            self.bands[2 - spring.reach, ..., high] -= spring.weight

    def right_hand_side(self, springs: list[_Spring]) -> np.ndarray:
        rhs = self.anchor.copy()
        for spring in springs:
            pull = np.moveaxis(spring.flow_weight[..., None] * spring.pull, -1, 0)
            rhs[..., spring.high - self.slices.start] += pull
            if spring.low not in self.known:
                rhs[..., spring.low - self.slices.start] -= pull
        return rhs

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The matrix times x."""
        y = self.bands[2] * x - IN_PLANE * _neighbour_sum(x, first=1)
        flat, out, bands = x.reshape(2, -1), y.reshape(2, -1), self.bands.reshape(3, -1)
        for step in (1, 2):
            coupling = bands[2 - step, step:]
            out[:, step:] += coupling * flat[:, :-step]
            out[:, :-step] += coupling * flat[:, step:]
        return y

    def precondition(self, r: np.ndarray) -> np.ndarray:
        """Solve with the matrix without its in-plane couplings (banded; factorised once)."""
        if self.factor is None:
            self.factor = cholesky_banded(self.bands.reshape(3, -1), lower=False, check_finite=False)
        return cho_solve_banded((self.factor, False), r.reshape(2, -1).T, check_finite=False).T.reshape(r.shape)

    def solve(self, rhs: np.ndarray) -> None:
        """Preconditioned conjugate gradients from the current x, the two components independently."""
        x = self.x
        r = rhs - self.apply(x)
        z = self.precondition(r)
        p, rz = z.copy(), _dot(r, z)
        limit = CG_TOLERANCE * np.maximum(np.sqrt(_dot(rhs, rhs)), np.sqrt(_dot(r, r)))
        for _ in range(CG_LIMIT):
            if (np.sqrt(_dot(r, r)) <= limit).all():
                return
            q = self.apply(p)
            pq = _dot(p, q)
            alpha = np.divide(rz, pq, out=np.zeros(2), where=pq > 0)[:, None, None, None]
            x += alpha * p
            r -= alpha * q
            z = self.precondition(r)
            rz, previous = _dot(r, z), rz
            p = z + np.divide(rz, previous, out=np.zeros(2), where=previous > 0)[:, None, None, None] * p
        log.warning("slices %d-%d: conjugate gradients stopped after %d iterations, the residual still %s × "
                    "the tolerance", self.slices.start, self.slices.stop - 1, CG_LIMIT,
                    np.round(np.sqrt(_dot(r, r)) / limit, 1))


def _solve_block(shape: tuple[int, int], known: dict[int, np.ndarray], slices: range,
                 flows: Callable[[int, int], np.ndarray | None], spacing: float) -> dict[int, np.ndarray]:
    block = _Block(shape, known, slices)
    springs: list[_Spring] = []
    for index in slices:  # read the flows reaching each slice, and start it from the chain estimate
        arriving = [_Spring.read(flows, index - k, k, block.u(index - k), spacing)
                    for k in REACH_WEIGHTS if index - k >= 0]
        block.set(index, _chained(block, index, arriving))
        springs += arriving
    for spring in springs:
        block.add(spring)
    for iteration in range(ITERATIONS):
        if iteration:
            for spring in springs:
                spring.update(block.u(spring.low), spacing)
        block.solve(block.right_hand_side(springs))
    return {index: block.u(index).copy() for index in slices}


def _chained(block: _Block, index: int, arriving: list[_Spring]) -> np.ndarray:
    """Slice index's starting u: a lower slice's u plus its flow to index (reach 1 preferred, then 2),
    else the predecessor's u."""
    estimate = block.u(index - 1)
    for spring in sorted(arriving, key=lambda spring: -spring.reach):
        estimate = np.where(spring.exists[..., None], block.u(spring.low) + spring.pull, estimate)
    return estimate


def _neighbour_sum(x: np.ndarray, first: int = 0) -> np.ndarray:
    """The sum of x over every grid point's 4-neighbours, the grid's axes being ``first`` and the next."""
    y = np.zeros_like(x)
    for axis in (first, first + 1):
        head, tail = ([slice(None)] * x.ndim for _ in range(2))
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        y[tuple(head)] += x[tuple(tail)]
        y[tuple(tail)] += x[tuple(head)]
    return y


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products of the x and the y components (the first axis)."""
    return np.einsum("ij,ij->i", a.reshape(2, -1), b.reshape(2, -1))
