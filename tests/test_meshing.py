"""Multi-resolution meshes of the graph's bodies, read back with CloudVolume (a third-party reader).

The graph is built in-process (as in the chunkedgraph tests) on a volume whose chunks do not divide
it and whose voxel_offset is not zero, then the meshing stages run layer by layer, then shard by shard.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cloudvolume import CloudVolume
from support.chunkedgraph import graph_of_bodies, read_labels, run_stage

from emprocess import storage
from emprocess.chunkedgraph.meta import read_meta
from emprocess.meshing.layout import mesh_url, read_sharding
from emprocess.meshing.levels import finish_layer
from emprocess.meshing.stages import STAGES

SHAPE, OFFSET, RESOLUTION, CHUNK = (90, 70, 40), (3, 5, 7), (8, 8, 10), (32, 32, 16)


@pytest.fixture(scope="module")
def meshed(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("meshing")
    ctx, supervoxels = graph_of_bodies(tmp_path, SHAPE, 60, 1, CHUNK, ("chunkedgraph", "meshing"), RESOLUTION, OFFSET)
    results = {stage.name: run_stage(ctx, stage) for stage in STAGES}
    labels = read_labels(ctx.locations.segmentation)
    cv = CloudVolume("precomputed://" + ctx.locations.segmentation, progress=False)
    return ctx, labels, cv, results


def roots_of(labels: np.ndarray) -> list[int]:
    return [int(r) for r in np.unique(labels) if r]


def edge_uses(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """How many triangles use each edge, once coincident vertices are merged."""
    _, merged = np.unique(np.round(vertices, 3), axis=0, return_inverse=True)
    faces = merged.reshape(-1)[faces]
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(edges, axis=0, return_counts=True)[1]


def closed(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """Every edge in exactly two triangles."""
    return bool(len(faces)) and bool((edge_uses(vertices, faces) == 2).all())


def enclosed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


def test_every_body_has_a_closed_mesh_around_its_voxels(meshed):
    ctx, labels, cv, _ = meshed
    assert cv.info["mesh"] == "mesh" and cv.mesh.meta.info["@type"] == "neuroglancer_multilod_draco"
    resolution = np.array(RESOLUTION, float)
    roots = roots_of(labels)
    assert len(roots) > 40
    for root in roots:
        voxels = np.argwhere(labels == root)
        corner_lo = (voxels.min(axis=0) + OFFSET) * resolution
        corner_hi = (voxels.max(axis=0) + 1 + OFFSET) * resolution
        mesh = cv.mesh.get(root, lod=0)[root]
        assert closed(mesh.vertices, mesh.faces), root
        assert np.allclose(mesh.vertices.max(axis=0), corner_hi, atol=0.05), root
        # on the volume's low faces the closing half-voxel is flattened onto the first voxel centres
        low_face = voxels.min(axis=0) == 0
        expected_lo = corner_lo + np.where(low_face, resolution / 2, 0)
        assert np.allclose(mesh.vertices.min(axis=0), expected_lo, atol=0.05), root
        if len(voxels) >= 1000:
            volume = enclosed_volume(mesh.vertices, mesh.faces) / resolution.prod()
            assert abs(volume - len(voxels)) <= 0.15 * len(voxels), (root, volume, len(voxels))


def test_levels_of_detail_follow_the_graph_layers(meshed):
    ctx, labels, cv, _ = meshed
    meta = read_meta(ctx.locations.chunkedgraph)
    chunk_shape = np.array(CHUNK) * np.array(RESOLUTION)
    checked_coarse = 0
    for root in roots_of(labels):
        manifest = cv.mesh.get_manifest(root)
        assert manifest.num_lods == finish_layer(meta, root) - 1
        assert np.allclose(manifest.chunk_shape, chunk_shape)
        lod0 = {tuple(p) for p in manifest.fragment_positions[0].tolist()}
        for lod in range(manifest.num_lods):
            positions = manifest.fragment_positions[lod]
            # each level's cells are the parents of the level below's (an octree), in Z-curve order
            assert {tuple(p) for p in positions.tolist()} == {tuple(c >> lod for c in p) for p in lod0}
            codes = [sum(((int(p[a]) >> bit) & 1) << (3 * bit + a) for bit in range(16) for a in range(3))
                     for p in positions]
            assert codes == sorted(codes)
        if manifest.num_lods >= 3 and (labels == root).sum() >= 3000:
            triangles = [len(cv.mesh.get(root, lod=lod)[root].faces) for lod in range(manifest.num_lods)]
            assert triangles[1] < triangles[0] / 2 and triangles[2] < triangles[1], (root, triangles)
            checked_coarse += 1
    assert checked_coarse >= 3


def test_no_level_of_detail_has_gaps_where_its_fragments_meet(meshed):
    """Each level's fragments of a body together leave no edge open: a part's border is kept
    exactly where it meets its neighbours, at every level. (Where a body is cut flat by the volume's
    faces, a coarse level can fold its cap onto itself, so edges may have four triangles there.)"""
    ctx, labels, cv, _ = meshed
    checked = 0
    for root in roots_of(labels):
        manifest = cv.mesh.get_manifest(root)
        for lod in range(1, manifest.num_lods):
            mesh = cv.mesh.get(root, lod=lod)[root]
            uses = edge_uses(mesh.vertices, mesh.faces)
            assert len(mesh.faces) and (uses % 2 == 0).all(), (root, lod, np.unique(uses, return_counts=True))
            checked += len(manifest.fragment_positions[lod - 1]) > 1  # a level made of several parts
    assert checked > 20


def test_coarse_fragments_keep_to_their_eight_subcells(meshed):
    """The format's rule for lod > 0: no triangle crosses the fragment's 2×2×2 grid."""
    ctx, labels, cv, _ = meshed
    half_voxel = np.array(RESOLUTION) / 2  # the mesh info's transform to voxel corners
    checked = 0
    for root in roots_of(labels):
        manifest = cv.mesh.get_manifest(root)
        for lod in range(1, manifest.num_lods):
            fragments = cv.mesh.get(root, lod=lod, concat=False)[root]
            positions = [p for p, size in zip(manifest.fragment_positions[lod], manifest.fragment_offsets[lod])
                         if size]
            for fragment, position in zip(fragments, positions):
                subcell = manifest.chunk_shape * (1 << (lod - 1))
                stored = fragment.vertices - half_voxel - manifest.grid_origin - position * 2 * subcell
                side = np.floor(stored / subcell + 1e-6).clip(0, 1)[fragment.faces]  # (faces, 3 vertices, 3 axes)
                on_plane = np.isclose(stored / subcell, 1, atol=1e-4)[fragment.faces]
                assert ((side.min(axis=1) == side.max(axis=1)) | on_plane.any(axis=1)).all(), (root, lod)
                checked += 1
    assert checked > 20


def test_rerunning_mesh_jobs_rewrites_identical_bytes(meshed):
    ctx, _, _, _ = meshed
    mesh = mesh_url(ctx.locations.segmentation)

    def digests() -> dict[str, str]:
        tree = {**{f"mesh/{k}": storage.join(mesh, k) for k in storage.listdir(mesh)},
                **{f"tmp/{k}": storage.join(ctx.locations.tmp, k) for k in storage.listdir(ctx.locations.tmp)}}
        return {name: hashlib.sha256(storage.read(url)).hexdigest() for name, url in tree.items()}

    before = digests()
    assert any(name.endswith(".shard") for name in before)
    for stage in STAGES:
        for task in stage.plan(ctx)[:3]:
            stage.execute(task["payload"])
    assert digests() == before


def test_every_root_gets_its_manifest_once(meshed):
    ctx, labels, cv, results = meshed
    mesh = mesh_url(ctx.locations.segmentation)
    finished = sum(r["roots"] for name, stage in results.items() if name.startswith("mesh.layer")
                   for r in stage.values())
    roots = roots_of(labels)
    assert finished == len(roots)  # no root is finished twice (its shard would hold it twice)
    assert results["mesh.meta"]["meta"]["bodies"] == len(roots)
    assert sum(r["bodies"] for r in results["mesh.shards"].values()) == len(roots)
    assert all(cv.mesh.get_manifest(root).num_lods for root in roots)
    spec = read_sharding(mesh)
    assert set(storage.listdir(mesh)) == {"info", *(spec.shard_name(s) for s in range(spec.shards))}
