"""Pyramid throughput and memory: the /ngshard work against CloudVolume + igneous and a JPEG floor.

Builds an EM-like 1024×1024×DEPTH volume (cell membranes that drift with z, texture and shot noise;
about 0.4 JPEG bytes per voxel at quality 90, like real FIB-SEM) as the aligned zarr volume, then
prints from one run:

* the ``pyramid.shard`` work (one block, every block scale), JPEG only and JPEG + raw;
* CloudVolume writing the same volume (JPEG, 64³ chunks, quality set explicitly) plus igneous
  2×2×2 downsampling (unsharded: that is what that pipeline produces), and the ratio;
* a JPEG-encode floor: 64³ chunks, already gathered into contiguous arrays, through the fastest
  installed encoder (simplejpeg, OpenCV, imagecodecs), one thread, CPU time: over scale 0 (the floor
  the target is stated against) and over all the block's scales (the chunks the block work itself
  must encode, 1.14× scale 0's); then over scale 0 again with every usable core encoding at once, per
  core of wall time (cores working together are each slower here than one alone: the floor of a
  per-core figure from wall time); and, for reference, tensorstore's precomputed driver encoding
  scale 0 alone into memory (why the pipeline encodes its chunks itself);
* what faulting in fresh memory costs here, and how much more of it a cold run faults than a warm one;
* with ``--full-block``, the peak RSS of the work on a full 1024³ block;
* with ``--big-slice N``, time and peak RSS of the ``align.warp`` work on one N×N 16-bit slice
  (target: 20k×20k within 4 GB).

Each pipeline runs in a fresh process, first "cold" (every buffer faults in anew, threads and
connections start), then "warm" ``--warm-runs`` times, as a worker sees each block after its first
(a run's blocks are many per worker). "Per core" is given two ways: input MB per CPU-second (CPU
time of the process and its children; the fair figure on a shared box), compared with one thread's
floor, and input MB/s of wall time divided by the cores the pipeline may use, compared with the
all-cores floor (and, stricter, with one thread's).

This box's speed drifts by ±15% over minutes, so the share of the floor is not the best run over the
best floor measured at another time: right after each JPEG-only run, its process measures the floor
again, and the share printed is the median over all runs of each run against its own floor.

Targets (issue 4): ≥ 3× CloudVolume + igneous, ≥ 60% of the JPEG floor, peak RSS ≤ 2.5 GB per block.
The floor share is read for a warm worker (the steady state of a run's many blocks), both per
CPU-second and per core of wall time; the cold figures show what a fresh worker's first block pays.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median
from typing import Iterator

import cv2
import numpy as np

from emprocess.cpus import usable_cpus
from emprocess.pyramid.downsample import mean2
from emprocess.pyramid.layout import PyramidLayout
from emprocess.pyramid.meta import write_info
from emprocess.pyramid.stages import SHARD, WARP
from emprocess.pyramid.writers import ALIGNED_CHUNKS, open_zarr

QUALITY = 90
SIDE = 1024
CORES = usable_cpus()


def em_slices(z0: int, z1: int, seed: int = 0) -> np.ndarray:
    """Slices z0..z1 of the EM-like volume, (z, y, x) uint8; deterministic in (z, seed)."""
    rng = np.random.default_rng(seed)
    fields = [cv2.GaussianBlur(rng.standard_normal((SIDE, SIDE)).astype(np.float32), (0, 0), 12) for _ in range(2)]
    out = np.empty((z1 - z0, SIDE, SIDE), np.uint8)
    for i, z in enumerate(range(z0, z1)):
        angle = z * 0.02
        cells = np.cos(angle) * fields[0] + np.sin(angle) * fields[1]
        membrane = np.exp(-(cells / (0.12 * cells.std())) ** 2)
        noise = np.random.default_rng((seed, z))
        texture = cv2.GaussianBlur(noise.standard_normal((SIDE, SIDE)).astype(np.float32), (0, 0), 1.2)
        image = 150 - 90 * membrane + 12 * texture / texture.std() + 8 * noise.standard_normal((SIDE, SIDE))
        out[i] = np.clip(image, 0, 255)
    return out


def build_aligned(url: str, depth: int) -> None:
    volume = open_zarr(url, (depth, SIDE, SIDE), ALIGNED_CHUNKS, create=True)
    for z in range(0, depth, 64):
        data = em_slices(z, min(z + 64, depth))
        volume[z:z + len(data)].write(data).result()


def volume_layout(depth: int) -> PyramidLayout:
    """The pyramid of the benchmark's SIDE×SIDE×``depth`` volume (8 nm voxels)."""
    return PyramidLayout((SIDE, SIDE, depth), (0, 0, 0), (8.0, 8.0, 8.0))


def shard_payload(work: Path, depth: int, raw: bool) -> dict:
    layout = volume_layout(depth)
    return {"block": [0, 0, 0], "aligned": f"file://{work}/aligned", "jpeg": f"file://{work}/ours/jpeg",
            "raw": f"file://{work}/ours/raw" if raw else None, "seed": None, "layout": layout.to_json(),
            "jpeg_quality": QUALITY}


def clear_shard_output(work: Path, payload: dict) -> None:
    """An empty output with its infos, as ``pyramid.meta`` leaves it for the blocks."""
    shutil.rmtree(work / "ours", ignore_errors=True)
    layout = PyramidLayout.from_json(payload["layout"])
    write_info(payload["jpeg"], layout, "jpeg", QUALITY)
    if payload["raw"]:
        write_info(payload["raw"], layout, "raw", None)


def best(runs: list[dict]) -> dict:
    """The run that used the least CPU time (the headline figure is MB per CPU-second), with the
    highest peak RSS of them all."""
    return dict(min(runs, key=lambda r: r["cpu"]), peak_rss=max(r["peak_rss"] for r in runs))


def run_children(mode: str, argument: dict, repeats: int) -> list[dict]:
    """What ``mode`` returns, from ``repeats`` fresh processes (so CPU time and peak RSS are each
    run's own)."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, mode, json.dumps(argument)], check=True,
                             capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def by_phase(runs: list[dict]) -> dict[str, list[dict]]:
    """The cold run of each process in ``runs``, and the warm runs of them all."""
    return {"cold": [r["cold"] for r in runs], "warm": [w for r in runs for w in r["warm"]]}


def best_of(runs: list[dict]) -> dict:
    """The best of ``runs`` (of each of the cold and warm runs, for the pipelines that have both)."""
    if "cold" in runs[0]:
        return {phase: best(phase_runs) for phase, phase_runs in by_phase(runs).items()}
    return best(runs)


def run_child(mode: str, argument: dict, repeats: int) -> dict:
    """The best of ``repeats`` fresh processes."""
    return best_of(run_children(mode, argument, repeats))


def reset_peak_rss() -> None:
    """Restart this process's peak RSS from its current RSS (Linux), so that a run's peak is its own,
    not that of an earlier run or of the floor measured after it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def usage() -> tuple[float, int]:
    """(CPU-seconds, page faults) of this process and its children so far."""
    both = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in both), sum(u.ru_minflt + u.ru_majflt for u in both)


def measured(run) -> dict:
    """Wall time, CPU time (children included), page faults and peak RSS of ``run()``, plus what it
    returns."""
    reset_peak_rss()
    (cpu0, faults0), t0 = usage(), time.perf_counter()
    extra = run() or {}
    wall, (cpu1, faults1) = time.perf_counter() - t0, usage()
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"wall": wall, "cpu": cpu1 - cpu0, "faults": faults1 - faults0, "peak_rss": peak * 1024, **extra}


def fresh_memory_cost(size: int = 256 << 20) -> float:
    """CPU-seconds per GB of fresh memory faulted in here: most of what a cold run pays more than a
    warm one. A VM whose host takes back the pages its guest frees pays it again for every new page."""
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pages = np.frombuffer(buffer, np.uint8)
    cpu0 = usage()[0]
    pages[::mmap.PAGESIZE] = 1
    spent = usage()[0] - cpu0
    del pages
    buffer.close()
    return spent / (size / 1e9)


def cold_and_warm(run, cores: int, clear, warm_runs: int = 1, paired=None) -> dict:
    """``run()`` in this process, cold (a fresh process, every buffer faulted in anew) and then
    ``warm_runs`` times warm (memory, threads and caches reused), as a worker that runs a volume's
    many blocks sees them. Each run writes into an output emptied by ``clear()`` (not timed), as a
    run's blocks write new files: replacing the last run's files would add deleting them to the time.
    ``paired()``, if given, runs right after each run and its result is kept with the run."""
    runs = []
    for _ in range(1 + warm_runs):
        clear()
        os.sync()  # the last run's writes and deletions are flushed now, not during this run
        runs.append({**measured(run), "cores": cores})
        if paired is not None:
            runs[-1]["floor"] = paired()
    return {"cold": runs[0], "warm": runs[1:]}


def shard_child(job: dict) -> dict:
    """The block work cold and warm; with ``floor``, the JPEG floor after each run, in this same
    process."""
    work = Path(job["work"])
    payload = shard_payload(work, job["depth"], job["raw"])

    def run() -> None:
        SHARD.execute(payload)

    floor = (lambda: jpeg_floor(payload["aligned"], job["depth"])) if job["floor"] else None
    return cold_and_warm(run, CORES, lambda: clear_shard_output(work, payload), job["warm_runs"], floor)


def cloudvolume_child(job: dict) -> dict:
    """CloudVolume writes scale 0 and igneous builds up to ``scales - 1`` more (2×2×2, JPEG at the
    same quality). Both run with parallel=1: their process pools were slower on a 2-core box, and
    igneous makes a single task for a volume this size anyway. Igneous keeps 64³ chunks whole, so a
    thin volume gets fewer 2×2×2 scales than ours (the missing ones hold under 2% of the data)."""
    from cloudvolume import CloudVolume
    from igneous import task_creation as tc
    from taskqueue import LocalTaskQueue

    work, depth = Path(job["work"]), job["depth"]
    volume = open_zarr(f"file://{work}/aligned", (depth, SIDE, SIDE), ALIGNED_CHUNKS, create=False).read().result()
    xyz = np.ascontiguousarray(volume.transpose(2, 1, 0))
    del volume
    path = f"file://{work}/cloudvolume"
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type="uint8", encoding="jpeg", resolution=[8, 8, 8],
        voxel_offset=[0, 0, 0], volume_size=[SIDE, SIDE, depth], chunk_size=[64, 64, 64])
    info["scales"][0]["jpeg_quality"] = QUALITY

    def run() -> dict:
        cv = CloudVolume(path, info=info, progress=False, parallel=1, compress=False)
        cv.commit_info()
        cv[:, :, :] = xyz
        tasks = tc.create_downsampling_tasks(path, mip=0, num_mips=job["scales"] - 1, factor=(2, 2, 2),
                                             encoding="jpeg", encoding_level=QUALITY, compress=False)
        LocalTaskQueue(parallel=1, progress=False).insert_all(tasks)
        written = CloudVolume(path).info["scales"]
        if any(s.get("jpeg_quality") != QUALITY for s in written):
            raise RuntimeError("CloudVolume/igneous did not keep the JPEG quality")
        return {"scales": len(written)}

    return cold_and_warm(run, 1, lambda: shutil.rmtree(work / "cloudvolume", ignore_errors=True))


def jpeg_floor(aligned_url: str, depth: int) -> dict:
    """Each installed encoder, one thread, CPU time, over the 64³ chunks of the block's scale 0 and
    of its coarser scales (2×2×2 means, not timed), each chunk already a contiguous grayscale image of
    y·z rows, as the precomputed format stores it. The encoders take turns on each row of chunks.
    Then the fastest encoder on scale 0 again, with every usable core encoding a share of each slab's
    chunks at once: the floor of a per-core figure taken from wall time, since cores that work at the
    same time here are each slower than one working alone (shared caches, memory and host).
    Returns the fastest encoder, its input MB per CPU-second over scale 0 and over all the block's
    scales, and its input MB/s per core over scale 0 with all cores encoding."""
    import imagecodecs
    import simplejpeg

    encoders = {
        "simplejpeg": lambda c: simplejpeg.encode_jpeg(c[:, :, None], quality=QUALITY, colorspace="GRAY",
                                                       colorsubsampling="Gray"),
        "opencv": lambda c: cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1],
        "imagecodecs": lambda c: imagecodecs.jpeg8_encode(c, level=QUALITY),
    }

    def rows_of_chunks(volume: np.ndarray) -> Iterator[list[np.ndarray]]:
        depth, height, width = volume.shape
        for z in range(0, depth, 64):
            for y in range(0, height, 64):
                yield [np.ascontiguousarray(volume[z:z + 64, y:y + 64, x:x + 64]).reshape(-1, min(64, width - x))
                       for x in range(0, width, 64)]

    def encode_chunks(volume: np.ndarray, spent: dict[str, float]) -> None:
        for row in rows_of_chunks(volume):
            for name, encode in encoders.items():
                t0 = time.thread_time()
                for chunk in row:
                    encode(chunk)
                spent[name] += time.thread_time() - t0

    layout = volume_layout(depth)
    volume = open_zarr(aligned_url, (depth, SIDE, SIDE), ALIGNED_CHUNKS, create=False)
    scale0 = dict.fromkeys(encoders, 0.0)
    coarse: dict[int, list[np.ndarray]] = {s: [] for s in layout.block_scales if s > 0}
    for z in range(0, depth, 64):
        level = volume[z:z + 64].read().result()
        encode_chunks(level, scale0)
        for parts in coarse.values():
            level = mean2(level)
            parts.append(level)
    block = dict(scale0)
    for parts in coarse.values():
        encode_chunks(np.concatenate(parts), block)
    fastest = min(scale0, key=scale0.get)

    def encode_all(chunks: list[np.ndarray]) -> None:
        for chunk in chunks:
            encoders[fastest](chunk)

    all_cores_wall = 0.0
    with ThreadPoolExecutor(CORES) as pool:
        for z in range(0, depth, 64):
            chunks = [c for row in rows_of_chunks(volume[z:z + 64].read().result()) for c in row]
            t0 = time.perf_counter()
            list(pool.map(encode_all, [chunks[i::CORES] for i in range(CORES)]))
            all_cores_wall += time.perf_counter() - t0
    megabytes = depth * SIDE * SIDE / 1e6
    return {"encoder": fastest, "scale 0": megabytes / scale0[fastest], "block": megabytes / block[fastest],
            "all cores": megabytes / all_cores_wall / CORES}


def big_slice(work: Path, side: int) -> dict:
    """An N×N 16-bit PNG (a tiled EM-like texture) and the warp payload for it: a 0.5° turn."""
    tile = em_slices(0, 1)[0].astype(np.uint16) * 40 + 1000
    image = np.tile(tile, (side // SIDE + 1, side // SIDE + 1))[:side, :side]
    path = work / "big" / "slice.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    del image
    angle = np.deg2rad(0.5)
    url = f"file://{path}"
    return {"z": 0, "slice": url, "source_size": [side, side],
            "transform": [[np.cos(angle), -np.sin(angle), 150.0], [np.sin(angle), np.cos(angle), 50.0]],
            "width": side + 300, "height": side + 300, "depth": 1, "z_index": 0, "clip_limit": 0.02,
            "aligned": f"file://{work}/big/aligned", "thumbnail": f"file://{work}/big/thumbnail.png",
            "intensity": f"file://{work}/big/intensity.json"}


def warp_child(payload: dict) -> dict:
    def run() -> None:
        WARP.execute(payload)

    return {**measured(run), "cores": CORES}


def tensorstore_jpeg_child(job: dict) -> dict:
    """Scale 0 alone encoded by tensorstore's precomputed driver into memory: the ceiling of a
    pipeline that left JPEG encoding to the driver."""
    import tensorstore as ts

    work, depth = Path(job["work"]), job["depth"]
    volume = open_zarr(f"file://{work}/aligned", (depth, SIDE, SIDE), ALIGNED_CHUNKS, create=False).read().result()
    layout = volume_layout(depth)
    scale = layout.scale_info(0, "jpeg", QUALITY)
    scale["chunk_size"] = scale.pop("chunk_sizes")[0]
    spec = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"},
            "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1}, "scale_metadata": scale}

    def run() -> None:
        txn = ts.Transaction()
        target = ts.open(spec, create=True).result().with_transaction(txn)
        target[..., 0].write(volume.transpose(2, 1, 0)).result()
        txn.commit_async().result()

    return {**measured(run), "cores": CORES}


def rates(stats: dict, megabytes: float) -> tuple[float, float]:
    """(MB per CPU-second, MB/s of wall time per usable core)."""
    return megabytes / stats["cpu"], megabytes / stats["wall"] / stats["cores"]


def report(label: str, stats: dict, megabytes: float) -> None:
    per_cpu, per_core = rates(stats, megabytes)
    print(f"  {label:<42} {stats['wall']:6.2f} s  {per_cpu:6.1f} MB/CPU-s  {per_core:6.1f} MB/s/core (wall, "
          f"{stats['cores']} core{'s' if stats['cores'] > 1 else ''})  peak RSS {stats['peak_rss'] / 1e9:.2f} GB")


CHILDREN = {"--run-shard": shard_child, "--run-cloudvolume": cloudvolume_child, "--run-warp": warp_child,
            "--run-tensorstore-jpeg": tensorstore_jpeg_child}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in CHILDREN:
        print(json.dumps(CHILDREN[sys.argv[1]](json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5,
                        help="fresh processes per measurement (the least-CPU run is printed; floor shares are medians)")
    parser.add_argument("--warm-runs", type=int, default=3, help="warm runs of the pipelines in each process")
    parser.add_argument("--full-block", action="store_true", help="also measure a full 1024³ block's peak RSS")
    parser.add_argument("--big-slice", type=int, metavar="N", help="also warp one N×N 16-bit slice")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="emprocess-bench-"))
    try:
        print(f"volume {SIDE}×{SIDE}×{args.depth} uint8, {CORES} cores, JPEG quality {QUALITY}, "
              f"best of {args.repeats}")
        build_aligned(f"file://{work}/aligned", args.depth)
        megabytes = SIDE * SIDE * args.depth / 1e6
        scales = len(volume_layout(args.depth).block_scales)

        job = {"work": str(work), "depth": args.depth, "warm_runs": args.warm_runs}
        jpeg_runs = run_children("--run-shard", {**job, "raw": False, "floor": True}, args.repeats)
        ours = best_of(jpeg_runs)
        both = run_child("--run-shard", {**job, "raw": True, "floor": False}, args.repeats)
        theirs = run_child("--run-cloudvolume", {**job, "scales": scales}, 1)
        for phase in ("cold", "warm"):
            report(f"pyramid.shard, JPEG ({scales} scales), {phase}", ours[phase], megabytes)
            report(f"pyramid.shard, JPEG + raw gzip, {phase}", both[phase], megabytes)
            report(f"CloudVolume + igneous ({theirs[phase]['scales']} scales), {phase}", theirs[phase], megabytes)

        report("tensorstore JPEG encode, scale 0", run_child("--run-tensorstore-jpeg", job, args.repeats), megabytes)
        paired = by_phase(jpeg_runs)
        floors = [run["floor"] for runs in paired.values() for run in runs]
        fastest = Counter(f["encoder"] for f in floors)
        print(f"  JPEG floor, 64³ chunks, 1 thread, scale 0: {min(f['scale 0'] for f in floors):.0f}–"
              f"{max(f['scale 0'] for f in floors):.0f} MB/CPU-s over {len(floors)} runs (fastest: "
              + ", ".join(f"{name} in {count}" for name, count in fastest.items()) + ")")

        extra_faults = median(r["faults"] for r in paired["cold"]) - median(r["faults"] for r in paired["warm"])
        print(f"  fresh memory here: {fresh_memory_cost():.2f} CPU-s per GB faulted in; a cold JPEG run faults "
              f"{extra_faults * mmap.PAGESIZE / 1e9:.2f} GB more than a warm one (medians)")

        print(f"  JPEG floor, 64³ chunks, all {CORES} cores at once, scale 0: "
              f"{min(f['all cores'] for f in floors):.0f}–{max(f['all cores'] for f in floors):.0f} MB/s per core "
              f"(median {median(f['all cores'] / f['scale 0'] for f in floors):.0%} of one thread's MB/CPU-s)")

        target = "target ≥ 60%"
        for phase in ("cold", "warm"):
            ours_cpu, ours_core = rates(ours[phase], megabytes)
            theirs_cpu, theirs_core = rates(theirs[phase], megabytes)
            print(f"{phase}: ratio to CloudVolume + igneous  {ours_cpu / theirs_cpu:5.2f}× per CPU-s, "
                  f"{ours_core / theirs_core:5.2f}× per core (wall)   target ≥ 3×")
            shares = {
                "per CPU-s, of the 1-thread floor": ("scale 0", 0, target),
                "per core (wall), of the all-cores floor": ("all cores", 1, target),
                "per core (wall), of the 1-thread floor": ("scale 0", 1, "(stricter: counts the box's own "
                                                            "parallel slowdown against the pipeline)"),
                f"per CPU-s, of the block's own chunks ({scales} scales)": ("block", 0, "(for reference)"),
            }
            for label, (basis, rate, note) in shares.items():
                share = [rates(run, megabytes)[rate] / run["floor"][basis] for run in paired[phase]]
                print(f"{phase}: share of the JPEG floor {label:<46} {median(share):4.0%} "
                      f"({min(share):.0%}–{max(share):.0%} over {len(share)})   {note}")
        print("  (shares: median over the runs, each against the floor measured right after it in its process)")

        if args.full_block:
            shutil.rmtree(work / "aligned")
            build_aligned(f"file://{work}/aligned", SIDE)
            full = run_children("--run-shard", {**job, "depth": SIDE, "raw": True, "floor": False, "warm_runs": 0},
                                1)[0]["cold"]
            report("full 1024³ block, JPEG + raw gzip", full, SIDE ** 3 / 1e6)
            print(f"peak RSS per full block: {full['peak_rss'] / 1e9:.2f} GB   target ≤ 2.5 GB")
        if args.big_slice:
            warped = run_child("--run-warp", big_slice(work, args.big_slice), 1)
            report(f"align.warp, {args.big_slice}² 16-bit slice", warped, args.big_slice ** 2 * 2 / 1e6)
            print(f"peak RSS for the slice: {warped['peak_rss'] / 1e9:.2f} GB   target ≤ 4 GB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
