"""A fast fake of both services (fiji and emwrite) for dry runs and fault drills.

Every endpoint of the stage table (``emprocess.registry``) is served: it checks the payload against
the stage's payload model, as the real service does (422 naming the field), and answers an instance
of the stage's result model without reading or writing data: ``/align`` reports identity models
found for every pair (slice size from ``--slice-size``), every other endpoint the result model's
least value (zeros, empty lists, no files written). ``--fail-rate`` answers that fraction of calls
with 503 (seeded, so a drill is repeatable) and ``--latency`` delays every answer, to exercise the
batch operator's retries and the pools. Point both connections at it:

    python moc_server.py --port 8000 --fail-rate 0.1 --latency 0.2
    AIRFLOW_CONN_ALIGN_CLOUD_RUN=http://127.0.0.1:8000 AIRFLOW_CONN_IMG_WRITE=http://127.0.0.1:8000

A dry run checks the orchestration, not the outputs: alignment, warp and pyramid run through (the
in-process stages write the transforms and the report), while a ChunkedGraph cannot, as its layers
are planned from the graph meta that ``cg.meta`` writes.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import types
import typing

import uvicorn
from fastapi import Body, FastAPI, HTTPException
from pydantic import BaseModel

from emprocess import registry
from emprocess.errors import InputError
from emprocess.stages import Stage

IDENTITY = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def fake_pair(width: int, height: int) -> dict:
    model = {"found": True, "matrix": IDENTITY, "inliers": 100, "residual_px": 0.0}
    measures = {"std": 40.0, "saturated": 0.0, "focus": 500.0}
    return {
        "measures1": dict(measures), "measures2": dict(measures), "size1": [width, height],
        "size2": [width, height], "features1": 1000, "features2": 1000,
        "candidates": 200, "attempts": 1, "attempt": 1, "affine": dict(model), "translation": dict(model),
    }


def fake_align(payload: dict, width: int, height: int) -> dict:
    if "images" in payload:
        return {"pairs": [{"z": z, **fake_pair(width, height)} for z in payload["z"][:-1]]}
    return fake_pair(width, height)


def least(annotation, constraints=()) -> object:
    """The least value of a type that meets its constraints: 0 (or its lower bound), "", False, a
    list of as few least items as it may hold, {}, None when optional, a model of least fields."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        return least(base, (*constraints, *metadata))
    bounds = [c for m in constraints for c in (getattr(m, "metadata", None) or [m])]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return None if type(None) in args else least(args[0], constraints)
    if origin is typing.Literal:
        return typing.get_args(annotation)[0]
    if origin in (list, tuple, set):
        length = max([getattr(c, "min_length", 0) or 0 for c in bounds], default=0)
        return [least(typing.get_args(annotation)[0]) for _ in range(length)]
    if origin is dict:
        return {}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return least_model(annotation)
    if annotation in (int, float):
        low = max([b for c in bounds for b in (getattr(c, "ge", None), getattr(c, "gt", None)) if b is not None],
                  default=0)
        return annotation(low) + (1 if any(getattr(c, "gt", None) is not None for c in bounds) else 0)
    return {str: "", bool: False}.get(annotation)


def least_model(model: type[BaseModel]) -> dict:
    return {name: least(field.annotation, field.metadata) if field.is_required()
            else field.get_default(call_default_factory=True)
            for name, field in model.model_fields.items()}


def fake_reply(stage: Stage, payload: dict, slice_size: tuple[int, int]) -> dict:
    """A valid result of ``stage`` for ``payload`` (checked against the result model)."""
    aligns = stage.work is registry.get("align.pairs").work  # align.pairs and align.bridge
    reply = fake_align(payload, *slice_size) if aligns else least_model(stage.result)
    return stage.parse_result(reply).model_dump(mode="json")


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

    def endpoint(stage: Stage):
        def answer(payload: dict = Body(...)) -> dict:
            maybe_fail()
            try:
                stage.parse_payload(payload)
            except InputError as err:
                raise HTTPException(status_code=422, detail=str(err)) from None
            return fake_reply(stage, payload, slice_size)

        return answer

    served: dict[str, Stage] = {}
    for stage in registry.table():
        if stage.service is not None:
            served.setdefault(stage.endpoint, stage)
    for path, stage in served.items():
        app.post(path, name=stage.name)(endpoint(stage))
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
