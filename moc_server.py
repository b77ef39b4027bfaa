"""A fast fake of both services (fiji and emwrite) for dry runs and fault drills.

Every service endpoint answers a valid, deterministic response without reading or writing data:
``/align`` reports identity models found for every pair (slice size from ``--slice-size``), every
other endpoint acknowledges the mini-task. ``--fail-rate`` answers that fraction of calls with 503
(seeded, so a drill is repeatable) and ``--latency`` delays every answer, to exercise the batch
operator's retries and the pools. Point both connections at it:

    python moc_server.py --port 8000 --fail-rate 0.1 --latency 0.2
    AIRFLOW_CONN_ALIGN_CLOUD_RUN=http://127.0.0.1:8000 AIRFLOW_CONN_IMG_WRITE=http://127.0.0.1:8000

Stages run by the real services (pyramid, ChunkedGraph) write nothing here, so a dry run checks the
orchestration, not the outputs.
"""

from __future__ import annotations

import argparse
import random
import threading
import time

import uvicorn
from fastapi import Body, FastAPI, HTTPException

IDENTITY = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def fake_pair(width: int, height: int) -> dict:
    model = {"found": True, "matrix": IDENTITY, "inliers": 100, "residual_px": 0.0}
    return {
        "size1": [width, height], "size2": [width, height], "features1": 1000, "features2": 1000,
        "candidates": 200, "attempts": 1, "affine": dict(model), "translation": dict(model),
    }


def fake_align(payload: dict, width: int, height: int) -> dict:
    if "images" in payload:
        return {"pairs": [{"z": z, **fake_pair(width, height)} for z in payload["z"][:-1]]}
    return fake_pair(width, height)


def build_app(fail_rate: float = 0.0, latency: float = 0.0, seed: int = 0,
              slice_size: tuple[int, int] = (1024, 1024)) -> FastAPI:
    app = FastAPI(title="emprocess moc server")
    rng = random.Random(seed)
    lock = threading.Lock()

    def maybe_fail() -> None:
        time.sleep(latency)
        with lock:
            fail = rng.random() < fail_rate
        if fail:
            raise HTTPException(status_code=503, detail="moc server: injected failure")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "service": "moc"}

    @app.post("/align")
    def align(payload: dict = Body(...)) -> dict:
        maybe_fail()
        return fake_align(payload, *slice_size)

    @app.post("/{endpoint:path}")
    def acknowledge(endpoint: str, payload: dict = Body(...)) -> dict:
        maybe_fail()
        return {"moc": True, "endpoint": "/" + endpoint, "keys": sorted(payload)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of calls answered 503 (0..1)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slice-size", type=int, nargs=2, default=(1024, 1024), metavar=("W", "H"))
    args = parser.parse_args()
    if not 0 <= args.fail_rate <= 1:
        parser.error("--fail-rate must be between 0 and 1")
    app = build_app(args.fail_rate, args.latency, args.seed, tuple(args.slice_size))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
