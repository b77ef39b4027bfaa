"""Alignment throughput and memory: seconds per pair and peak RSS of the align.pairs work.

Slices are mosaics of real EM (the 30 ISBI 2012 sections and the two FIB-SEM slices of
../shared/data, 512² each, every tile with its own noise; not mirrored copies, which make RANSAC lock
onto rotations). The second slice of each pair is the first under a known small rotation, scale and
shift, with fresh noise, so every run also prints the recovered transform's corner error.

For each size (1, 4, 16 megapixels by default; ``--sides 20000`` for the 20k × 20k memory check,
minutes per factor) and downsample factor (1, 4), a fresh process describes both slices and registers
them, and prints:
  * slice_s — read + prepare + features of one slice (wall seconds);
  * register_s — matching + both models (wall seconds);
  * pair_s — slice_s + register_s: the cost of one more pair in a run, where each slice's features
    are computed once;
  * cpu_s_per_mp — CPU seconds (all threads) per pair per megapixel of slice: the per-core cost;
  * peak_rss_gb — the process's peak resident memory.
In elastic mode (``--modes elastic``, both by default, side by side) the pair also measures its flow
(``emprocess.align.elastic.flow_json``), twice, as each slice has a flow to z+1 and one to z+2:
  * flow_s — one flow (wall seconds); cpu_s_per_mp then includes both flows;
  * elastic_vs_affine — elastic cpu_s_per_mp over affine's, same size and downsample.
``--relax SLICES`` instead times the spring-mesh relaxation (``emprocess.align.relax``) of SLICES
slices on a GRID × GRID frame grid (a 20k × 20k slice at downsample 4 has a 157² grid) from
synthetic flows: seconds per slice and peak RSS, which bounds one block's memory.

Targets (issue 3): cpu_s_per_mp ≤ 1.0 at downsample 1; peak RSS ≤ 4 GB for any slice up to 20k × 20k.
Targets (issue 18): elastic ≤ 3× affine CPU per pair; the relaxation linear in slices, ≤ 1 GB a block.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from emprocess.cpus import usable_cpus

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TILE = 512
SIDES = (1024, 2048, 4096)  # 1, 4 and 16 megapixels
DOWNSAMPLES = (1, 4)
CORES = usable_cpus()
RELAX_SPACING = 32  # frame px between grid points in the relaxation measurement


def real_tiles() -> list[np.ndarray]:
    names = sorted((SHARED_DATA / "isbi2012" / "image").glob("*.png")) + sorted((SHARED_DATA / "em").glob("*.png"))
    if not names:
        sys.exit(f"{SHARED_DATA} holds no EM slices; the benchmark needs the real reference data")
    return [cv2.imread(str(name), cv2.IMREAD_UNCHANGED)[:TILE, :TILE] for name in names]


def mosaic(side: int, seed: int = 0) -> np.ndarray:
    """A side × side slice of real EM tiles, each with independent Gaussian noise (σ = 6)."""
    tiles = real_tiles()
    rng = np.random.default_rng(seed)
    out = np.empty((side, side), np.uint8)
    k = 0
    for y in range(0, side, TILE):
        for x in range(0, side, TILE):
            h, w = min(TILE, side - y), min(TILE, side - x)
            tile = tiles[k % len(tiles)][:h, :w] + rng.normal(0, 6, (h, w))
            out[y : y + h, x : x + w] = np.clip(tile, 0, 255)
            k += 1
    return out


def known_transform(side: int) -> np.ndarray:
    """0.3° rotation and 0.1 % scale about the centre, then a (23.4, -17.7) px shift."""
    angle = np.radians(0.3)
    linear = 1.001 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([side - 1, side - 1]) / 2
    return np.column_stack([linear, centre - linear @ centre + (23.4, -17.7)])


def write_pair(side: int, folder: Path, bits: int) -> tuple[str, str]:
    """Both slices as uncompressed TIFFs (8-bit, or 16-bit using the full range)."""
    first = mosaic(side)
    second = cv2.warpAffine(first, known_transform(side), (side, side), flags=cv2.INTER_CUBIC)
    noise = np.random.default_rng(1)
    for r0 in range(0, side, TILE):  # fresh noise, band by band to bound memory
        band = second[r0 : r0 + TILE]
        band[:] = np.clip(band + noise.normal(0, 6, band.shape), 0, 255)
    urls = []
    for name, image in (("a.tif", first), ("b.tif", second)):
        if bits == 16:
            image = image.astype(np.uint16) * 257
        assert cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_TIFF_COMPRESSION, 1])
        urls.append(f"file://{folder / name}")
    return urls[0], urls[1]


def measure(first: str, second: str, side: int, downsample: int, mode: str) -> dict:
    """Runs in a fresh process: describe both slices, register them (and measure the flows, elastic),
    report times and memory."""
    from emprocess.align.compose import choose, homogeneous, max_corner_distance
    from emprocess.align.elastic import flow_json
    from emprocess.align.register import load_slice, register

    slice_wall, slice_cpu = [], []
    slices = []
    for url in (first, second):
        wall, cpu = time.perf_counter(), time.process_time()
        slices.append(load_slice(url, downsample))
        slice_wall.append(time.perf_counter() - wall)
        slice_cpu.append(time.process_time() - cpu)
    wall, cpu = time.perf_counter(), time.process_time()
    result = register(*slices)
    register_wall, register_cpu = time.perf_counter() - wall, time.process_time() - cpu
    flow_wall = flow_cpu = 0.0
    if mode == "elastic":
        wall, cpu = time.perf_counter(), time.process_time()
        flow = flow_json(*slices, choose(result).matrix, 1)
        flow_wall, flow_cpu = time.perf_counter() - wall, time.process_time() - cpu
    truth = cv2.invertAffineTransform(known_transform(side))
    error = None
    if result["affine"]["found"]:
        error = max_corner_distance(homogeneous(result["affine"]["matrix"]), homogeneous(truth), [side, side])
    megapixels = side * side / 1e6
    pair_cpu = float(np.mean(slice_cpu)) + register_cpu + 2 * flow_cpu
    extra = {"flow_s": round(flow_wall, 2), "flow_valid": flow["valid"]} if mode == "elastic" else {}
    return {
        "mode": mode,
        "megapixels": round(megapixels, 1),
        "downsample": downsample,
        "slice_s": round(float(np.mean(slice_wall)), 2),
        "register_s": round(register_wall, 2),
        "pair_s": round(float(np.mean(slice_wall)) + register_wall, 2),
        "cpu_s_per_mp": round(pair_cpu / megapixels, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "features": result["features1"],
        "inliers": result["affine"]["inliers"],
        "corner_error_px": None if error is None else round(error, 3),
        **extra,
    }


def measure_relax(slices: int, grid: int) -> dict:
    """Runs in a fresh process: relax ``slices`` slices of synthetic smooth flows with noise."""
    from emprocess.align.relax import BLOCK, relax

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:grid, 0:grid] / 8.0  # 8 px waves about 50 grid points (1.6k px at RELAX_SPACING) long

    def flows(index: int, reach: int) -> np.ndarray | None:
        if index + reach >= slices:
            return None
        field = 8 * np.stack([np.sin(xs + index), np.cos(ys - index)], axis=-1) * reach
        return (field + rng.normal(0, 0.2, field.shape)).astype(np.float32)

    wall, cpu = time.perf_counter(), time.process_time()
    for _ in relax((grid, grid), slices, flows, spacing=RELAX_SPACING):
        pass
    return {"slices": slices, "grid": grid, "block": BLOCK, "s_per_slice": round((time.perf_counter() - wall) / slices, 4),
            "cpu_s_per_slice": round((time.process_time() - cpu) / slices, 4),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=SIDES,
                        help="slice sides in pixels (default: %(default)s)")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8, help="sample depth of the slices")
    parser.add_argument("--modes", nargs="+", choices=("affine", "elastic"), default=("affine", "elastic"))
    parser.add_argument("--relax", type=int, nargs="+", metavar="SLICES", help="time the relaxation instead")
    parser.add_argument("--grid", type=int, default=157, help="the relaxation's grid side (default: %(default)s)")
    parser.add_argument("--measure", nargs=5, metavar=("FIRST", "SECOND", "SIDE", "DOWNSAMPLE", "MODE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--measure-relax", nargs=2, type=int, metavar=("SLICES", "GRID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        first, second, side, downsample, mode = args.measure
        print(json.dumps(measure(first, second, int(side), int(downsample), mode)))
        return
    if args.measure_relax:
        print(json.dumps(measure_relax(*args.measure_relax)))
        return
    if args.relax:
        print(f"relaxation on {CORES} cores")
        for slices in args.relax:
            print(json.dumps(_fresh("--measure-relax", str(slices), str(args.grid))), flush=True)
        return
    print(f"align.pairs on {CORES} cores, {args.bits}-bit slices")
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.sides:
            folder = Path(tmp) / str(side)
            folder.mkdir()
            first, second = write_pair(side, folder, args.bits)
            for downsample in DOWNSAMPLES:
                cost = {}
                for mode in args.modes:
                    line = _fresh("--measure", first, second, str(side), str(downsample), mode)
                    cost[mode] = line["cpu_s_per_mp"]
                    if mode == "elastic" and "affine" in cost:
                        line["elastic_vs_affine"] = round(cost["elastic"] / cost["affine"], 2)
                    print(json.dumps(line), flush=True)


def _fresh(*arguments: str) -> dict:
    """One measurement in a fresh process (its peak RSS is its own): the last line it prints."""
    run = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
