"""Precomputed shard files read back entry by entry, to say why two files that should be equal differ
(a chunk changed, a chunk only one holds, or the same chunks stored differently)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np


def sharding_of(shard: Path) -> dict:
    """The ``sharding`` spec of the scale a shard file belongs to, from the volume's info file above it."""
    for folder in shard.parents:
        if (folder / "info").is_file():
            scales = json.loads((folder / "info").read_text())["scales"]
            return next(s["sharding"] for s in scales if s["key"] == shard.parent.name)
    raise FileNotFoundError(f"no info file above {shard}")


def entries(shard: Path) -> dict[int, bytes]:
    """Chunk id → stored bytes, from the shard index and its minishard indices (neuroglancer's
    ``neuroglancer_uint64_sharded_v1`` layout)."""
    sharding, data = sharding_of(shard), shard.read_bytes()
    count = 1 << sharding["minishard_bits"]
    index_end = 16 * count
    found = {}
    for start, end in np.frombuffer(data[:index_end], "<u8").reshape(count, 2):
        if start == end:
            continue
        table = data[index_end + int(start):index_end + int(end)]
        if sharding.get("minishard_index_encoding") == "gzip":
            table = gzip.decompress(table)
        ids, offsets, sizes = np.frombuffer(table, "<u8").reshape(3, -1)
        position = index_end
        for chunk, offset, size in zip(np.cumsum(ids), offsets, sizes):
            position += int(offset)
            found[int(chunk)] = data[position:position + int(size)]
            position += int(size)
    return found


def difference(first: Path, second: Path) -> str:
    """What differs between two shard files of one scale, in a sentence per finding."""
    encoding = sharding_of(first).get("data_encoding")
    a, b = entries(first), entries(second)
    lines = [f"{first.name}: {len(a)} vs {len(b)} chunks, {first.stat().st_size} vs {second.stat().st_size} bytes"]
    for chunk in sorted(a.keys() ^ b.keys()):
        lines.append(f"chunk {chunk} only in {'the first' if chunk in a else 'the second'}")
    for chunk in sorted(k for k in a.keys() & b.keys() if a[k] != b[k]):
        one, two = (gzip.decompress(v) if encoding == "gzip" else v for v in (a[chunk], b[chunk]))
        changed = np.flatnonzero(np.frombuffer(one, np.uint8) != np.frombuffer(two, np.uint8)) \
            if len(one) == len(two) else None
        lines.append(f"chunk {chunk}: stored {len(a[chunk])} vs {len(b[chunk])} bytes; decoded "
                     + ("equal" if one == two else f"{len(one)} vs {len(two)} bytes" if changed is None else
                        f"differ in {changed.size} bytes from offset {changed[0]}"))
    if len(lines) == 1:
        lines.append("the same chunks with the same bytes, laid out differently")
    return "; ".join(lines)
