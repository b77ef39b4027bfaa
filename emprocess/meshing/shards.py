"""The meshes' shard files (``neuroglancer_uint64_sharded_v1``, murmurhash of the root ID).

A root's shard entry is its fragment data followed by its manifest, and the shard's index points at
the manifest (neuroglancer's sharded multi-resolution format: the manifest's fragments are the bytes
just before it). A root's entry is known only to the layer job that finishes it, and roots hash to
shards at random, so each finishing job writes its roots' entries to the tmp location, one file per
shard they fall in (``finished_url``). Once every layer has run, mesh.shards has one job per shard:
it assembles the shard from its folder, in memory (the sharding keeps a shard to a few thousand
bodies), and writes it whole: each shard file is written by that one job, in one PUT, and the shards
are written side by side, by the stage's W workers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from emprocess import sharding, storage
from emprocess.chunkedgraph import chunkfile
from emprocess.chunkedgraph.meta import chunk_url
from emprocess.meshing.contracts import MeshShardPayload, MeshShardResult
from emprocess.meshing.layout import read_sharding, shard_url
from emprocess.stages import InputError

READ_THREADS = 16  # small files read at once (I/O bound)
FINISHED = "shards"  # in the pending meshes: <shard>/layer_<L>/<x>_<y>_<z>, a job's entries of one shard


def finished_url(pending: str, shard: int, layer: int, coords) -> str:
    return chunk_url(storage.join(pending, FINISHED, str(shard)), layer, coords)


def write_finished(pending: str, spec: sharding.ShardingSpec, layer: int, coords,
                   entries: dict[int, tuple[bytes, bytes]]) -> None:
    """The entries (root → (fragment data, manifest)) of the roots a job finished, by shard."""
    roots = np.asarray(sorted(entries), np.uint64)
    shard_of_root = spec.locate(roots)[0]
    files = {}
    for shard in np.unique(shard_of_root).tolist():
        chosen = roots[shard_of_root == shard].tolist()
        files[finished_url(pending, shard, layer, coords)] = chunkfile.encode({
            "root": np.asarray(chosen, np.uint64),
            "fragments_size": np.asarray([len(entries[r][0]) for r in chosen], np.uint64),
            "size": np.asarray([len(entries[r][0]) + len(entries[r][1]) for r in chosen], np.uint64),
            "data": np.frombuffer(b"".join(b"".join(entries[r]) for r in chosen), np.uint8),
        })
    storage.write_all(files)


def write_shard(payload: MeshShardPayload) -> MeshShardResult:
    """mesh.shards work: the shard from every layer job's finished entries of it (none: an empty
    shard, so the mesh folder always holds every shard of its sharding)."""
    spec = read_sharding(payload.mesh)
    if payload.shard >= spec.shards:
        raise InputError(f"shard {payload.shard} is not one of the {spec.shards} of {payload.mesh}")
    folder = storage.join(payload.pending, FINISHED, str(payload.shard))
    urls = [storage.join(folder, name) for name in storage.listdir(folder)]
    entries = []
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for url, arrays in zip(urls, pool.map(chunkfile.read, urls)):
            entries.extend(_entries(url, arrays))
    url = shard_url(payload.mesh, spec, payload.shard)
    storage.write(url, spec.shard_file(entries))
    return MeshShardResult(shard=payload.shard, bodies=len(entries), written=url)


def _entries(url: str, arrays: dict[str, np.ndarray]) -> list[tuple[int, bytes, int]]:
    """(root, fragment data + manifest, where the manifest starts) of a finished-entries file."""
    names = ("root", "fragments_size", "size", "data")
    fits = all(name in arrays for name in names) and len({len(arrays[n]) for n in names[:3]}) == 1
    if not fits or int(arrays["size"].sum()) != arrays["data"].size or (arrays["fragments_size"] > arrays["size"]).any():
        raise InputError(f"{url}: not a file of finished mesh entries (its arrays do not fit together)")
    data = arrays["data"].tobytes()
    ends = np.cumsum(arrays["size"]).tolist()
    return [(root, data[start:end], fragments_size) for root, fragments_size, start, end
            in zip(arrays["root"].tolist(), arrays["fragments_size"].tolist(), [0, *ends], ends)]
