"""The supervoxel → body table: loading the user's file and the sharded copy chunk jobs read.

Accepted files (by suffix): ``.npy`` with an (N, 2) integer array; ``.npz`` holding either one
(N, 2) array or two equal-length 1-D arrays (supervoxels first, in stored order); ``.csv`` with two
integer columns and an optional header line. Supervoxels not in the table are their own body.

cg.meta writes the validated table sorted by supervoxel in shards of ``SHARD_ROWS`` rows, so a
layer-2 job loads only the shards its supervoxels fall in instead of the whole table.
"""

from __future__ import annotations

import io

import numpy as np

from emprocess import storage
from emprocess.chunkedgraph import chunkfile
from emprocess.run_layout import AGGLOMERATION
from emprocess.stages import InputError

SHARD_ROWS = 1 << 20
SUFFIXES = (".npy", ".npz", ".csv")


def load_table(url: str) -> tuple[np.ndarray, np.ndarray]:
    """(supervoxels, bodies): uint64, sorted by supervoxel, one row per supervoxel."""
    suffix = next((s for s in SUFFIXES if url.lower().endswith(s)), None)
    if suffix is None:
        raise InputError(f"agglomeration {url}: unsupported file type; use .npy, .npz or .csv")
    try:
        data = storage.read(url)
    except FileNotFoundError:
        raise InputError(f"agglomeration {url}: not found") from None
    try:
        columns = {".npy": _npy_columns, ".npz": _npz_columns, ".csv": _csv_columns}[suffix](data)
    except Exception as err:  # noqa: BLE001
        # numpy's readers raise many types on a cut or garbage file (EOFError, SyntaxError,
        # tokenize.TokenError, BadZipFile, zlib.error …); the bytes are read, so none is transient
        raise InputError(f"agglomeration {url}: cannot read it as {suffix}: {err}") from None
    supervoxels, bodies = (_unsigned(c, url) for c in columns)
    return _one_body_each(supervoxels, bodies, url)


def _npy_columns(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    table = np.load(io.BytesIO(data), allow_pickle=False)
    return _split_two_columns(table)


def _npz_columns(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = [archive[name] for name in archive.files]
    if len(arrays) == 1:
        return _split_two_columns(arrays[0])
    if len(arrays) == 2 and all(a.ndim == 1 for a in arrays) and arrays[0].shape == arrays[1].shape:
        return arrays[0], arrays[1]
    raise ValueError("expected one (N, 2) array or two equal-length 1-D arrays")


def _csv_columns(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    text = data.decode()
    first = next((line for line in text.splitlines() if line.strip()), "")
    skip = 1 if any(ch.isalpha() for ch in first) else 0
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.uint64, ndmin=2, skiprows=skip)
    return _split_two_columns(table if table.size else np.zeros((0, 2), np.uint64))


def _split_two_columns(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if table.ndim != 2 or table.shape[1] != 2:
        raise ValueError(f"expected two columns (supervoxel, body), got shape {list(table.shape)}")
    return table[:, 0], table[:, 1]


def _unsigned(column: np.ndarray, url: str) -> np.ndarray:
    if column.dtype.kind not in "ui":
        raise InputError(f"agglomeration {url}: ids must be integers, got {column.dtype}")
    if column.dtype.kind == "i" and column.size and column.min() < 0:
        raise InputError(f"agglomeration {url}: negative id {int(column.min())}")
    return column.astype(np.uint64)


def _one_body_each(supervoxels: np.ndarray, bodies: np.ndarray, url: str) -> tuple[np.ndarray, np.ndarray]:
    if supervoxels.size and supervoxels.min() == 0:
        raise InputError(f"agglomeration {url}: supervoxel id 0 is background and cannot have a body")
    order = np.lexsort((bodies, supervoxels))
    supervoxels, bodies = supervoxels[order], bodies[order]
    keep = np.ones(supervoxels.size, dtype=bool)
    keep[1:] = (supervoxels[1:] != supervoxels[:-1]) | (bodies[1:] != bodies[:-1])
    supervoxels, bodies = supervoxels[keep], bodies[keep]
    clash = np.flatnonzero(supervoxels[1:] == supervoxels[:-1])
    if clash.size:
        sv = int(supervoxels[clash[0]])
        raise InputError(f"agglomeration {url}: supervoxel {sv} is mapped to two bodies ({clash.size} such rows)")
    return supervoxels, bodies


def shard_index(supervoxels: np.ndarray) -> dict:
    """``{"rows", "shards": [[first supervoxel, name], ...]}`` of a sorted table's shards."""
    starts = range(0, supervoxels.size, SHARD_ROWS)
    return {"rows": int(supervoxels.size), "shards": [[int(supervoxels[s]), str(n)] for n, s in enumerate(starts)]}


def write_shards(graph: str, supervoxels: np.ndarray, bodies: np.ndarray) -> None:
    """Write the sorted table under ``<graph>/agglomeration/`` as ``shard_index`` names it."""
    for _, name in shard_index(supervoxels)["shards"]:
        rows = slice(int(name) * SHARD_ROWS, (int(name) + 1) * SHARD_ROWS)
        chunkfile.write(
            storage.join(graph, AGGLOMERATION, name),
            {"supervoxels": supervoxels[rows], "bodies": bodies[rows]},
        )


def lookup_bodies(graph: str, index: dict | None, supervoxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(body, listed) per supervoxel, reading only the shards that can hold them."""
    supervoxels = np.asarray(supervoxels, dtype=np.uint64)
    bodies = np.zeros(supervoxels.size, dtype=np.uint64)
    listed = np.zeros(supervoxels.size, dtype=bool)
    if not index or not index["shards"] or not supervoxels.size:
        return bodies, listed
    firsts = np.array([first for first, _ in index["shards"]], dtype=np.uint64)
    shard_of = np.searchsorted(firsts, supervoxels, side="right") - 1
    for shard in np.unique(shard_of[shard_of >= 0]):
        table = chunkfile.read(storage.join(graph, AGGLOMERATION, index["shards"][shard][1]))
        sel = np.flatnonzero(shard_of == shard)
        pos = np.minimum(np.searchsorted(table["supervoxels"], supervoxels[sel]), table["supervoxels"].size - 1)
        hit = table["supervoxels"][pos] == supervoxels[sel]
        bodies[sel[hit]] = table["bodies"][pos[hit]]
        listed[sel[hit]] = True
    return bodies, listed
