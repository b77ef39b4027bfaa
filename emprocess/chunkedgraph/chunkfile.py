"""The one immutable file each chunk job writes: named numpy arrays in a deterministic container.

Not ``.npz``: zip entries carry timestamps, and a re-run must rewrite identical bytes. Layout:
``MAGIC``, an 8-byte little-endian header length, a JSON header (name → dtype, shape, in name
order) and the zlib-compressed concatenation of the arrays in C order, little-endian. A file that
does not decode (cut short, overwritten) is an InputError naming it: re-reading cannot mend it.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

from emprocess import storage
from emprocess.stages import InputError

MAGIC = b"EMCG1\n"


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    names = sorted(arrays)
    normalized = [np.ascontiguousarray(arrays[n], dtype=np.asarray(arrays[n]).dtype.newbyteorder("<")) for n in names]
    header = {n: {"dtype": a.dtype.str, "shape": list(a.shape)} for n, a in zip(names, normalized)}
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = zlib.compress(b"".join(a.tobytes() for a in normalized), 1)
    return MAGIC + len(head).to_bytes(8, "little") + head + body


def decode(data: bytes, source: str = "chunk file") -> dict[str, np.ndarray]:
    if not data.startswith(MAGIC):
        raise InputError(f"{source}: not a chunkedgraph chunk file")
    try:
        return _decode(data)
    except (ValueError, TypeError, KeyError, AttributeError, zlib.error) as err:
        raise InputError(f"{source}: corrupt chunkedgraph chunk file ({type(err).__name__}: {err})") from None


def _decode(data: bytes) -> dict[str, np.ndarray]:
    start = len(MAGIC) + 8
    head_len = int.from_bytes(data[len(MAGIC) : start], "little")
    header = json.loads(data[start : start + head_len])
    body = zlib.decompress(data[start + head_len :])
    arrays, offset = {}, 0
    for name in sorted(header):
        dtype, shape = np.dtype(header[name]["dtype"]), header[name]["shape"]
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
    if offset != len(body):
        raise ValueError(f"{len(body)} bytes of arrays, the header describes {offset}")
    return arrays


def write(url: str, arrays: dict[str, np.ndarray]) -> None:
    storage.write(url, encode(arrays))


def read(url: str) -> dict[str, np.ndarray]:
    """Arrays of the file at ``url``; FileNotFoundError names the URL when it is missing."""
    return decode(storage.read(url), url)
