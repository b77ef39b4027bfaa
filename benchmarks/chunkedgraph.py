"""ChunkedGraph ingest (and meshing, skeletons) throughput and memory against the single-process floor.

For each dataset size: a synthetic supervoxel volume (wavy bricks of ~10³ voxels, so ≥ 200k
supervoxels at 1024×1024×256) and a table joining rows of bricks into long bodies (along x across the
whole volume, along y, and along z), written as a precomputed watershed. Then:

- ingest: cg.meta and every layer in-process on 2 long-lived worker processes (code imported
  before timing, as in the services);
- flatten: the root-ID segmentation, timed apart (it is output, not graph building);
- meshing: the bodies' multi-resolution meshes, every layer, timed apart too, with the files it
  wrote (the sharded output, and the pending fragments and shard entries in tmp);
- skeletons: kimimaro per chunk and the merge per shard, timed apart, with the files they wrote;
- floor, in the same run: read the volume once, ``cc3d.contacts`` on all of it, and scipy connected
  components on the whole graph in one process;
- peak RSS of each job, measured in a second pass where every job runs in a fresh process (Linux
  VmHWM, reset once the code is imported), so no job is charged for what an earlier one left behind.

Usage: ``python benchmarks/chunkedgraph.py [--sizes 512x512x256,1024x1024x256] [--chunk 256] [--dir D]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import cc3d
import fastremap
import numpy as np
import tensorstore as ts
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from emprocess import registry, storage
from emprocess.chunkedgraph.stages import STAGES
from emprocess.meshing.stages import STAGES as MESH_STAGES
from emprocess.skeletons.stages import STAGES as SKELETON_STAGES
from emprocess.stages import RunContext

CELL = 10  # supervoxel brick side in voxels
WORKERS = 2


def wavy_index(coordinate: np.ndarray, wave: np.ndarray) -> np.ndarray:
    return ((coordinate + wave) // CELL).astype(np.int64)


def smooth_wave(rng, shape, amplitude=3.0, period=40) -> np.ndarray:
    """A smooth random field over a 2D plane (bilinear upsampling of coarse noise)."""
    coarse = rng.uniform(-amplitude, amplitude, (shape[0] // period + 2, shape[1] // period + 2))
    u = np.arange(shape[0]) / period
    v = np.arange(shape[1]) / period
    iu, iv, fu, fv = u.astype(int), v.astype(int), (u % 1)[:, None], (v % 1)[None, :]
    c = coarse
    return (
        c[iu][:, iv] * (1 - fu) * (1 - fv)
        + c[iu + 1][:, iv] * fu * (1 - fv)
        + c[iu][:, iv + 1] * (1 - fu) * fv
        + c[iu + 1][:, iv + 1] * fu * fv
    )


def write_dataset(root: Path, size: tuple[int, int, int]) -> tuple[str, str, int]:
    """Write the watershed and the table; return their URLs and the supervoxel count."""
    rng = np.random.default_rng(0)
    cells = [s // CELL + 2 for s in size]
    wave_x = smooth_wave(rng, (size[1], size[2]))  # shifts x boundaries, varies over (y, z)
    wave_y = smooth_wave(rng, (size[0], size[2]))
    wave_z = smooth_wave(rng, (size[0], size[1]))
    url = f"file://{root}/watershed"
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": storage.kvstore_spec(url),
        "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
        "scale_metadata": {
            "size": list(size),
            "voxel_offset": [0, 0, 0],
            "resolution": [8, 8, 8],
            "chunk_size": [64, 64, 64],
            "encoding": "raw",
        },
        "create": True,
        "delete_existing": True,
    }
    store = ts.open(spec, context=storage.context()).result()
    x, y = np.arange(size[0])[:, None, None], np.arange(size[1])[None, :, None]
    present = []
    for z0 in range(0, size[2], 64):
        z = np.arange(z0, min(z0 + 64, size[2]))[None, None, :]
        ix = wavy_index(x, wave_x[None, :, z0 : z0 + z.shape[2]])
        iy = wavy_index(y, wave_y[:, None, z0 : z0 + z.shape[2]])
        iz = wavy_index(z, wave_z[:, :, None])
        labels = ((ix + 1) * cells[1] + iy + 1) * cells[2] + iz + 1
        present.append(fastremap.unique(labels))
        store[:, :, z0 : z0 + z.shape[2], 0].write(labels.astype(np.uint64)).result()
    os.sync()  # let the 2 GB of writes settle before anything is timed
    supervoxels = np.unique(np.concatenate(present)).astype(np.uint64)
    iz = supervoxels.astype(np.int64) - 1
    iz, iy, ix = iz % cells[2], (iz // cells[2]) % cells[1], iz // (cells[1] * cells[2])
    body = np.full(supervoxels.size, -1, dtype=np.int64)
    along_x = (iy + iz) % 3 == 0  # whole rows along x: objects crossing every x chunk boundary
    along_y = ~along_x & ((ix + iz) % 4 == 0)
    along_z = ~along_x & ~along_y & ((ix + iy) % 5 == 0)
    body[along_x] = 1_000_000 + iy[along_x] * cells[2] + iz[along_x]
    body[along_y] = 2_000_000 + ix[along_y] * cells[2] + iz[along_y]
    body[along_z] = 3_000_000 + ix[along_z] * cells[1] + iy[along_z]
    listed = body >= 0
    np.save(root / "bodies.npy", np.stack([supervoxels[listed], body[listed].astype(np.uint64)], axis=1))
    return url, f"file://{root}/bodies.npy", int(supervoxels.size)


def _reset_peak() -> float:
    """Restart the process's peak-RSS count; return the RSS (MB) it starts from."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def warm_worker() -> None:
    """Import the stage code up front: the services that run these jobs are long-lived processes."""
    import emprocess.chunkedgraph.stages  # noqa: F401
    import emprocess.meshing.stages  # noqa: F401
    import emprocess.skeletons.stages  # noqa: F401


def run_job(args: tuple[str, dict]) -> tuple[dict, float, float, float]:
    """One mini-task in a worker process: (result, seconds, RSS before, peak RSS of this job) in MB."""
    name, payload = args
    stage = registry.get(name)
    before = _reset_peak()
    start = time.perf_counter()
    result = stage.execute(payload)
    return result, time.perf_counter() - start, before, _status_mb("VmHWM")


def ingest(ctx: RunContext, pool, names: list[str]) -> dict[str, dict]:
    """Run the named stages in order on the pool (every job, cached or not); per stage: wall
    seconds, jobs, slowest job, and the largest RSS a worker had before a job and during one."""
    report = {}
    for stage in map(registry.get, names):
        tasks = stage.plan(ctx)
        if not tasks:
            continue
        start = time.perf_counter()
        outcomes = pool.map(run_job, [(stage.name, task["payload"]) for task in tasks], chunksize=1)
        for task, (result, *_) in zip(tasks, outcomes):
            storage.write_json(ctx.cache_url(stage.name, task["key"]), result)
        report[stage.name] = {
            "seconds": time.perf_counter() - start,
            "jobs": len(tasks),
            "job_seconds": max(seconds for _, seconds, _, _ in outcomes),
            "before_mb": max(before for _, _, before, _ in outcomes),
            "peak_mb": max(peak for _, _, _, peak in outcomes),
        }
    return report


def floor(watershed: str, table_url: str) -> float:
    """Seconds to read the volume once, take all contacts and components in one process."""
    start = time.perf_counter()
    spec = {"driver": "neuroglancer_precomputed", "kvstore": storage.kvstore_spec(watershed), "scale_index": 0}
    volume = ts.open(spec, context=storage.context()).result()[..., 0].read(order="F").result()
    contacts = cc3d.contacts(volume, connectivity=6, surface_area=False)
    del volume
    pairs = np.array(list(contacts), dtype=np.uint64)
    table = np.load(storage.parse(table_url).path)
    ids = np.unique(pairs)
    body = np.arange(ids.size, dtype=np.int64) + (1 << 40)  # unlisted: own body
    pos = np.searchsorted(ids, table[:, 0])
    body[pos] = table[:, 1].astype(np.int64)
    a, b = np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1])
    active = body[a] == body[b]
    matrix = coo_matrix((np.ones(active.sum()), (a[active], b[active])), shape=(ids.size, ids.size))
    connected_components(matrix, directed=False)
    return time.perf_counter() - start


def bench(size: tuple[int, int, int], chunk: int, root: Path, timing_pool, memory_pool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    watershed, table, count = write_dataset(root, size)
    written = time.perf_counter() - start
    print(f"\n== {'x'.join(map(str, size))}: {count} supervoxels, chunk {chunk}³ (data written in {written:.1f} s)")
    conf = {
        "id": "bench",
        "image": "img%05d.png",
        "minz": 0,
        "maxz": size[2] - 1,
        "source": f"file://{root}/src",
        "stages": ["chunkedgraph", "meshing", "skeletons"],
        "segmentation": {"watershed": watershed, "agglomeration": table, "chunk_size": [chunk] * 3},
    }
    ctx = RunContext.create(conf, f"bench-{size[0]}")
    graph = [s.name for s in STAGES if s.name != "cg.flatten"]
    meshing = [s.name for s in MESH_STAGES]
    skeletons = [s.name for s in SKELETON_STAGES]
    timed = {**ingest(ctx, timing_pool, graph), **ingest(ctx, timing_pool, ["cg.flatten"]),
             **ingest(ctx, timing_pool, meshing), **ingest(ctx, timing_pool, skeletons)}
    floor_seconds = min(floor(watershed, table) for _ in range(2))  # the floor's best of two
    memory = ingest(ctx, memory_pool, list(timed))  # again, one fresh process per job: identical bytes
    for name, r in timed.items():
        m = memory[name]
        print(
            f"  {name:11s} {r['jobs']:3d} jobs {r['seconds']:6.1f} s, slowest job {r['job_seconds']:4.1f} s; "
            f"peak RSS of a job {m['peak_mb']:5.0f} MB ({m['before_mb']:.0f} MB of it is the process before the job)"
        )
    ingest_seconds = sum(r["seconds"] for name, r in timed.items() if name in graph)
    with_flatten = ingest_seconds + timed["cg.flatten"]["seconds"]
    print(f"  ingest (cg.meta + all layers, in-process, {WORKERS} workers): {ingest_seconds:.1f} s")
    print(f"  floor (read once + cc3d contacts + scipy components, 1 process): {floor_seconds:.1f} s")
    ratio, ratio_with_flatten = ingest_seconds / floor_seconds, with_flatten / floor_seconds
    print(f"  ingest / floor = {ratio:.2f} (target ≤ 4); with cg.flatten {ratio_with_flatten:.2f}")
    meshing_seconds = sum(r["seconds"] for name, r in timed.items() if name in meshing)
    bodies = storage.read_json(ctx.cache_url("mesh.meta", "meta"))["bodies"]
    mesh_files, tmp_files = (len(storage.listdir(url)) for url in (ctx.locations.meshes, ctx.locations.pending_meshes))
    print(f"  meshing (mesh.meta + every layer, {WORKERS} workers): {meshing_seconds:.1f} s wall; {bodies} bodies, "
          f"{mesh_files} files written to the mesh folder (info + shards), {tmp_files} to tmp")
    skeleton_seconds = sum(r["seconds"] for name, r in timed.items() if name in skeletons)
    skeleton_files, pieces = (len(storage.listdir(url)) for url in (ctx.locations.skeletons,
                                                                     ctx.locations.pending_skeletons))
    print(f"  skeletons (skel.meta + chunks + merge, {WORKERS} workers): {skeleton_seconds:.1f} s wall; "
          f"{skeleton_files} files written to the skeleton folder (info + shards), {pieces} piece files to tmp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512x512x256,1024x1024x256", help="comma-separated XxYxZ sizes")
    parser.add_argument("--chunk", type=int, default=256, help="graph chunk side (power of two)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as scratch,
        spawn.Pool(WORKERS, warm_worker) as timing_pool,
        spawn.Pool(WORKERS, warm_worker, maxtasksperchild=1) as memory_pool,
    ):
        for size in sizes:
            bench(size, args.chunk, (args.dir or Path(scratch)) / "x".join(map(str, size)), timing_pool, memory_pool)


if __name__ == "__main__":
    main()
