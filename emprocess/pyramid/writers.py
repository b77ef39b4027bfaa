"""Opening the volumes the pyramid stages read and write, all through tensorstore.

* zarr v3 arrays in the tmp location, (z, y, x) uint8, stored uncompressed: the aligned slices (chunks 1×1024×1024,
  index z = slice − minz) and the block seed (scale 4, one 64³ chunk per block) that the top task
  reads. Every task opens them with create-or-open: tensorstore writes the metadata only if it is
  absent, so workers racing to create identical metadata is safe.
* neuroglancer precomputed scales (x, y, z, channel), opened against the info written by
  ``pyramid.meta``; the expected scale metadata goes in the spec so that tensorstore refuses an info
  from another conf instead of writing into it.

Every chunk is stored even when it equals the fill value, so the files a task writes are exactly the
ones its plan predicts. Tensorstore errors become FileNotFoundError (missing) or InputError
(incompatible or undecodable, see ``emprocess.corrupt``), naming the URL; others stay transient.
"""

from __future__ import annotations

import tensorstore as ts

from emprocess import corrupt, storage
from emprocess.pyramid.layout import CHUNK, PyramidLayout
from emprocess.stages import InputError

# The tmp arrays are stored uncompressed: noisy EM barely compresses (zstd level 1 kept 217 of 256 MB of
# the benchmark volume) while decoding it cost 0.6 CPU-s per 256 MB, a third of a block's pyramid work.
TMP_CODECS = [{"name": "bytes"}]
ALIGNED_CHUNKS = (1, 1024, 1024)
SEED_CHUNKS = (CHUNK, CHUNK, CHUNK)


def open_store(spec: dict, url: str, **options) -> ts.TensorStore:
    """Open a tensorstore spec; missing → FileNotFoundError, incompatible → InputError, naming ``url``."""
    try:
        return ts.open(spec, context=storage.context(), **options).result()
    except ValueError as err:
        if storage.tensorstore_message(err).startswith("NOT_FOUND"):
            raise FileNotFoundError(f"{url}: {storage.tensorstore_message(err)}") from None
        corrupt.raise_for(err, url)


def zarr_spec(url: str, shape: tuple[int, int, int] | None = None, chunks: tuple[int, int, int] | None = None) -> dict:
    spec = {"driver": "zarr3", "kvstore": storage.kvstore_spec(url), "store_data_equal_to_fill_value": True}
    if shape is not None:
        spec["metadata"] = {
            "shape": list(shape),
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
            "chunk_key_encoding": {"name": "default"},
            "codecs": TMP_CODECS,
            "fill_value": 0,
            "dimension_names": ["z", "y", "x"],
        }
    return spec


def zarr_chunk_key(index: tuple[int, int, int]) -> str:
    """The key of chunk ``index`` (z, y, x in chunks) under the array's root (default key encoding)."""
    return "c/" + "/".join(str(i) for i in index)


def open_zarr(url: str, shape: tuple[int, int, int], chunks: tuple[int, int, int], create: bool) -> ts.TensorStore:
    """The (z, y, x) array at ``url``; with ``create``, made if absent. Its shape must be ``shape``."""
    if create:
        return open_store(zarr_spec(url, shape, chunks), url, create=True, open=True)
    volume = open_store(zarr_spec(url), url, open=True)
    if tuple(volume.shape) != tuple(shape):
        raise InputError(f"{url}: shape {tuple(volume.shape)} (z, y, x), expected {tuple(shape)}")
    return volume


def scale_spec(url: str, layout: PyramidLayout, scale: int, encoding: str, jpeg_quality: int | None) -> dict:
    entry = layout.scale_info(scale, encoding, jpeg_quality)
    entry["chunk_size"] = entry.pop("chunk_sizes")[0]
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": storage.kvstore_spec(url),
        "scale_index": scale,
        "scale_metadata": entry,
        "store_data_equal_to_fill_value": True,
    }


def open_scale(url: str, layout: PyramidLayout, scale: int, encoding: str,
               jpeg_quality: int | None = None) -> ts.TensorStore:
    """Scale ``scale`` of the precomputed volume at ``url`` as an (x, y, z) view whose origin is the
    volume's ``voxel_offset`` (channel dropped)."""
    volume = open_store(scale_spec(url, layout, scale, encoding, jpeg_quality), url, open=True)
    return volume[ts.d["channel"][0]].translate_to[0, 0, 0]


def open_shards(url: str, layout: PyramidLayout, scale: int, encoding: str, jpeg_quality: int | None,
                transaction: ts.Transaction) -> ts.KvStore:
    """The shard files of scale ``scale`` as tensorstore's sharded kvstore (keys: big-endian uint64
    chunk ids), for chunks encoded by the caller, in ``transaction``. The scale is opened first so
    that an info from another conf is refused. The kvstore itself stores the chunks as given
    (``data_encoding`` raw): a gzip volume's chunks arrive gzipped."""
    open_scale(url, layout, scale, encoding, jpeg_quality)
    base = storage.kvstore_spec(url)
    base["path"] += layout.scale_key(scale) + "/"
    spec = {"driver": "neuroglancer_uint64_sharded", "base": base, "metadata": layout.sharding(scale, "raw")}
    return ts.KvStore.open(spec, context=storage.context()).result().with_transaction(transaction)


def zyx(xyz) -> tuple[int, int, int]:
    x, y, z = xyz
    return z, y, x
