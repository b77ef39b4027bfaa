"""The meshing jobs: one per graph chunk, layer by layer, like the graph itself.

* Layer 2 (level of detail 0): marching cubes (zmesh) over the chunk of the root-ID segmentation,
  one voxel past its far faces so that the meshes of neighbouring chunks meet on the shared plane of
  voxel centres; open there, closed at the volume's faces.
* Layer L ≥ 3 (level of detail L − 2): for every object in the chunk, each of its fragments one level
  below (one per child chunk) is simplified on its own (so no triangle crosses a child chunk: the
  2×2×2 partition the format asks for), and the parts together make the object's fragment of this
  chunk. The simplifier (meshoptimizer) locks the open border of each part in place: where
  neighbouring fragments meet, both keep the same vertices, so no level has gaps. A part's seams
  between its own children are welded when it is decoded, so they are simplified away one level up.

A root's voxels lie inside the chunk of the graph job that created it (its "origin", encoded in its
ID); its fragments lie there too, or in the cells just below it (see ``finish_layer``). The job of
the chunk that holds them all makes the root's manifest and its shard entry, which mesh.shards puts
in its shard file (see ``shards``); every job passes up, in its pending file, the fragments of the
roots it does not finish. Every file a job writes is derived from its inputs alone (re-runs rewrite
the same bytes); the pending file is written last, so it marks the job done.
"""

from __future__ import annotations

from collections import defaultdict

import meshoptimizer
import numpy as np
import zmesh

from emprocess.chunkedgraph import chunkfile, volumes
from emprocess.chunkedgraph.ids import consumption_layer
from emprocess.chunkedgraph.meta import GraphMeta, chunk_url, read_meta
from emprocess.meshing import fragments, shards
from emprocess.meshing.contracts import MeshLayerPayload, MeshLayerResult
from emprocess.meshing.layout import MeshLayout, read_sharding
from emprocess.stages import InputError

MIN_TRIANGLES = 8  # a part this small is kept as it is

Fragment = tuple[int, tuple[int, int, int], bytes]  # (lod, cell position, Draco bytes)


def mesh_chunk(payload: MeshLayerPayload) -> MeshLayerResult:
    """mesh.layerL work."""
    meta = read_meta(payload.graph)
    layer = payload.layer
    coords = meta.check_chunk(layer, payload.chunk)
    layout = MeshLayout.of(meta)
    if layer == 2:
        objects = _marching_cubes(meta, layout, payload.segmentation, coords)
    else:
        objects = _coarser(meta, layout, payload.pending, layer, coords, payload.simplification_factor)
    finished = sorted(root for root in objects if _finishes_here(meta, root, layer, coords))
    shards.write_finished(payload.pending, read_sharding(payload.mesh), layer, coords,
                          {root: _shard_entry(layout, objects.pop(root)) for root in finished})
    _write_pending(chunk_url(payload.pending, layer, coords), objects)
    return MeshLayerResult(layer=layer, chunk=list(coords), roots=len(finished), passed_up=len(objects))


def finish_layer(meta: GraphMeta, root: int) -> int:
    """The layer whose chunk holds every fragment of ``root``: the chunk of its origin, grown to take
    in the layer-2 chunks just below it on each axis, whose jobs mesh one voxel into it and may so
    hold the outer half-voxel of its surface there."""
    layer, origin = meta.layout.root_origin(root)
    span = 1 << (layer - 2)  # layer-2 chunks per axis in a layer-``layer`` chunk
    finish = layer
    for coordinate in origin:
        first = coordinate * span
        if first > 0:
            finish = max(finish, consumption_layer(first - 1, first + span - 1))
    return min(finish, meta.n_layers)


def _finishes_here(meta: GraphMeta, root: int, layer: int, coords) -> bool:
    if layer == meta.n_layers:
        return True
    if finish_layer(meta, root) != layer:
        return False
    origin_layer, origin = meta.layout.root_origin(root)
    return tuple(c >> (layer - origin_layer) for c in origin) == tuple(coords)


def _marching_cubes(meta: GraphMeta, layout: MeshLayout, segmentation: str, coords) -> dict[int, list[Fragment]]:
    lo, hi = meta.chunk_bounds(coords)
    size = np.asarray(meta.size)
    labels = volumes.read(volumes.open_scale(segmentation, 0), lo, np.minimum(hi + 1, size))
    # A zero plane outside the volume's faces closes the objects that touch them.
    before, after = (lo == 0).astype(int), (hi == size).astype(int)
    labels = np.pad(labels, list(zip(before, after)))
    mesher = zmesh.Mesher(meta.resolution)
    mesher.mesh(labels, close=False)
    origin, shape = layout.cell(0, coords)
    shift = (np.asarray(meta.voxel_offset) + lo - before) * np.asarray(meta.resolution)
    objects = {}
    for root in sorted(int(i) for i in mesher.ids() if i):
        mesh = mesher.get(root, normals=False)
        objects[root] = [(0, tuple(coords), fragments.encode(mesh.vertices + shift, mesh.faces, origin, shape))]
    mesher.clear()
    return objects


def _coarser(meta: GraphMeta, layout: MeshLayout, pending: str, layer: int, coords,
             factor: float) -> dict[int, list[Fragment]]:
    lod = layer - 2
    objects: dict[int, list[Fragment]] = defaultdict(list)
    for child in meta.child_chunks(layer, coords):
        url = chunk_url(pending, layer - 1, child)
        try:
            for root, found in _read_pending(url).items():
                objects[root].extend(found)
        except FileNotFoundError:
            raise InputError(f"{url}: the mesh job of layer {layer - 1} chunk {list(child)} has not run") from None
    origin, shape = layout.cell(lod, coords)
    for root, found in objects.items():
        parts = [_simplified(layout, fragment, factor) for fragment in found if fragment[0] == lod - 1]
        vertices, faces = _concatenate(parts)
        found.append((lod, tuple(coords), fragments.encode(vertices, faces, origin, shape)))
    return dict(objects)


def _simplified(layout: MeshLayout, fragment: Fragment, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """One child fragment with about 1/``factor`` of its triangles, its open border kept exactly
    (meshoptimizer only collapses edges onto existing vertices, so it stays inside its own cell)."""
    lod, position, data = fragment
    origin, shape = layout.cell(lod, position)
    vertices, faces = fragments.decode(data, origin, shape)
    if len(faces) <= MIN_TRIANGLES:
        return vertices, faces
    target = max(MIN_TRIANGLES, int(len(faces) / factor))
    kept = np.empty(faces.size, np.uint32)
    count = meshoptimizer.simplify(kept, faces.reshape(-1), vertices.astype(np.float32), target_index_count=3 * target,
                                   target_error=1.0, options=meshoptimizer.SIMPLIFY_LOCK_BORDER)
    used, simple = np.unique(kept[:count], return_inverse=True)
    return vertices[used], simple.reshape(-1, 3).astype(np.uint32)


def _concatenate(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces, count = [], [], 0
    for part_vertices, part_faces in parts:
        vertices.append(np.asarray(part_vertices, np.float64))
        faces.append(np.asarray(part_faces, np.int64) + count)
        count += len(part_vertices)
    if not vertices:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint32)
    return np.concatenate(vertices), np.concatenate(faces).astype(np.uint32)


def _shard_entry(layout: MeshLayout, found: list[Fragment]) -> tuple[bytes, bytes]:
    """A root's fragment data and its manifest."""
    lods = max(lod for lod, _, _ in found) + 1
    positions, sizes, data = [], [], []
    for lod in range(lods):
        level = [f for f in found if f[0] == lod]
        order = fragments.zorder([position for _, position, _ in level])
        level = [level[i] for i in order]
        positions.append(np.asarray([position for _, position, _ in level], np.uint32).reshape(-1, 3))
        sizes.append(np.asarray([len(fragment) for _, _, fragment in level], np.uint32))
        data.extend(fragment for _, _, fragment in level)
    index = fragments.manifest(layout.chunk_shape, layout.grid_origin, layout.lod_scales(lods), positions, sizes)
    return b"".join(data), index


def _write_pending(url: str, objects: dict[int, list[Fragment]]) -> None:
    rows = [(root, lod, position, data) for root in sorted(objects)
            for lod, position, data in sorted(objects[root], key=lambda f: (f[0], f[1]))]
    chunkfile.write(url, {
        "root": np.asarray([r[0] for r in rows], np.uint64),
        "lod": np.asarray([r[1] for r in rows], np.uint8),
        "position": np.asarray([r[2] for r in rows], np.uint32).reshape(-1, 3),
        "size": np.asarray([len(r[3]) for r in rows], np.uint64),
        "data": np.frombuffer(b"".join(r[3] for r in rows), np.uint8),
    })


def _read_pending(url: str) -> dict[int, list[Fragment]]:
    arrays = chunkfile.read(url)  # InputError when it does not decode
    names = ("root", "lod", "position", "size", "data")
    fits = all(name in arrays for name in names) and len({len(arrays[n]) for n in names[:4]}) == 1
    if not fits or int(arrays["size"].sum()) != arrays["data"].size:
        raise InputError(f"{url}: not a mesh pending file (its arrays do not fit together)")
    data = arrays["data"].tobytes()
    ends = np.cumsum(arrays["size"]).tolist()
    objects: dict[int, list[Fragment]] = defaultdict(list)
    rows = zip(arrays["root"].tolist(), arrays["lod"].tolist(), arrays["position"].tolist(), [0, *ends], ends)
    for root, lod, position, start, end in rows:
        objects[root].append((lod, tuple(position), data[start:end]))
    return objects
