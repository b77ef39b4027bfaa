"""The graph meta (``<graph>/meta.json``): volume frame, chunk grid, layer count, table index.

Written once by the cg.meta job; every plan and chunk job derives its chunk math from it, so the
chunk grid has one source. Chunk coordinates are layer-local; voxel coordinates are relative to the
watershed's ``voxel_offset``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

from emprocess import corrupt, storage
from emprocess.chunkedgraph.ids import IdLayout, grid_at
from emprocess.run_layout import GRAPH_META_FILE, layer_chunk
from emprocess.stages import InputError

FORMAT = "emprocess-chunkedgraph/1"


@dataclass(frozen=True)
class GraphMeta:
    watershed: str
    supervoxels: str
    agglomeration: str | None
    size: tuple[int, int, int]
    voxel_offset: tuple[int, int, int]
    resolution: tuple[float, float, float]
    chunk_size: tuple[int, int, int]
    grid: tuple[int, int, int]  # layer-2 chunks per axis
    n_layers: int
    spatial_bits: int
    test: bool
    table: dict | None  # {"rows": N, "shards": [[first supervoxel, name], ...]} or None

    @classmethod
    def from_json(cls, data: dict) -> "GraphMeta":
        if data.get("format") != FORMAT:
            raise ValueError(f"graph meta format {data.get('format')!r} is not {FORMAT!r}")
        fields = {k: v for k, v in data.items() if k not in ("format", "layer_bits")}
        for key in ("size", "voxel_offset", "resolution", "chunk_size", "grid"):
            fields[key] = tuple(fields[key])
        return cls(**fields)

    def to_json(self) -> dict:
        data = asdict(self)
        data["format"] = FORMAT
        data["layer_bits"] = {str(layer): self.layout.bits(layer) for layer in range(1, self.n_layers + 1)}
        return data

    @property
    def layout(self) -> IdLayout:
        return IdLayout(self.n_layers, self.spatial_bits)

    def grid_at(self, layer: int) -> tuple[int, int, int]:
        return grid_at(self.grid, layer)

    def chunk_bounds(self, coords) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) voxel bounds of a layer-2 chunk, clipped to the volume."""
        lo = np.asarray(coords, dtype=np.int64) * self.chunk_size
        return lo, np.minimum(lo + self.chunk_size, self.size)

    def chunks(self, layer: int) -> list[tuple[int, int, int]]:
        """Every chunk built at ``layer``; in test mode only layer-3 chunk (0, 0, 0)'s subtree."""
        if self.test:
            if layer >= 3:
                return [(0, 0, 0)]
            return [c for c in itertools.product(range(2), repeat=3) if all(ci < gi for ci, gi in zip(c, self.grid))]
        return list(itertools.product(*(range(g) for g in self.grid_at(layer))))

    def child_chunks(self, layer: int, coords) -> list[tuple[int, int, int]]:
        """The built layer-(L−1) chunks inside chunk ``coords`` of ``layer``."""
        built = set(self.chunks(layer - 1)) if self.test else None
        grid = self.grid_at(layer - 1)
        children = []
        for offset in itertools.product(range(2), repeat=3):
            child = tuple(2 * int(c) + o for c, o in zip(coords, offset))
            if all(ci < gi for ci, gi in zip(child, grid)) and (built is None or child in built):
                children.append(child)
        return children

    def check_chunk(self, layer: int, coords) -> tuple[int, int, int]:
        """``coords`` as a tuple when the chunk is built at ``layer``; InputError otherwise."""
        if not 2 <= layer <= self.n_layers:
            raise InputError(f"layer {layer} is not in 2..{self.n_layers} for the graph of {self.watershed}")
        coords = tuple(int(c) for c in coords)
        inside = len(coords) == 3 and all(0 <= c < g for c, g in zip(coords, self.grid_at(layer)))
        if not inside or (self.test and coords not in self.chunks(layer)):
            raise InputError(f"chunk {list(coords)} is not built at layer {layer} (grid {list(self.grid_at(layer))})")
        return coords


def meta_url(graph: str) -> str:
    return storage.join(graph, GRAPH_META_FILE)


def chunk_url(graph: str, layer: int, coords) -> str:
    return storage.join(graph, layer_chunk(layer, coords))


def read_meta(graph: str) -> GraphMeta:
    """The graph's meta; FileNotFoundError says that cg.meta has not run, InputError that the file
    is not a meta of this version (every job of the graph would fail alike, so no retry helps)."""
    url = meta_url(graph)
    try:
        data = storage.read(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: graph meta not found (cg.meta has not run for this graph)") from None
    document = corrupt.parse_json(data, url)
    try:
        return GraphMeta.from_json(document)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise InputError(f"{url}: not a graph meta of this version ({type(err).__name__}: {err})") from None
