"""The skeletons' format and where they lie: the sharded ``neuroglancer_skeletons`` layout and the
pending pieces the chunk jobs hand the merge jobs.

Skeletons are stored under ``<segmentation>/skeletons/`` in ``neuroglancer_uint64_sharded_v1``
shards (``emprocess.sharding``: murmurhash of the root id, sized by skel.meta for the graph's bodies,
and recorded in the skeleton ``info``, where every later job and every reader finds it). Vertices
are voxel centres in nm (identity transform) with a float32 ``radius`` per vertex. A chunk job
writes the pieces of its bodies into one pending file per shard they hash to,
``<tmp>/skeletons/<shard>/<x>_<y>_<z>``, so the merge job of a shard finds its pieces by listing.
"""

from __future__ import annotations

import numpy as np

from emprocess import storage
from emprocess.sharding import ShardingSpec
from emprocess.stages import InputError

RADIUS = {"id": "radius", "data_type": "float32", "num_components": 1}
IDENTITY = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]


def info(spec: ShardingSpec) -> dict:
    return {"@type": "neuroglancer_skeletons", "transform": IDENTITY, "vertex_attributes": [RADIUS],
            "sharding": spec.to_json(), "spatial_index": None}


def info_url(skeletons: str) -> str:
    return storage.join(skeletons, "info")


def read_sharding(skeletons: str) -> ShardingSpec:
    """The sharding skel.meta chose, from the skeleton ``info``."""
    return ShardingSpec.read(info_url(skeletons))


def pending_folder(pending: str, shard: int) -> str:
    return storage.join(pending, str(shard))


def pending_url(pending: str, shard: int, chunk) -> str:
    x, y, z = (int(c) for c in chunk)
    return storage.join(pending_folder(pending, shard), f"{x}_{y}_{z}")


def encode_pieces(pieces: dict[int, bytes]) -> bytes:
    """A pending file: the count, the roots and the sizes (uint64), then each root's encoded piece,
    in root order (so that a re-run writes identical bytes)."""
    roots = sorted(pieces)
    sizes = [len(pieces[root]) for root in roots]
    header = np.array([len(roots), *roots, *sizes], dtype="<u8").tobytes()
    return header + b"".join(pieces[root] for root in roots)


def decode_pieces(data: bytes, url: str) -> dict[int, bytes]:
    """The pieces of a pending file; one cut short is an InputError naming it (retrying the merge
    cannot mend it: delete it and re-run its chunk)."""
    count = int(np.frombuffer(data[:8], "<u8")[0]) if len(data) >= 8 else -1
    header = 8 * (1 + 2 * count)
    if count < 0 or len(data) < header:
        raise InputError(f"{url}: not a pending skeleton file (cut short)")
    fields = np.frombuffer(data[8:header], "<u8")
    roots, sizes = fields[:count].tolist(), fields[count:].tolist()
    ends = (header + np.cumsum(sizes, dtype=np.int64)).tolist()
    if (ends[-1] if ends else header) != len(data):
        raise InputError(f"{url}: not a pending skeleton file (cut short)")
    return {root: data[start:end] for root, start, end in zip(roots, [header, *ends[:-1]], ends)}
