"""Read a built graph: ``root``, ``roots``, ``parent``, ``children``, ``leaves``, ``layer``.

A node's parent link lives in the file of the job that created it: for a node of layer K in chunk c
that is the file of layer L ≥ K at chunk ``c >> (L − K)`` (its ancestor chunk), for the lowest L
where the link exists (a node is carried up unchanged until it has an edge). Supervoxels (layer 1)
live in their layer-2 chunk's file. Lookups therefore walk up one ancestor chunk per layer, which
is what a flatten job does for all supervoxels of its chunk at once.
"""

from __future__ import annotations

import numpy as np

from emprocess.chunkedgraph import chunkfile
from emprocess.chunkedgraph.meta import chunk_url, read_meta
from emprocess.stages import InputError


class ChunkedGraph:
    """A read-only graph under ``url`` (``<chunk>/chunkedgraph``); chunk files are cached once read.
    Files that do not decode or do not link up are InputError naming them: re-reading cannot mend them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.meta = read_meta(url)
        self.layout = self.meta.layout
        self._files: dict[tuple, dict[str, np.ndarray]] = {}

    def chunk_file(self, layer: int, coords) -> dict[str, np.ndarray]:
        key = (layer, *(int(c) for c in coords))
        if key not in self._files:
            arrays = chunkfile.read(chunk_url(self.url, layer, key[1:]))
            order = np.argsort(arrays["parent"], kind="stable")
            arrays["by_parent"], arrays["by_parent_child"] = arrays["parent"][order], arrays["child"][order]
            self._files[key] = arrays
        return self._files[key]

    def layer(self, node: int) -> int:
        return int(self.layout.layers([node])[0])

    def roots(self, nodes) -> np.ndarray:
        """Root of each node (0 stays 0, a root is its own root)."""
        current = np.array(nodes, dtype=np.uint64).reshape(-1)
        top = self.meta.n_layers
        for layer in range(2, top + 1):
            layers = self.layout.layers(current)
            todo = np.flatnonzero((current != 0) & (layers < top) & (layers <= layer))
            if not todo.size:
                break
            home = np.maximum(self.layout.layers(current[todo]), 2)
            chunks = self.layout.chunks(current[todo]) >> (layer - home)[:, None]
            unique, group = np.unique(chunks, axis=0, return_inverse=True)
            for index, coords in enumerate(unique):
                members = todo[group.reshape(-1) == index]
                current[members] = self._follow_links(self.chunk_file(layer, coords), current[members])
        unresolved = (current != 0) & (self.layout.layers(current) < top)
        if unresolved.any():
            raise InputError(f"{self.url}: node {int(current[unresolved][0])} has no parent up to the root layer")
        return current

    @staticmethod
    def _follow_links(arrays: dict[str, np.ndarray], nodes: np.ndarray) -> np.ndarray:
        """Replace nodes by their parent while this file has one (a node's new parent may be finished here)."""
        child, parent = arrays["child"], arrays["parent"]
        while child.size:
            pos = np.minimum(np.searchsorted(child, nodes), child.size - 1)
            found = child[pos] == nodes
            if not found.any():
                break
            nodes = np.where(found, parent[pos], nodes)
        return nodes

    def root(self, node: int) -> int:
        return int(self.roots([node])[0])

    def parent(self, node: int) -> int | None:
        """The parent of ``node``; None for a root."""
        layer = self.layer(node)
        if layer == self.meta.n_layers:
            return None
        home = max(layer, 2)
        coords = self.layout.chunks([node])[0]
        for parent_layer in range(home, self.meta.n_layers + 1):
            arrays = self.chunk_file(parent_layer, coords >> (parent_layer - home))
            pos = np.searchsorted(arrays["child"], np.uint64(node))
            if pos < arrays["child"].size and arrays["child"][pos] == node:
                return int(arrays["parent"][pos])
        raise InputError(f"{self.url}: node {node} has no parent")

    def children(self, node: int) -> np.ndarray:
        return self.children_of([node])

    def children_of(self, nodes) -> np.ndarray:
        """All children of ``nodes``, grouped by the file that created each node."""
        nodes = np.unique(np.asarray(nodes, dtype=np.uint64))
        nodes = nodes[self.layout.layers(nodes) > 1]
        found = [np.zeros(0, np.uint64)]
        for (layer, coords), group in self._by_origin(nodes).items():
            arrays = self.chunk_file(layer, coords)
            lo = np.searchsorted(arrays["by_parent"], group, side="left")
            hi = np.searchsorted(arrays["by_parent"], group, side="right")
            found.extend(arrays["by_parent_child"][a:b] for a, b in zip(lo, hi))
        return np.sort(np.concatenate(found))

    def _by_origin(self, nodes: np.ndarray) -> dict[tuple, np.ndarray]:
        """Nodes keyed by (layer, chunk) of the job that created them (a root names its job)."""
        origin = np.column_stack([self.layout.layers(nodes), self.layout.chunks(nodes)])
        for row in np.flatnonzero(origin[:, 0] == self.meta.n_layers):
            layer, coords = self.layout.root_origin(int(nodes[row]))
            origin[row] = (layer, *coords)
        unique, group = np.unique(origin, axis=0, return_inverse=True)
        group = group.reshape(-1)
        return {(int(u[0]), tuple(u[1:].tolist())): nodes[group == i] for i, u in enumerate(unique)}

    def leaves(self, node: int) -> np.ndarray:
        """The layer-1 supervoxels under ``node``, sorted."""
        frontier, leaves = np.array([node], dtype=np.uint64), [np.zeros(0, np.uint64)]
        while frontier.size:
            is_leaf = self.layout.layers(frontier) == 1
            leaves.append(frontier[is_leaf])
            frontier = self.children_of(frontier[~is_leaf])
        return np.sort(np.concatenate(leaves))

    def chunk_nodes(self, layer: int, coords) -> np.ndarray:
        """The layer-``layer`` nodes created by the job of chunk ``coords`` at that layer."""
        parents = self.chunk_file(layer, coords)["parent"]
        return np.unique(parents[self.layout.layers(parents) == layer])
