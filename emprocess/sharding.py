"""Neuroglancer's ``neuroglancer_uint64_sharded_v1`` format for hashed keys (segment IDs): the
shard parameters, where a key goes, and a shard file's bytes.

Tensorstore's ``neuroglancer_uint64_sharded`` kvstore (which writes the pyramid's shards) stores
each key's value whole and points the index at its first byte. Multi-resolution meshes need an entry
whose index points past its start (the fragment data is stored just before the indexed manifest),
so their shards are assembled here. A shard is built whole in memory and written in one PUT.

Layout (``sharded.md``): the shard index (2^minishard_bits × [start, end) of each minishard index,
uint64le, relative to the end of the shard index), then the entries' bytes, then the gzipped
minishard indexes (3 × n uint64le: keys, offsets and sizes, keys and offsets delta-encoded).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from emprocess import storage
from emprocess.errors import InputError

# Shard parameters (``ShardingSpec.for_keys``). The reasoning is CloudVolume's
# ``compute_shard_params_for_hashed`` (hashed keys spread evenly, so preshift is useless; a shard's
# key count sets its minishard count) with a small shard: one job holds a whole shard in memory.
KEYS_PER_SHARD = 2048
KEYS_PER_MINISHARD = 32  # a minishard index of ~0.8 kB: one small read before an entry's bytes
MINISHARD_INDEX_GZIP_LEVEL = 6
MAX_BITS = 32  # of minishard_bits and shard_bits: ~4 billion of each, far beyond any run's bodies


def murmurhash3_x86_128_low64(keys) -> np.ndarray:
    """The low 64 bits of MurmurHash3_x86_128 (seed 0) of each uint64 key's 8 little-endian bytes:
    the format's ``murmurhash3_x86_128`` hash. An 8-byte input is all tail (no 16-byte block)."""
    keys = np.asarray(keys, np.uint64).reshape(-1)
    k1 = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    k2 = (keys >> np.uint64(32)).astype(np.uint32)
    c1, c2, c3 = np.uint32(0x239B961B), np.uint32(0xAB0E9789), np.uint32(0x38B34AE5)
    h2 = _rotl(k2 * c2, 16) * c3
    h1 = _rotl(k1 * c1, 15) * c2
    length = np.uint32(8)
    h1, h2 = h1 ^ length, h2 ^ length
    h3 = h4 = np.full_like(h1, length)
    h1 = h1 + h2 + h3 + h4
    h2, h3, h4 = h2 + h1, h3 + h1, h4 + h1
    h1, h2, h3, h4 = (_fmix(h) for h in (h1, h2, h3, h4))
    h1 = h1 + h2 + h3 + h4
    h2 = h2 + h1
    return h1.astype(np.uint64) | h2.astype(np.uint64) << np.uint64(32)


def _rotl(x: np.ndarray, bits: int) -> np.ndarray:
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


@dataclass(frozen=True)
class ShardingSpec:
    """A murmurhash-sharded spec with gzipped minishard indexes and raw entries."""

    minishard_bits: int
    shard_bits: int

    @classmethod
    def for_keys(cls, count: int) -> "ShardingSpec":
        """The spec for about ``count`` keys: as few shards as keep each under ``KEYS_PER_SHARD``
        keys, and as few minishards as keep each under ``KEYS_PER_MINISHARD``."""
        shard_bits = _bits(count / KEYS_PER_SHARD)
        return cls(minishard_bits=_bits(count / (1 << shard_bits) / KEYS_PER_MINISHARD), shard_bits=shard_bits)

    @classmethod
    def from_json(cls, spec: dict, where: str = "") -> "ShardingSpec":
        """The spec ``spec`` says; InputError (naming ``where`` it was read) unless emprocess wrote it."""
        fields = spec if isinstance(spec, dict) else {}
        expected = cls(fields.get("minishard_bits", -1), fields.get("shard_bits", -1)).to_json()
        if spec != expected or not all(type(spec[bits]) is int and 0 <= spec[bits] <= MAX_BITS
                                       for bits in ("minishard_bits", "shard_bits")):
            raise InputError(f"{where or 'sharding'}: sharding {spec!r} is not one emprocess writes")
        return cls(spec["minishard_bits"], spec["shard_bits"])

    @classmethod
    def read(cls, info_url: str) -> "ShardingSpec":
        """The sharding of the ``info`` at ``info_url`` (a mesh's or skeletons'); InputError naming it
        when that is not an info emprocess wrote."""
        info = storage.read_json(info_url)
        return cls.from_json(info.get("sharding") if isinstance(info, dict) else None, info_url)

    def to_json(self) -> dict:
        return {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0, "hash": "murmurhash3_x86_128",
                "minishard_bits": self.minishard_bits, "shard_bits": self.shard_bits,
                "minishard_index_encoding": "gzip", "data_encoding": "raw"}

    @property
    def shards(self) -> int:
        return 1 << self.shard_bits

    def locate(self, keys) -> tuple[np.ndarray, np.ndarray]:
        """(shard, minishard) of each key."""
        hashed = murmurhash3_x86_128_low64(keys)
        minishard = hashed & np.uint64((1 << self.minishard_bits) - 1)
        shard = (hashed >> np.uint64(self.minishard_bits)) & np.uint64(self.shards - 1)
        return shard.astype(np.int64), minishard.astype(np.int64)

    def shard_name(self, shard: int) -> str:
        """The shard's file name, as readers derive it: hexadecimal, ⌈shard_bits / 4⌉ digits."""
        return f"{shard:0{math.ceil(self.shard_bits / 4)}x}.shard"

    def shard_file(self, entries: Iterable[tuple[int, bytes, int]]) -> bytes:
        """The bytes of a shard holding ``entries`` (key, bytes, start): each entry's bytes are stored
        whole and its key indexes them from ``start`` on. Entries are laid out by minishard, then key,
        so the same entries always give the same bytes."""
        entries = sorted(entries, key=lambda entry: entry[0])
        keys = np.asarray([key for key, _, _ in entries], np.uint64)
        minishards = self.locate(keys)[1]
        order = np.argsort(minishards, kind="stable")
        data, indexes = [], []
        shard_index = np.zeros((1 << self.minishard_bits, 2), "<u8")
        position, index_position = 0, 0  # where the next entry and the next minishard index go
        for minishard in np.unique(minishards):
            chosen = order[minishards[order] == minishard]
            rows = np.zeros((3, len(chosen)), "<u8")  # key, offset, size per entry
            previous_end, previous_key = 0, 0
            for column, i in enumerate(chosen):
                key, value, start = entries[i]
                rows[:, column] = (int(key) - previous_key, position + start - previous_end, len(value) - start)
                data.append(value)
                position += len(value)
                previous_end, previous_key = position, int(key)
            index = gzip.compress(rows.tobytes(), MINISHARD_INDEX_GZIP_LEVEL, mtime=0)
            indexes.append(index)
            shard_index[minishard] = index_position, index_position + len(index)
            index_position += len(index)
        shard_index[shard_index.any(axis=1)] += position  # the minishard indexes follow the entries
        return b"".join([shard_index.tobytes(), *data, *indexes])  # one copy of the shard, not two


def _bits(count: float) -> int:
    """The fewest bits b with 2^b ≥ count."""
    return max(0, math.ceil(math.log2(count))) if count > 1 else 0
