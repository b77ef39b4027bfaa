"""Bad-input cases about segmentation: see ``support.refusals``. The watershed and the table live in the stack
folder (under the run's allowed prefixes); the good watershed is the stack's size, 16 supervoxels in
4×4 columns, stored in 32×32×4 chunks, graphed in 32×32×16 chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorstore as ts
from support.refusals import SIZE, SLICES, Case

from emprocess import run_layout, storage
from emprocess.config import run_key

WATERSHED = "ws"
SHAPE = (SIZE, SIZE, SLICES)
CHUNK = [32, 32, SLICES]
GRAPH_CHUNK = [32, 32, 16]
REUSED_RUN = "manual__2001-01-01T00:00:00+00:00"


def labels(shape=SHAPE, dtype=np.uint32) -> np.ndarray:
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    column = 1 + x // 24 + 4 * (y // 24)
    return np.repeat(column[:, :, None], shape[2], axis=2).astype(dtype)


def write_watershed(src: Path, volume: np.ndarray | None = None, kind="segmentation", channels=1,
                    size=SHAPE, chunk=CHUNK) -> None:
    """A precomputed volume in ``src/ws`` holding ``volume`` (x, y, z), in every channel; with
    ``volume`` None, only its info (of ``size``): a volume without chunk files."""
    dtype = "uint32" if volume is None else str(volume.dtype)
    shape = size if volume is None else volume.shape
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": storage.kvstore_spec(f"file://{src / WATERSHED}"),
        "multiscale_metadata": {"type": kind, "data_type": dtype, "num_channels": channels},
        "scale_metadata": {"size": list(shape), "resolution": [8, 8, 8], "chunk_size": list(chunk), "encoding": "raw"},
        "create": True,
    }
    store = ts.open(spec).result()
    if volume is not None:
        store.write(np.repeat(volume[..., None], channels, axis=3)).result()


def watershed(**kwargs):
    """A damage writing a watershed of ``labels(shape, dtype)`` (other arguments: ``write_watershed``)."""
    shape, dtype = kwargs.pop("shape", SHAPE), kwargs.pop("dtype", np.uint32)
    return lambda src: write_watershed(src, labels(shape, dtype), **kwargs)


def segmentation(table: str | None = None, chunk_size=GRAPH_CHUNK, **conf):
    """A change asking for a graph of ``src/ws`` (and ``src/<table>``), with other conf keys ``conf``."""
    def change(c: dict) -> None:
        seg = {"watershed": f"{c['source']}/{WATERSHED}", "chunk_size": chunk_size}
        if table:
            seg["agglomeration"] = f"{c['source']}/{table}"
        c.update(segmentation=seg, **conf)

    return change


def with_table(name: str, content: bytes | np.ndarray):
    """A damage writing the good watershed and the table ``name`` (bytes, or an array saved as .npy)."""
    def damage(src: Path) -> None:
        write_watershed(src, labels())
        if isinstance(content, np.ndarray):
            np.save(src / name, content)
        else:
            (src / name).write_bytes(content)

    return damage


def info(document: bytes):
    """A damage writing only the watershed's ``info``, as ``document``."""
    def damage(src: Path) -> None:
        (src / WATERSHED).mkdir()
        (src / WATERSHED / "info").write_bytes(document)

    return damage


def truncated_chunk(src: Path) -> None:
    write_watershed(src, labels())
    chunk = src / WATERSHED / "8_8_8" / "32-64_32-64_0-4"
    chunk.write_bytes(chunk.read_bytes()[:100])


def reused_alignment(src: Path) -> None:
    """The transforms of run REUSED_RUN: an aligned canvas 120 px wide."""
    source = f"file://{src}"
    process = run_layout.run_locations(source, run_key(REUSED_RUN, source)).process
    transforms = {"minz": 0, "maxz": SLICES - 1, "width": SIZE + 24, "height": SIZE, "transforms": {},
                  "source_sizes": {}}
    storage.write_json(storage.join(process, "align", "transforms.json"), transforms)


NO_SCALES = json.dumps({"type": "segmentation", "data_type": "uint32", "num_channels": 1, "scales": []}).encode()
GRAPH_ONLY = {"stages": ["chunkedgraph"]}
CSV = "bodies.csv"

CASES = [Case(name, change, damage, expected) for name, change, damage, expected in [
    ("watershed missing", segmentation(), None, ("ws: no precomputed volume there",)),
    ("watershed of uint8", segmentation(), watershed(dtype=np.uint8), ("data_type 'uint8'",)),
    ("watershed of float32", segmentation(), watershed(dtype=np.float32), ("data_type 'float32'",)),
    ("watershed of type image", segmentation(), watershed(kind="image"), ("not a segmentation (type 'image')",)),
    ("watershed with two channels", segmentation(), watershed(channels=2), ("expected one channel",)),
    ("watershed info not JSON", segmentation(), info(b"{not json"), ("ws/info", "not a JSON document")),
    ("watershed without scales", segmentation(), info(NO_SCALES), ("at least one scale",)),
    ("watershed of other depth", segmentation(), watershed(shape=(SIZE, SIZE, SLICES - 1)),
     ("size [96, 96, 3] does not match the run's aligned volume: 4 slices of at least 96x96 px",)),
    ("watershed narrower than the slices", segmentation(), watershed(shape=(SIZE - 16, SIZE, SLICES)),
     ("size [80, 96, 4] does not match the run's aligned volume",)),
    ("watershed wider than unaligned slices", segmentation(skip_align=True), watershed(shape=(SIZE + 8, SIZE, SLICES)),
     ("size [104, 96, 4] does not match the run's aligned volume [96, 96, 4]", "not aligned")),
    ("watershed unlike the reused alignment", segmentation(reuse_alignment=REUSED_RUN),
     lambda src: (reused_alignment(src), write_watershed(src, labels())),
     ("size [96, 96, 4] does not match the run's aligned volume [120, 96, 4]", "transforms.json")),
    ("watershed without chunk files", segmentation(), lambda src: write_watershed(src), ("no chunk files",)),
    ("watershed chunk truncated", segmentation(), truncated_chunk, ("ws", "32-64_32-64_0-4")),
    ("chunk_size giving too many chunks", segmentation(chunk_size=[16, 16, 16], **GRAPH_ONLY),
     lambda src: write_watershed(src, size=(16384, 16384, 64), chunk=[64, 64, 64]),
     ("[1024, 1024, 4] chunks", "at most 2097152")),
    ("chunk_size giving too many layers", segmentation(chunk_size=[16, 16, 16], **GRAPH_ONLY),
     lambda src: write_watershed(src, size=(1 << 17, 16, 16), chunk=[64, 16, 16]), ("need 15 layers",)),
    ("chunk_size side too large", segmentation(chunk_size=[8192, 16, 16]), watershed(), ("at most 4096",)),
    ("agglomeration of three columns", segmentation(CSV), with_table(CSV, b"1,2,3\n"), ("expected two columns",)),
    ("agglomeration garbage CSV", segmentation(CSV), with_table(CSV, b"\x00\x93garbage;;\n"),
     ("bodies.csv: cannot read it as .csv",)),
    ("agglomeration maps a supervoxel to two bodies", segmentation(CSV), with_table(CSV, b"sv,body\n1,5\n2,5\n1,6\n"),
     ("supervoxel 1 is mapped to two bodies",)),
    ("agglomeration with NaN", segmentation(CSV), with_table(CSV, b"1,5\n2,nan\n"), ("'nan'",)),
    ("agglomeration of floats", segmentation("bodies.npy"), with_table("bodies.npy", np.array([[1.0, np.nan]])),
     ("ids must be integers",)),
    ("agglomeration with a negative id", segmentation("bodies.npy"),
     with_table("bodies.npy", np.array([[1, -4]], dtype=np.int64)), ("negative id -4",)),
    ("agglomeration with supervoxel 0", segmentation(CSV), with_table(CSV, b"0,2\n"), ("supervoxel id 0",)),
    ("agglomeration of another suffix", segmentation("bodies.txt"), with_table("bodies.txt", b"1,2\n"),
     ("unsupported file type",)),
    ("agglomeration missing", segmentation(CSV), watershed(), ("bodies.csv: not found",)),
]]
