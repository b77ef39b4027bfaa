"""The run layout: the four locations a run writes to, and the name of every file and folder in them.

A run's locations are named after its source and its run key (README, "Outputs"): ``process`` holds
what the run did (its markers, result cache, alignment, report and logs), ``ng`` what neuroglancer
views, ``chunk`` the raw pyramid and the ChunkedGraph, ``tmp`` intermediates, expired after the run.
Every module names what it writes there through this one, so the layout reads in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emprocess.storage.urls import StorageError, Url, join, parse

# --- in the process location ---
INIT_FILE = "init.json"  # conf, versions and locations; written once, so a resumed run keeps its start
COMPLETE_FILE = "complete.json"  # the one marker that the outputs are whole: written last
REPORT_FILES = {"json": "report.json", "html": "report.html"}
CACHE_FOLDER = "cache"  # the result cache: cache/<stage>/<key>.json per finished mini-task
CACHE_SUFFIX = ".json"
LOG_FOLDER = "logs"  # a run's logs, when its process location is a folder
AIRFLOW_LOG = "airflow.log"  # Airflow's log, with all else ``emprocess run`` writes while the run goes
ALIGN_FOLDER = "align"
TRANSFORMS_FILE = f"{ALIGN_FOLDER}/transforms.json"  # what ALIGN hands every later stage; written last of ALIGN's
TRANSFORMS_CSV = f"{ALIGN_FOLDER}/transforms.csv"
PAIRS_FILE = f"{ALIGN_FOLDER}/pairs.json"  # per pair of slices, the model used and its fit
ELASTIC_MAPS = f"{ALIGN_FOLDER}/maps.zarr"  # elastic mode: each slice's displacement grid (zarr3)
INTENSITY_FILE = f"{ALIGN_FOLDER}/intensity.json"  # the stack's 16→8-bit rule
THUMBNAILS = f"{ALIGN_FOLDER}/thumbnails"  # one <z>.png per aligned slice
THUMBNAIL_SUFFIX = ".png"
# --- in the ng location ---
JPEG = "neuroglancer/jpeg"
SEGMENTATION = "neuroglancer/segmentation"  # the root-ID layer
MESH_FOLDER = "mesh"  # in the segmentation, as its info's "mesh" names it
SKELETON_FOLDER = "skeletons"  # in the segmentation, as its info's "skeletons" names it
OME_ZARR = "image.ome.zarr"  # the aligned volume as OME-Zarr, when the conf's formats list it
SEGMENT_PROPERTIES = "segment_properties"  # in the segmentation, as its info's "segment_properties" names it
# --- in the chunk location ---
RAW = "neuroglancer/raw"
CHUNKEDGRAPH = "chunkedgraph"
GRAPH_META_FILE = "meta.json"  # in the chunkedgraph, written last by cg.meta
SUPERVOXELS = "supervoxels"  # in the chunkedgraph: the supervoxel volume
AGGLOMERATION = "agglomeration"  # in the chunkedgraph: the sorted supervoxel → body table's shards
BODY_COUNTS = "body_counts"  # in the chunkedgraph: each cg.flatten job's counts per root, <x>_<y>_<z>
# --- in the tmp location ---
ALIGNED = "aligned"  # the aligned stack (zarr3)
PYRAMID_SEED = "pyramid_seed"  # the last block scale, for pyramid.top
PENDING_MESHES = "mesh"  # mesh fragments passed up to the next layer
PENDING_SKELETONS = "skeletons"  # skeleton pieces of each chunk, by the shard they go to

# What joins a source's name and a location's: S3 bucket names may not hold '_' (AWS refuses them).
RUN_SEPARATOR = {"file": "_", "gs": "_", "s3": "-"}
BUCKET_NAME_MAX = 63


def service_log_name(service: str) -> str:
    """A service's log file, beside Airflow's in the run's log folder."""
    return f"{service}.log"


def layer_chunk(layer: int, coords) -> str:
    """A graph's (or pending meshes') file of one chunk at ``layer``."""
    x, y, z = (int(c) for c in coords)
    return f"layer_{layer}/{x}_{y}_{z}"


def _under(location: str, *names: str) -> property:
    """A file or folder ``names`` under one of the run's four locations."""
    return property(lambda self: join(getattr(self, location), *names))


@dataclass(frozen=True)
class RunLocations:
    """Where one run writes; the properties name what it writes there. Only the four locations are
    fields: ``init.json`` records them as they are."""

    process: str
    ng: str
    chunk: str
    tmp: str

    init = _under("process", INIT_FILE)
    complete = _under("process", COMPLETE_FILE)
    intensity = _under("process", INTENSITY_FILE)
    jpeg = _under("ng", JPEG)
    segmentation = _under("ng", SEGMENTATION)
    meshes = _under("ng", SEGMENTATION, MESH_FOLDER)
    skeletons = _under("ng", SEGMENTATION, SKELETON_FOLDER)
    ome_zarr = _under("ng", OME_ZARR)
    raw = _under("chunk", RAW)
    chunkedgraph = _under("chunk", CHUNKEDGRAPH)
    supervoxels = _under("chunk", CHUNKEDGRAPH, SUPERVOXELS)
    aligned = _under("tmp", ALIGNED)
    pyramid_seed = _under("tmp", PYRAMID_SEED)
    pending_meshes = _under("tmp", PENDING_MESHES)
    pending_skeletons = _under("tmp", PENDING_SKELETONS)

    def all(self) -> list[str]:
        return [self.process, self.ng, self.chunk, self.tmp]

    def report(self, kind: str) -> str:
        """The report's ``kind`` file ("json" or "html")."""
        return join(self.process, REPORT_FILES[kind])

    def cache_dir(self, stage: str) -> str:
        return join(self.process, CACHE_FOLDER, stage)

    def cache_url(self, stage: str, key: str) -> str:
        return join(self.process, CACHE_FOLDER, stage, key + CACHE_SUFFIX)

    def thumbnail(self, z: int) -> str:
        return join(self.process, THUMBNAILS, f"{z}{THUMBNAIL_SUFFIX}")


def process_suffix(scheme: str) -> str:
    """What follows the source's name in its process location's name; each run is a folder in it."""
    return f"{RUN_SEPARATOR[scheme]}process"


def _keyed_suffixes(scheme: str) -> dict[str, str]:
    """What follows the source's name, before the run key, in the locations named per run."""
    s = RUN_SEPARATOR[scheme]
    return {"ng": f"{s}ng{s}", "chunk": f"{s}chunk{s}", "tmp": f"{s}tmp{s}"}


def run_key_room(source: str) -> int | None:
    """How long a run key may be for every bucket named after ``source`` to be a valid name; None
    for folders."""
    u = parse(source)
    if u.scheme == "file":
        return None
    return BUCKET_NAME_MAX - len(u.bucket) - max(map(len, _keyed_suffixes(u.scheme).values()))


def run_locations(source: str, run_key: str) -> RunLocations:
    """Buckets ``B_process/R``, ``B_ng_R``, ``B_chunk_R``, ``B_tmp_R`` (sibling folders for file://;
    ``-`` instead of ``_`` for S3)."""
    suffixes = _keyed_suffixes(parse(source).scheme)
    keyed = {location: _beside(source, suffix + run_key) for location, suffix in suffixes.items()}
    return RunLocations(process=join(process_root(source), run_key), **keyed)


def process_root(source: str) -> str:
    """Where every run of ``source`` has its process folder: bucket ``B_process`` (``B-process`` on S3),
    or the folder ``<source>_process`` beside a source folder."""
    return _beside(source, process_suffix(parse(source).scheme))


def _beside(source: str, suffix: str) -> str:
    """The bucket named after ``source``'s with ``suffix``, or the folder so named beside it."""
    u = parse(source)
    if u.scheme == "file":
        base = Path(u.path)
        return str(Url("file", "", str(base.with_name(base.name + suffix))))
    if u.path:
        raise StorageError(f"{source!r}: source must be a bucket without a path")
    return str(Url(u.scheme, u.bucket + suffix, ""))


def run_prefixes(source: str) -> list[str]:
    """Prefixes for ``storage.is_under`` that cover ``source`` and the locations of every run from it:
    the source's parent folder, or the source bucket and the buckets named after it."""
    u = parse(source)
    if u.scheme == "file":
        return [str(u.parent())]
    return [f"{u.scheme}://{u.bucket}", f"{u.scheme}://{u.bucket}{RUN_SEPARATOR[u.scheme]}*"]
