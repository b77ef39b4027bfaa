"""How long ``validate.check_slices`` takes on a stack of many slices: in a local folder and in a
bucket of a local moto S3 server.

Each slice is a real 8-bit grayscale PNG of 96² px padded with a private ancillary chunk to just over
images.HEAD_BYTES, so reading its header is one ranged read of HEAD_BYTES, as on real (MB-sized)
slices, plus the 12-byte IEND read; the whole slice is never read. S3 requests go over HTTP to moto, in
a process of its own on this machine: no network latency, but moto's own cost per request (about 5 ms
here, one CPU busy), which bounds the S3 figure; it measures moto more than the check.

Prints, per store: slices, threads, seconds of check_slices (best of ``--repeats``), and ms per slice.
Numbers only, no targets.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from emprocess.align.images import HEAD_BYTES

TEMPLATE = "img%05d.png"
WRITE_BATCH = 500


def padded_png() -> bytes:
    """A 96² grayscale PNG with a private chunk ("emPd") after IHDR, so it outgrows HEAD_BYTES."""
    png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8))[1].tobytes()
    data = bytes(HEAD_BYTES)
    pad = struct.pack(">I", len(data)) + b"emPd" + data + struct.pack(">I", zlib.crc32(b"emPd" + data))
    return png[:33] + pad + png[33:]  # signature + IHDR, then the pad, then the rest


def measure(source: str, slices: int, threads: int, repeats: int) -> float:
    from emprocess.stages import RunContext
    from emprocess.validate import check_slices

    conf = {"id": "bench", "image": TEMPLATE, "minz": 0, "maxz": slices - 1, "source": source}
    ctx = RunContext.create(conf, "manual__2026-01-01T00:00:00+00:00")
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        check_slices(ctx, threads=threads)
        best = min(best, time.perf_counter() - started)
    return best


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own (not to share this one's GIL) with a fresh bucket; the
    environment points every client at it."""
    import boto3
    from botocore.exceptions import EndpointConnectionError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    for _ in range(100):
        try:
            boto3.client("s3").create_bucket(Bucket="validate-bench")
            return server, "s3://validate-bench"
        except EndpointConnectionError:  # not listening yet
            time.sleep(0.1)
    server.kill()
    sys.exit("moto's S3 server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=10_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-s3", action="store_true", help="measure the local folder only")
    args = parser.parse_args()

    from emprocess import storage

    slice_bytes = padded_png()
    print(f"# {args.slices} slices of {len(slice_bytes)} bytes")
    print("store\tslices\tthreads\tseconds\tms_per_slice")
    with tempfile.TemporaryDirectory() as tmp:
        stores = [f"file://{Path(tmp) / 'stack'}"]
        server = None
        if not args.no_s3:
            server, bucket = start_moto()
            stores.append(bucket)
        try:
            for source in stores:
                names = [storage.join(source, TEMPLATE % z) for z in range(args.slices)]
                for start in range(0, len(names), WRITE_BATCH):
                    storage.write_all({name: slice_bytes for name in names[start : start + WRITE_BATCH]})
                for threads in args.threads:
                    seconds = measure(source, args.slices, threads, args.repeats)
                    print(f"{source.split(':')[0]}\t{args.slices}\t{threads}\t{seconds:.2f}\t"
                          f"{1000 * seconds / args.slices:.3f}", flush=True)
        finally:
            if server is not None:
                server.terminate()
                server.wait()


if __name__ == "__main__":
    main()
