"""The parent-layer job: one chunk at layer L ≥ 3 from the open nodes of its ≤ 8 children.

Candidates are the children chunks' open nodes (each already the top of its subtree). The halves of
every edge consumed at L meet here (both chunks lie inside this one), so pairing them by key joins
their candidates; the connected components with two or more candidates become layer-L nodes. A lone
candidate has no edge at L and is carried up unchanged (it gets its parent at the lowest layer where
it has an edge, or its root when it has none left). At the root layer every component is a root.

In test mode only part of the graph is built, so a half whose partner chunk was not built is
dropped; otherwise a lone half means the children's files disagree, which no retry can fix.
"""

from __future__ import annotations

import numpy as np

from emprocess.chunkedgraph import chunkfile
from emprocess.chunkedgraph.contracts import GraphLayerPayload, GraphLayerResult
from emprocess.chunkedgraph.edges import components
from emprocess.chunkedgraph.finish import finish_chunk, name_roots, sort_pending
from emprocess.chunkedgraph.meta import chunk_url, read_meta
from emprocess.stages import InputError


def build_parent_chunk(payload: GraphLayerPayload) -> GraphLayerResult:
    """cg.layerL work (L ≥ 3, which the payload model ensures)."""
    graph, layer = payload.graph, payload.layer
    meta = read_meta(graph)
    coords = meta.check_chunk(layer, payload.chunk)
    layout = meta.layout
    children = [chunkfile.read(chunk_url(graph, layer - 1, c)) for c in meta.child_chunks(layer, coords)]
    candidates = np.sort(np.concatenate([np.zeros(0, np.uint64), *(f["open"] for f in children)]))
    node = np.concatenate([np.zeros(0, np.uint64), *(f["pending_node"] for f in children)])
    key = np.concatenate([np.zeros((0, 3), np.uint64), *(f["pending_key"] for f in children)])
    edge_layer = np.concatenate([np.zeros(0, np.uint8), *(f["pending_layer"] for f in children)])

    here = edge_layer == layer
    where = f"layer {layer} chunk {list(coords)} of {graph}"
    a, b = _pair_halves(np.searchsorted(candidates, node[here]), key[here], meta.test, where)
    component = components(candidates.size, a, b)
    count = int(component.max(initial=-1)) + 1
    sizes = np.bincount(component, minlength=count)
    summary = {"layer": layer, "chunk": list(coords), "candidates": int(candidates.size)}

    if layer == meta.n_layers:
        roots = name_roots(graph, layout, layer, coords, count)
        nothing_open = sort_pending(candidates[:0], key[:0], edge_layer[:0])
        arrays = {"child": candidates, "parent": roots[component], "open": candidates[:0], **nothing_open}
        chunkfile.write(chunk_url(graph, layer, coords), arrays)
        return GraphLayerResult(**summary, nodes=count, open=0, roots=count)

    grouped = sizes[component] >= 2
    group_rank = np.cumsum(sizes >= 2) - 1  # component label → rank among the grouped ones
    new_nodes = layout.node_ids(layer, coords, np.arange(1, int((sizes >= 2).sum()) + 1))
    top = candidates.copy()
    top[grouped] = new_nodes[group_rank[component[grouped]]]
    links = (candidates[grouped], top[grouped])

    above = edge_layer > layer
    carried = sort_pending(top[np.searchsorted(candidates, node[above])], key[above], edge_layer[above])
    closed = finish_chunk(graph, layout, layer, coords, links, np.unique(top), carried)
    return GraphLayerResult(**summary, nodes=int(new_nodes.size), **closed)


def _pair_halves(owner: np.ndarray, key: np.ndarray, test: bool, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Candidate index pairs of the edges whose two halves carry the same key."""
    if not key.shape[0]:
        return owner[:0], owner[:0]
    unique, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if counts.max() > 2:
        raise InputError(f"{where}: edge {unique[counts.argmax()].tolist()} has more than two halves")
    if not test and counts.min() < 2:
        raise InputError(
            f"{where}: edge {unique[counts.argmin()].tolist()} has one half only; "
            "the children chunks' files disagree (re-run the layer below)"
        )
    paired = counts[inverse] == 2
    order = np.argsort(inverse[paired], kind="stable")
    owners = owner[paired][order]
    return owners[0::2], owners[1::2]
