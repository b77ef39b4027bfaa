"""Closing a chunk job below the root layer: name roots of finished bodies, write the chunk's file.

Every chunk file (layer ≥ 2) holds:

- ``child``, ``parent``: every parent link this job created, sorted by child;
- ``open``: the nodes of this chunk without a parent yet, because they still have active cross-chunk
  edges consumed at a higher layer (they are carried up unchanged until that layer);
- ``pending_node``, ``pending_key`` (N, 3), ``pending_layer``: those edges, one half per side. A
  key is ``[lower layer-2 chunk packed with its axis, watershed id below, watershed id above]``,
  which both sides compute alike, so the job at ``pending_layer`` pairs the halves without a lookup.

A node with no pending edge is finished: it gets its root here (a root-layer node whose ID names
this job, see ids.py), so the root job only sees bodies that cross its chunk's middle planes.
"""

from __future__ import annotations

import numpy as np

from emprocess.chunkedgraph import chunkfile
from emprocess.chunkedgraph.ids import IdLayout
from emprocess.chunkedgraph.meta import chunk_url
from emprocess.stages import InputError


def finish_chunk(
    graph: str,
    layout: IdLayout,
    layer: int,
    coords,
    links: tuple[np.ndarray, np.ndarray],
    nodes: np.ndarray,
    pending: dict[str, np.ndarray],
    extra: dict[str, np.ndarray] | None = None,
) -> dict:
    """Write the chunk file; ``nodes`` are the chunk's parentless nodes, ``pending`` their edges above."""
    nodes = np.sort(np.asarray(nodes, dtype=np.uint64))
    is_open = np.isin(nodes, pending["pending_node"])
    finished = nodes[~is_open]
    roots = name_roots(graph, layout, layer, coords, finished.size)
    child = np.concatenate([links[0], finished]).astype(np.uint64)
    parent = np.concatenate([links[1], roots]).astype(np.uint64)
    order = np.argsort(child, kind="stable")
    arrays = {"child": child[order], "parent": parent[order], "open": nodes[is_open], **pending, **(extra or {})}
    chunkfile.write(chunk_url(graph, layer, coords), arrays)
    return {"open": int(is_open.sum()), "roots": int(finished.size)}


def name_roots(graph: str, layout: IdLayout, layer: int, coords, count: int) -> np.ndarray:
    """``count`` new root IDs for the job of chunk ``coords`` at ``layer``."""
    try:
        return layout.root_ids(layer, coords, np.arange(1, count + 1))
    except OverflowError as err:
        raise InputError(f"layer {layer} chunk {list(coords)} of {graph}: {err} for 64-bit root IDs") from None


def sort_pending(node: np.ndarray, key: np.ndarray, layer: np.ndarray) -> dict[str, np.ndarray]:
    """Pending half-edges as file arrays, in a canonical order (by node, then key)."""
    key = key.reshape(-1, 3).astype(np.uint64)
    order = np.lexsort((key[:, 2], key[:, 1], key[:, 0], node))
    return {
        "pending_node": node[order].astype(np.uint64),
        "pending_key": key[order],
        "pending_layer": layer[order].astype(np.uint8),
    }
