"""ChunkedGraph ingest of real EM labels (ISBI 2012, 512×512×30): roots and flattened layer = linked bodies.

Supervoxels are the 2D connected components of the cell interior (255) of each slice; components
of consecutive slices overlapping by ≥ 50 % of the smaller one are linked, and the bodies are the
connected components of those links.
"""

from __future__ import annotations

from pathlib import Path

import cc3d
import cloudvolume
import cv2
import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from support.chunkedgraph import make_context, read_labels, run_graph, same_partition, voxel_roots, write_volume

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "label"


def isbi_supervoxels() -> np.ndarray:
    """(x, y, z) uint32 supervoxels, ids unique across slices."""
    slices, next_id = [], 0
    for path in sorted(LABELS.glob("*.png")):
        interior = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).T == 255
        components = cc3d.connected_components(interior, connectivity=4).astype(np.uint32)
        slices.append(np.where(components != 0, components + next_id, 0))
        next_id += int(components.max())
    return np.stack(slices, axis=2)


def linked_bodies(supervoxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(supervoxel ids, body per supervoxel) from ≥ 50 % overlaps of consecutive slices."""
    ids, sizes = np.unique(supervoxels, return_counts=True)
    ids, sizes = ids[1:], sizes[1:]
    links = []
    for z in range(supervoxels.shape[2] - 1):
        a, b = supervoxels[:, :, z].reshape(-1), supervoxels[:, :, z + 1].reshape(-1)
        both = (a != 0) & (b != 0)
        pairs, overlap = np.unique(np.stack([a[both], b[both]], axis=1), axis=0, return_counts=True)
        ia, ib = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
        linked = overlap >= 0.5 * np.minimum(sizes[ia], sizes[ib])
        links.append(np.stack([ia[linked], ib[linked]], axis=1))
    links = np.concatenate(links)
    matrix = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(ids.size, ids.size))
    return ids, connected_components(matrix, directed=False)[1] + 1


@pytest.fixture(scope="module")
def isbi_graph(tmp_path_factory):
    if not LABELS.is_dir():
        pytest.skip(f"{LABELS} is not available")
    tmp_path = tmp_path_factory.mktemp("isbi")
    supervoxels = isbi_supervoxels()
    ids, bodies = linked_bodies(supervoxels)
    np.save(tmp_path / "bodies.npy", np.stack([ids, bodies], axis=1).astype(np.uint64))
    watershed = write_volume(f"file://{tmp_path}/watershed", supervoxels, chunk=(100, 100, 10), resolution=(4, 4, 50))
    table = f"file://{tmp_path}/bodies.npy"
    segmentation = {"watershed": watershed, "agglomeration": table, "chunk_size": [128, 128, 16]}
    ctx = make_context(tmp_path, segmentation, depth=supervoxels.shape[2])
    results = run_graph(ctx)
    expected = np.zeros(supervoxels.shape, dtype=np.int64)
    expected[supervoxels != 0] = bodies[np.searchsorted(ids, supervoxels[supervoxels != 0])]
    return ctx, expected, results


def test_isbi_data_is_realistic(isbi_graph):
    _, expected, results = isbi_graph
    assert results["cg.meta"]["meta"]["n_layers"] == 4
    assert np.unique(expected).size > 600  # bodies
    first, last = np.full(expected.max() + 1, expected.shape[2]), np.zeros(expected.max() + 1, dtype=int)
    for z in range(expected.shape[2]):
        present = np.unique(expected[:, :, z])
        first[present] = np.minimum(first[present], z)
        last[present] = z
    assert (first[1:] // 16 != last[1:] // 16).sum() >= 30  # bodies crossing the z chunk boundary
    assert (last[1:] - first[1:] == expected.shape[2] - 1).sum() >= 2  # and some the whole stack


def test_isbi_root_partition_equals_the_linked_bodies(isbi_graph):
    ctx, expected, _ = isbi_graph
    assert same_partition(voxel_roots(ctx), expected)


def test_isbi_flattened_layer_matches_body_labels_voxel_for_voxel(isbi_graph):
    ctx, expected, results = isbi_graph
    flattened = read_labels(ctx.locations.segmentation)
    assert flattened.shape == expected.shape
    assert same_partition(flattened, expected)
    assert results["cg.flatten"]["0_0_0"]["scales"] == 4


def test_isbi_flattened_layer_reads_in_cloudvolume(isbi_graph):
    ctx, _, _ = isbi_graph
    volume = cloudvolume.CloudVolume(ctx.locations.segmentation, mip=0, progress=False)
    assert volume.layer_type == "segmentation" and volume.encoding == "compressed_segmentation"
    assert np.array_equal(np.asarray(volume[:, :, :])[..., 0], read_labels(ctx.locations.segmentation))
    coarse = cloudvolume.CloudVolume(ctx.locations.segmentation, mip=3, progress=False)
    assert list(coarse.shape[:3]) == [64, 64, 30]
    assert set(np.unique(coarse[:, :, :])) <= set(np.unique(read_labels(ctx.locations.segmentation)))
