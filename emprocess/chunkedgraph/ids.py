"""Node and chunk IDs of the ChunkedGraph (ARCHITECTURE §6).

A node ID is a uint64 laid out as ``[layer 8 bits][x b][y b][z b][segment]``. ``b`` depends on the
layer as in PyChunkedGraph: layers 1–2 use ``max(spatial_bits, n_layers − 2)`` bits per axis,
layer L ≥ 3 uses ``max(1, n_layers − L)``, so a layer's chunk coordinates always fit and the rest is
the segment. Layer 1 IDs are the graph's own (chunk-local) supervoxels; layer ``n_layers`` holds
the roots, in the single chunk (0, 0, 0).

Root segments are named where their body is finished, so no job needs a global counter: a root's
segment is ``[origin layer 4 bits][origin chunk, (n_layers − origin) bits per axis][index]``, the
chunk job (layer, chunk) that finished the body and its index there. The reader uses the origin to
find a root's children without a search. A layer-L job can so name 2^(49 − 3·(n_layers − L)) − 1
roots: at least 2^25 − 1 up to 10 layers (more than a 256³ chunk has voxels); a job of a larger
graph that finishes more bodies fails with a clear error instead of reusing an ID.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emprocess.chunkedgraph.layers import MAX_LAYERS

LAYER_BITS = 8
SPATIAL_BITS = 10  # bits per axis of layer-1/2 chunk coordinates, as PyChunkedGraph's default
ROOT_ORIGIN_BITS = 4  # origin layer inside a root segment; holds 2..MAX_LAYERS


def layer_count(grid: tuple[int, int, int] | list[int]) -> int:
    """Layers of a graph whose layer-2 chunk grid is ``grid``: ceil(log2(max chunks per axis)) + 2.

    At least 3, so that roots are always assigned by a parent job and never are layer-2 nodes.
    """
    widest = max(int(g) for g in grid)
    if widest < 1:
        raise ValueError(f"chunk grid {list(grid)} is empty")
    return max(3, (widest - 1).bit_length() + 2)


def consumption_layer(lo: int, hi: int) -> int:
    """The lowest layer whose chunk holds both layer-2 chunk coordinates ``lo`` and ``hi`` (one axis)."""
    return 2 + (int(lo) ^ int(hi)).bit_length()


@dataclass(frozen=True)
class IdLayout:
    """Bit layout of every node ID of one graph."""

    n_layers: int
    spatial_bits: int = SPATIAL_BITS

    def __post_init__(self) -> None:
        if not 3 <= self.n_layers <= MAX_LAYERS:
            raise ValueError(f"n_layers must be in 3..{MAX_LAYERS}, got {self.n_layers}")

    def bits(self, layer: int) -> int:
        """Bits per axis of the chunk coordinates at ``layer``."""
        if layer <= 2:
            return max(self.spatial_bits, self.n_layers - 2)
        return max(1, self.n_layers - layer)

    def segment_bits(self, layer: int) -> int:
        return 64 - LAYER_BITS - 3 * self.bits(layer)

    def chunk_id(self, layer: int, coords) -> int:
        """The ID with segment 0: the chunk's own ID and the base of its nodes' IDs."""
        b = self.bits(layer)
        x, y, z = (int(c) for c in coords)
        if min(x, y, z) < 0 or max(x, y, z) >= 1 << b:
            raise ValueError(f"chunk {[x, y, z]} does not fit {b} bits per axis at layer {layer}")
        shift = self.segment_bits(layer)
        return (layer << (64 - LAYER_BITS)) | (((x << b | y) << b | z) << shift)

    def node_ids(self, layer: int, coords, segments) -> np.ndarray:
        """IDs of ``segments`` (each ≥ 1) in chunk ``coords`` at ``layer``."""
        segments = np.asarray(segments, dtype=np.uint64)
        if segments.size and (segments.min() < 1 or int(segments.max()) >= 1 << self.segment_bits(layer)):
            raise OverflowError(f"segments at layer {layer} must be in 1..2^{self.segment_bits(layer)}-1")
        return np.uint64(self.chunk_id(layer, coords)) | segments

    def root_ids(self, origin_layer: int, coords, indices) -> np.ndarray:
        """Root IDs for bodies finished by the job of chunk ``coords`` at ``origin_layer``."""
        b = self.n_layers - origin_layer
        index_bits = self.segment_bits(self.n_layers) - ROOT_ORIGIN_BITS - 3 * b
        indices = np.asarray(indices, dtype=np.uint64)
        if indices.size and (indices.min() < 1 or int(indices.max()) >= 1 << index_bits):
            raise OverflowError(
                f"more than {(1 << index_bits) - 1} bodies finish in one layer-{origin_layer} chunk"
            )
        x, y, z = (int(c) for c in coords)
        if min(x, y, z) < 0 or max(x, y, z) >= 1 << b:
            raise ValueError(f"chunk {[x, y, z]} is outside the layer-{origin_layer} grid")
        origin = (origin_layer << 3 * b | (x << b | y) << b | z) << index_bits
        return self.node_ids(self.n_layers, (0, 0, 0), np.uint64(origin) | indices)

    def root_origin(self, root: int) -> tuple[int, tuple[int, int, int]]:
        """(layer, chunk coordinates) of the job that created ``root``."""
        segment = int(root) & ((1 << self.segment_bits(self.n_layers)) - 1)
        top = self.segment_bits(self.n_layers) - ROOT_ORIGIN_BITS
        origin_layer = segment >> top
        b = self.n_layers - origin_layer
        coords = (segment >> (top - 3 * b)) & ((1 << 3 * b) - 1)
        mask = (1 << b) - 1
        return origin_layer, (coords >> 2 * b & mask, coords >> b & mask, coords & mask)

    def layers(self, ids) -> np.ndarray:
        return (np.asarray(ids, dtype=np.uint64) >> np.uint64(64 - LAYER_BITS)).astype(np.int64)

    def chunks(self, ids) -> np.ndarray:
        """(N, 3) chunk coordinates of ``ids`` (each at its own layer)."""
        ids = np.asarray(ids, dtype=np.uint64).reshape(-1)
        layers = self.layers(ids)
        out = np.zeros((ids.size, 3), dtype=np.int64)
        for layer in np.unique(layers):
            sel = layers == layer
            b, shift = self.bits(int(layer)), self.segment_bits(int(layer))
            packed = (ids[sel] >> np.uint64(shift)) & np.uint64((1 << 3 * b) - 1)
            mask = np.uint64((1 << b) - 1)
            out[sel, 0] = packed >> np.uint64(2 * b) & mask
            out[sel, 1] = packed >> np.uint64(b) & mask
            out[sel, 2] = packed & mask
        return out

    def segments(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.uint64).reshape(-1)
        layers = self.layers(ids)
        out = np.zeros(ids.size, dtype=np.uint64)
        for layer in np.unique(layers):
            sel = layers == layer
            out[sel] = ids[sel] & np.uint64((1 << self.segment_bits(int(layer))) - 1)
        return out


def grid_at(grid2, layer: int) -> tuple[int, int, int]:
    """Chunks per axis at ``layer`` of a graph whose layer-2 grid is ``grid2`` (fanout 2)."""
    step = 1 << (layer - 2)
    return tuple(math.ceil(int(g) / step) for g in grid2)
