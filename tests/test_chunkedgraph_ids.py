"""ChunkedGraph building blocks: ID layout, chunk files, mode downsampling, layer widths."""

from __future__ import annotations

import numpy as np
import pytest

from emprocess.chunkedgraph import chunkfile
from emprocess.chunkedgraph.downsample import downsample_mode
from emprocess.chunkedgraph.ids import IdLayout, consumption_layer, layer_count
from emprocess.chunkedgraph.layers import MAX_LAYERS, layer_width


@pytest.mark.parametrize("n_layers", [3, 7, MAX_LAYERS])
def test_node_ids_round_trip_layer_chunk_and_segment(n_layers):
    layout = IdLayout(n_layers)
    rng = np.random.default_rng(n_layers)
    for layer in range(1, n_layers + 1):
        top = 1 << layout.bits(layer)
        coords = tuple(int(c) for c in rng.integers(0, top, 3))
        segments = rng.integers(1, 1 << layout.segment_bits(layer), 50, dtype=np.uint64)
        ids = layout.node_ids(layer, coords, segments)
        assert (layout.layers(ids) == layer).all()
        assert (layout.chunks(ids) == coords).all()
        assert np.array_equal(layout.segments(ids), segments)
        assert np.unique(ids).size == np.unique(segments).size


def test_bits_per_layer_follow_the_pychunkedgraph_rule():
    layout = IdLayout(8)
    assert [layout.bits(layer) for layer in range(1, 9)] == [10, 10, 5, 4, 3, 2, 1, 1]
    assert layout.segment_bits(2) == 64 - 8 - 30
    with pytest.raises(ValueError, match="does not fit"):
        layout.chunk_id(3, (32, 0, 0))


def test_root_ids_name_the_job_that_finished_them():
    layout = IdLayout(6)
    seen = set()
    for origin_layer in range(2, 7):
        b = 6 - origin_layer
        coords = ((1 << b) - 1, 0, (1 << b) // 2) if b else (0, 0, 0)
        roots = layout.root_ids(origin_layer, coords, [1, 2, 3])
        assert (layout.layers(roots) == 6).all() and (layout.chunks(roots) == 0).all()
        assert all(layout.root_origin(int(r)) == (origin_layer, coords) for r in roots)
        seen.update(roots.tolist())
    assert len(seen) == 15
    with pytest.raises(OverflowError, match="bodies finish"):
        layout.root_ids(2, (0, 0, 0), [1 << 40])


def test_layer_count_and_consumption_layer():
    grids = ([1, 1, 1], [2, 1, 1], [3, 2, 2], [4, 4, 1], [5, 1, 1], [1024, 1, 1])
    assert [layer_count(g) for g in grids] == [3, 3, 4, 4, 5, 12]
    assert consumption_layer(0, 1) == 3 and consumption_layer(1, 2) == 4 and consumption_layer(3, 4) == 5


def test_layer_width_depends_only_on_layer_and_width():
    assert layer_width(2, 16) == 16
    assert layer_width(MAX_LAYERS - 1, 16) == 8
    assert layer_width(MAX_LAYERS, 16) == 1
    assert layer_width(MAX_LAYERS, 1) == 1


def test_chunk_files_round_trip_with_identical_bytes():
    arrays = {
        "child": np.array([3, 1, 2], dtype=np.uint64),
        "pending_key": np.arange(12, dtype=np.uint64).reshape(4, 3),
        "flag": np.array([True, False]),
        "empty": np.zeros((0, 3), dtype=np.uint64),
        "big_endian": np.arange(3, dtype=">u4"),
    }
    data = chunkfile.encode(arrays)
    assert chunkfile.encode(dict(reversed(list(arrays.items())))) == data
    decoded = chunkfile.decode(data)
    assert decoded.keys() == arrays.keys()
    assert all(np.array_equal(decoded[k], arrays[k]) and decoded[k].shape == arrays[k].shape for k in arrays)
    with pytest.raises(ValueError, match="not a chunkedgraph chunk file"):
        chunkfile.decode(b"PK\x03\x04")


def test_downsample_mode_picks_the_most_frequent_label():
    labels = np.array([[[5, 5], [5, 7]], [[7, 7], [9, 7]]], dtype=np.uint64)  # 2×2×2: four 7s, three 5s
    assert downsample_mode(labels, (2, 2, 2)).tolist() == [[[7]]]
    slab = np.array([[[1], [2]], [[2], [3]], [[4], [4]]], dtype=np.uint64)  # 3×2×1 with an odd edge
    assert downsample_mode(slab, (2, 2, 1)).tolist() == [[[2]], [[4]]]
