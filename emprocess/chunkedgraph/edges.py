"""Voxel contacts (6-connected faces) between supervoxels, with their contact area in voxel faces."""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def inner_contacts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, area) for every pair of different non-zero labels touching inside ``labels``; a < b."""
    contacts = cc3d.contacts(labels, connectivity=6, surface_area=False)
    if not contacts:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty, np.zeros(0, dtype=np.uint32)
    pairs = np.array(list(contacts.keys()), dtype=np.uint64)
    areas = np.array(list(contacts.values()), dtype=np.uint32)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order, 0], pairs[order, 1], areas[order]


@dataclass(frozen=True)
class FaceContacts:
    """Contacts across one face of a chunk: ``own`` labels inside, ``other`` labels in the neighbour."""

    axis: int
    side: int  # -1: the neighbour is below along ``axis``, +1: above
    own: np.ndarray
    other: np.ndarray
    area: np.ndarray


def face_contacts(core: np.ndarray, halo: dict[tuple[int, int], np.ndarray]) -> list[FaceContacts]:
    """Contacts between ``core``'s faces and the neighbours' planes touching them.

    ``halo[(axis, side)]`` is the neighbour's plane along ``axis`` (side -1: below, +1: above), over
    the core's extent in the other axes. Equal labels on both sides count too: they are the pieces
    of one supervoxel split by the face.
    """
    faces = []
    for (axis, side), other in sorted(halo.items()):
        own = core[(slice(None),) * axis + (0 if side < 0 else -1,)].reshape(-1)  # a view, not np.take's copy
        other = other.reshape(-1)
        touching = (own != 0) & (other != 0)
        if not touching.any():
            continue
        pairs, area = np.unique(np.stack([own[touching], other[touching]], axis=1), axis=0, return_counts=True)
        faces.append(FaceContacts(axis, side, pairs[:, 0], pairs[:, 1], area.astype(np.uint32)))
    return faces


def components(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label of each of ``count`` nodes joined by edges (a, b), numbered in the order of
    each component's lowest node, so IDs derived from them do not depend on the edge order."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    matrix = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(count, count)).tocsr()
    labels = connected_components(matrix, directed=False)[1]
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[labels]
