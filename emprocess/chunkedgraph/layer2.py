"""The layer-2 job: one graph chunk of the watershed → layer-1 supervoxels, edges and layer-2 nodes.

The job reads its chunk and the neighbours' voxel planes touching its six faces (on both sides, so
the two chunks of a face see the same contacts and describe their shared edges alike). Each
watershed id present in the chunk becomes one chunk-local layer-1 supervoxel, written into the
graph's own supervoxel volume. Contacts inside
the chunk are edges between layer-1 supervoxels; contacts across a face are half-edges keyed by
watershed ids. An edge is active when both ends belong to the same body (pieces of one watershed
supervoxel always do). Layer-2 nodes are the connected components of the active in-chunk edges;
active cross edges stay pending on their layer-2 node until the layer that joins both chunks.

Extra arrays in the layer-2 file (besides finish.py's): ``supervoxels`` (layer-1 ids, sorted) with
their ``watershed`` ids; ``edge_a``, ``edge_b``, ``edge_area``, ``edge_active`` (in-chunk edges);
``cross_sv``, ``cross_key``, ``cross_area``, ``cross_active`` (every half-edge leaving the chunk).
"""

from __future__ import annotations

import fastremap
import numpy as np

from emprocess.chunkedgraph import volumes
from emprocess.chunkedgraph.agglomeration import lookup_bodies
from emprocess.chunkedgraph.contracts import GraphLayer2Payload, GraphLayer2Result
from emprocess.chunkedgraph.edges import components, face_contacts, inner_contacts
from emprocess.chunkedgraph.finish import finish_chunk, sort_pending
from emprocess.chunkedgraph.ids import consumption_layer
from emprocess.chunkedgraph.meta import GraphMeta, read_meta


def build_layer2_chunk(payload: GraphLayer2Payload) -> GraphLayer2Result:
    """cg.layer2 work."""
    graph = payload.graph
    meta = read_meta(graph)
    coords = meta.check_chunk(2, payload.chunk)
    layout = meta.layout
    lo, hi = meta.chunk_bounds(coords)
    store = volumes.open_scale(payload.watershed)
    core_read, halo_reads = volumes.read_later(store, lo, hi), _halo_reads(store, lo, hi, meta.size)
    core = np.asarray(core_read.result(), dtype=np.uint64)
    halo = {face: _plane(read.result(), axis=face[0]) for face, read in halo_reads.items()}
    faces = face_contacts(core, halo)
    edge_a, edge_b, edge_area = inner_contacts(core)

    watershed = fastremap.unique(core)
    watershed = watershed[watershed != 0].astype(np.uint64)
    supervoxels = layout.node_ids(1, coords, np.arange(1, watershed.size + 1))
    mapping = dict(zip(watershed.tolist(), supervoxels.tolist()))
    core = fastremap.remap(core, mapping, preserve_missing_labels=True, in_place=True)
    volumes.write(volumes.open_scale(payload.supervoxels), lo, core)
    del core
    bodies = _Bodies(graph, meta, watershed, faces)

    edge_active = bodies.same(edge_a, edge_b)
    ia, ib = np.searchsorted(watershed, edge_a), np.searchsorted(watershed, edge_b)
    component = components(watershed.size, ia[edge_active], ib[edge_active])
    layer2 = layout.node_ids(2, coords, np.arange(1, component.max(initial=-1) + 2))
    sv_parent = layer2[component]

    cross = _cross_edges(meta, coords, faces, bodies)
    own = np.searchsorted(watershed, cross["own"])
    active = cross["active"]
    pending = sort_pending(sv_parent[own[active]], cross["key"][active], cross["layer"][active])
    extra = {
        "supervoxels": supervoxels,
        "watershed": watershed,
        "edge_a": supervoxels[ia],
        "edge_b": supervoxels[ib],
        "edge_area": edge_area,
        "edge_active": edge_active,
        "cross_sv": supervoxels[own],
        "cross_key": cross["key"],
        "cross_area": cross["area"],
        "cross_active": active,
    }
    closed = finish_chunk(graph, layout, 2, coords, (supervoxels, sv_parent), layer2, pending, extra)
    return GraphLayer2Result(
        layer=2,
        chunk=list(coords),
        supervoxels=int(watershed.size),
        nodes=int(layer2.size),
        edges=int(edge_a.size),
        active_edges=int(edge_active.sum()),
        cross_edges=int(active.size),
        active_cross_edges=int(active.sum()),
        **closed,
    )


def _halo_reads(store, lo: np.ndarray, hi: np.ndarray, size) -> dict[tuple[int, int], object]:
    """Start reading the neighbours' voxel planes touching each face of the chunk [lo, hi)."""
    reads = {}
    for axis in range(3):
        for side, plane in ((-1, lo[axis] - 1), (1, hi[axis])):
            if 0 <= plane < size[axis]:
                plane_lo, plane_hi = lo.copy(), hi.copy()
                plane_lo[axis], plane_hi[axis] = plane, plane + 1
                reads[(axis, side)] = volumes.read_later(store, plane_lo, plane_hi)
    return reads


def _plane(slab: np.ndarray, axis: int) -> np.ndarray:
    """A one-voxel-thick slab along ``axis`` as a 2D uint64 plane."""
    return np.asarray(slab, dtype=np.uint64)[(slice(None),) * axis + (0,)]


class _Bodies:
    """Body of every watershed id the chunk sees (its own and its neighbours' face ids)."""

    def __init__(self, graph: str, meta: GraphMeta, watershed: np.ndarray, faces) -> None:
        self.ids = np.unique(np.concatenate([watershed, *(f.other for f in faces)]).astype(np.uint64))
        self.body, self.listed = lookup_bodies(graph, meta.table, self.ids)

    def same(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Active: equal ids, or both listed in the table with the same body."""
        ia, ib = np.searchsorted(self.ids, a), np.searchsorted(self.ids, b)
        listed = self.listed[ia] & self.listed[ib]
        return (a == b) | (listed & (self.body[ia] == self.body[ib]))


def _cross_edges(meta: GraphMeta, coords, faces, bodies: _Bodies) -> dict[str, np.ndarray]:
    """Half-edges across the chunk's faces: own watershed id, key, area, consumption layer, active."""
    bits = meta.spatial_bits
    parts = {
        "own": [np.zeros(0, np.uint64)],
        "key": [np.zeros((0, 3), np.uint64)],
        "area": [np.zeros(0, np.uint32)],
        "layer": [np.zeros(0, np.uint8)],
        "active": [np.zeros(0, bool)],
    }
    for face in faces:
        neighbour = list(coords)
        neighbour[face.axis] += face.side
        lower = min(tuple(coords), tuple(neighbour))
        below, above = (face.other, face.own) if face.side < 0 else (face.own, face.other)
        packed = ((lower[0] << 2 * bits | lower[1] << bits | lower[2]) << 2) | face.axis
        parts["own"].append(face.own.astype(np.uint64))
        parts["key"].append(np.stack([np.full(face.own.size, packed, dtype=np.uint64), below, above], axis=1))
        parts["area"].append(face.area)
        layer = consumption_layer(coords[face.axis], neighbour[face.axis])
        parts["layer"].append(np.full(face.own.size, layer, dtype=np.uint8))
        parts["active"].append(bodies.same(face.own, face.other))
    return {name: np.concatenate(values) for name, values in parts.items()}
