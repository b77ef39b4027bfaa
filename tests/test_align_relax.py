"""Elastic relaxation (align.relax) on synthetic stacks: smooth random ground-truth displacements, flows
built to agree with them exactly, then noise, holes and block boundaries. No image data."""

from __future__ import annotations

import numpy as np
import pytest

from emprocess.align import relax
from emprocess.align.relax import residuals, sample

SPACING = 32.0  # frame px between grid points
SHAPE = (24, 24)  # grid rows, columns: a 736 px frame
COUNT = 40  # slices in the stack
AMPLITUDE = 8.0  # px: the largest displacement of every ground-truth slice
WAVELENGTH = 260.0  # px: about 8 grid spacings


def smooth_field(rng: np.random.Generator) -> np.ndarray:
    """A random smooth (ny, nx, 2) displacement: four plane waves per component, scaled to AMPLITUDE."""
    rows, columns = np.indices(SHAPE) * SPACING
    field = np.zeros((*SHAPE, 2))
    for component in range(2):
        for angle, phase in rng.uniform(0, 2 * np.pi, (4, 2)):
            wave = 2 * np.pi / WAVELENGTH * np.array([np.cos(angle), np.sin(angle)])
            field[..., component] += np.cos(wave[0] * columns + wave[1] * rows + phase)
    return field * AMPLITUDE / np.hypot(field[..., 0], field[..., 1]).max()


def truth(count: int, seed: int) -> np.ndarray:
    """Ground-truth u* for a stack, (count, ny, nx, 2): slice 0 is the reference, every other slice has its
    own independent distortion."""
    rng = np.random.default_rng(seed)
    return np.array([np.zeros((*SHAPE, 2))] + [smooth_field(rng) for _ in range(count - 1)])


def consistent_flow(u_first: np.ndarray, u_second: np.ndarray) -> np.ndarray:
    """Grid values F with F(g + u_first(g)) = u_second(g) − u_first(g) at every grid point g, F between grid
    points being bilinear exactly as relax evaluates it.

    Sampling the continuous difference field on the grid would not do: bilinear interpolation misses it
    by up to ~1 px at this wavelength. The equations are linear in the grid values and, the points being
    displaced by at most a quarter grid spacing, close to the identity, so the fixed point
    F ← F + (target − F(g + u_first)) converges; it is checked to 1e-9 px."""
    target = u_second - u_first
    rows, columns = np.indices(SHAPE, dtype=np.float64)
    gx, gy = columns + u_first[..., 0] / SPACING, rows + u_first[..., 1] / SPACING
    flow = target.copy()
    for _ in range(500):
        miss = target - sample(flow, gx, gy, relax.MARGIN)
        flow += miss
        if np.abs(miss).max() < 1e-9:
            return flow
    raise AssertionError("the consistent flow did not converge")


def stack_flows(u: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Every pair's exactly consistent flow, keyed (index, reach)."""
    return {(z, k): consistent_flow(u[z], u[z + k]) for z in range(len(u)) for k in (1, 2) if z + k < len(u)}


def with_noise(flows: dict[tuple[int, int], np.ndarray], sigma: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {pair: flow + rng.normal(0, sigma, flow.shape) for pair, flow in flows.items()}


def relaxed(flows: dict[tuple[int, int], np.ndarray | None], count: int, block: int) -> np.ndarray:
    """relax's fields for the whole stack, (count, ny, nx, 2)."""
    return np.array([u for _, u in relax.relax(SHAPE, count, lambda z, k: flows.get((z, k)), block,
                                               spacing=SPACING)])


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.hypot(*np.moveaxis(a - b, -1, 0))


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, dict]:
    u = truth(COUNT, seed=1)
    return u, stack_flows(u)


def test_consistent_flows_recover_the_truth_across_blocks(stack):
    u, flows = stack
    error = distance(relaxed(flows, COUNT, block=8), u)
    # What is left is the in-plane springs' pull towards undistorted slices (IN_PLANE): 0.17 px at p95 here.
    assert np.percentile(error, 95) <= 0.25
    assert error.max() <= 0.5


def without_regularisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """No in-plane or continuity springs: only the flows pull (complete flows keep the system regular)."""
    monkeypatch.setattr(relax, "IN_PLANE", 0.0)
    monkeypatch.setattr(relax, "CONTINUITY", 0.0)


def test_without_regularisation_consistent_flows_are_followed_exactly(stack, monkeypatch):
    u, flows = stack
    without_regularisation(monkeypatch)
    assert distance(relaxed(flows, COUNT, block=8), u).max() <= 0.01


def test_noisy_flows_leave_a_bounded_error(stack):
    u, flows = stack
    error = distance(relaxed(with_noise(flows, 0.3, seed=2), COUNT, block=8), u)
    # σ 0.3 px of independent noise per vector and pair is a random walk along z that the in-plane springs
    # only partly average away: 1.2 px at p95 over the 40 slices (no λ gets below 0.9, see relax's notes).
    assert np.percentile(error, 95) <= 1.5
    assert np.percentile(error[:10], 95) <= 1.0  # 0.75: the walk grows with the distance from the reference


def test_noise_without_motion_does_not_drift():
    count = 30
    zero = {(z, k): np.zeros((*SHAPE, 2)) for z in range(count) for k in (1, 2) if z + k < count}
    still = with_noise(zero, 0.2, seed=3)
    u = relaxed(still, count, block=8)
    assert np.abs(u[-1].mean(axis=(0, 1))).max() <= 0.1  # no systematic drift (measured 0.03 px)
    assert np.percentile(np.hypot(u[..., 0], u[..., 1]), 95) <= 1.0  # each point's own walk: 0.75 px


def test_missing_flows_are_bridged_and_a_bad_slice_follows_its_neighbours(stack):
    u, flows = stack
    flows = dict(flows)
    hole, bad = 12, 21
    flows[hole, 1] = flows[hole, 1].copy()
    flows[hole, 1][5:12, 8:16] = np.nan
    for pair in ((bad - 1, 1), (bad, 1), (bad - 2, 2), (bad, 2)):  # all the bad slice's; (bad - 1, 2) stays
        flows[pair] = None if pair[1] == 1 else np.full((*SHAPE, 2), np.nan)
    got = relaxed(flows, COUNT, block=8)
    error = distance(got, u)
    for index in (hole, hole + 1, bad - 1, bad + 1):  # bridged by the reach-2 flows: at most 0.3 px
        assert error[index].max() <= 0.5, index
    assert np.isfinite(got[bad]).all()
    between = (got[bad - 1] + got[bad + 1]) / 2  # its own distortion is unknowable: 8 px from this
    assert np.percentile(distance(got[bad], between), 95) <= 1.0  # 0.5 px
    # Past the bad slice only one reach-2 flow and the weak continuity hold the stack to what is before,
    # so the in-plane springs pull a little more than elsewhere: 0.24 px.
    assert np.percentile(error[bad + 2:], 95) <= 0.35


def test_a_boundary_crossed_only_by_a_reach_two_flow_is_bridged(stack, monkeypatch):
    u, flows = stack
    without_regularisation(monkeypatch)
    flows = {pair: flow for pair, flow in flows.items() if pair != (7, 1)}  # slice 8 starts the second block
    assert distance(relaxed(flows, COUNT, block=8), u).max() <= 0.01


def test_blocks_agree_with_one_block(stack):
    # Block by block each slice sees only the slices before it; one block also sees those after. With
    # consistent flows the two differ only through the in-plane springs' pull (which vanishes without
    # them, see the tests above); noise adds a fraction of its own size.
    u, flows = stack
    exact = distance(relaxed(flows, COUNT, block=8), relaxed(flows, COUNT, block=COUNT))
    noisy = with_noise(flows, 0.3, seed=4)
    differences = distance(relaxed(noisy, COUNT, block=8), relaxed(noisy, COUNT, block=COUNT))
    assert np.percentile(exact, 95) <= 0.5  # 0.29 px (0.44 on another seed)
    assert np.percentile(differences, 95) <= 1.0  # 0.7 px


def test_residuals_are_zero_for_the_truth_and_the_injected_error_otherwise(stack):
    u, flows = stack
    flow = flows[5, 1].copy()
    assert residuals(u[5], u[6], flow, spacing=SPACING).max() <= 1e-6
    shift = np.random.default_rng(5).normal(0, 1, (*SHAPE, 2))
    injected = np.hypot(shift[..., 0], shift[..., 1])
    assert np.allclose(residuals(u[5], u[6] + shift, flow, spacing=SPACING), injected, atol=1e-6)
    flow[3, 4] = np.nan
    assert np.isnan(residuals(u[5], u[6], flow, spacing=SPACING)[3, 4])


def test_relax_yields_in_order_and_reads_flows_lazily_once(stack):
    _, flows = stack
    calls: list[tuple[int, int, int]] = []  # (index, reach, slices yielded before the call)
    yielded: list[int] = []

    def read(index: int, reach: int) -> np.ndarray | None:
        calls.append((index, reach, len(yielded)))
        return flows.get((index, reach))

    for index, u in relax.relax(SHAPE, COUNT, read, 8, spacing=SPACING):
        assert u.shape == (*SHAPE, 2) and u.dtype == np.float32
        if index == 0:
            assert not u.any()
        yielded.append(index)
    assert yielded == list(range(COUNT))
    assert sorted((index, reach) for index, reach, _ in calls) == sorted(flows)  # every pair, once
    for index, reach, done in calls:  # read while solving the block of index + reach, from the two before it
        start = (index + reach) // 8 * 8
        assert done == start and index >= start - 2


def test_sample_interpolates_extrapolates_within_the_margin_and_propagates_nan():
    rows, columns = np.indices((4, 5), dtype=np.float64)
    field = np.stack([2 * columns + rows, columns - 3 * rows], axis=-1)  # linear: bilinear is exact
    gx, gy = np.array([1.25, 3.9, -0.4, 4.4, 5.6]), np.array([2.5, 0.1, 1.0, 3.3, 1.0])
    expected = np.stack([2 * gx + gy, gx - 3 * gy], axis=-1)
    got = sample(field, gx, gy, margin=0.5)
    assert np.allclose(got[:4], expected[:4])
    assert np.isnan(got[4]).all()  # 1.6 grid units off the grid
    assert np.isnan(sample(field, gx, gy)[2:]).all()  # no margin: off the grid is unknown
    field[2, 1] = np.nan
    assert np.isnan(sample(field, np.array([1.5, 3.0]), np.array([2.5, 0.0]))[0]).all()
    assert np.isfinite(sample(field, np.array([1.5, 3.0]), np.array([2.5, 0.0]))[1]).all()
