"""Build a service's FastAPI app from the stages registered for it.

Each stage's endpoint takes its mini-task payload, validated against the stage's payload model, and
answers ``work(payload)``, the stage's result model: both are the endpoint's schemas in OpenAPI. What
a request may do, and how each refusal answers (``errors.http_status``; callers retry only 5xx and
429):

- 413: a body over ``EMPROCESS_MAX_BODY_BYTES``, or a call whose memory estimate exceeds what this
  service gives one call (``EMPROCESS_MEMORY_LIMIT`` / ``EMPROCESS_CONCURRENT_REQUESTS``);
- 422: JSON nested too deep, a missing, unknown or wrong-typed field, a value out of bounds, an
  unusable location, or input data that is unreadable or inconsistent (the message names the field,
  URL or slice, never a credential);
- 403: a location outside ``EMPROCESS_ALLOWED_PREFIXES``, checked as storage will use it
  (normalised, symlinks resolved), both in the payload and on every storage access while serving;
- 404: a missing input file;
- 5xx: only the service's own faults.

A mini-task can take gigabytes (a 1024³ pyramid block ~1.5 GB, a 20k² slice up to 2 GB), so a process
runs at most ``EMPROCESS_CONCURRENT_REQUESTS`` (default 1) at once and further requests wait their
turn instead of running the instance out of memory; ``/healthz`` answers meanwhile.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from containers.limits import BodyLimits
from containers.settings import MAX_JSON_DEPTH, Settings
from emprocess import __version__, registry, storage
from emprocess.errors import http_status
from emprocess.payloads import describe_errors
from emprocess.redact import redact, redact_logs
from emprocess.stages import Stage

log = logging.getLogger("emprocess.service")


def _handler(stage: Stage, settings: Settings, admission: threading.Semaphore):
    def handle(payload):
        try:
            if stage.memory is not None:
                _check_memory(stage, payload, settings)
            with admission:
                return stage.work(payload)
        except HTTPException:
            raise
        except Exception as err:
            status = http_status(err)
            if status is None:  # the service's own fault: a 500, which the caller retries
                raise
            raise HTTPException(status_code=status, detail=redact(str(err))) from None

    handle.__name__ = stage.name.replace(".", "_")
    handle.__doc__ = (stage.work.__doc__ or "").strip().split("\n")[0] or stage.name
    handle.__annotations__ = {"payload": stage.payload, "return": stage.result}
    return handle


def _check_memory(stage: Stage, payload, settings: Settings) -> None:
    needed = stage.memory(payload)
    if needed > settings.memory_per_call:
        raise HTTPException(status_code=413, detail=(
            f"{stage.name}: this call needs about {needed / 1e9:.1f} GB at its peak, more than the "
            f"{settings.memory_per_call / 1e9:.1f} GB this service gives one call (EMPROCESS_MEMORY_LIMIT "
            f"{settings.memory_limit / 1e9:.1f} GB / EMPROCESS_CONCURRENT_REQUESTS {settings.concurrent_requests})"))


def build_app(service: str, stages: list[Stage] | None = None) -> FastAPI:
    """The app serving ``stages`` (by default every stage registered for ``service``). While it is
    served, this process's storage is confined to the allowed prefixes."""
    settings = Settings.from_env()
    admission = threading.Semaphore(settings.concurrent_requests)

    @asynccontextmanager
    async def confined(app: FastAPI):
        storage.confine(settings.allowed_prefixes)
        redact_logs()
        try:
            yield
        finally:
            storage.confine(None)

    app = FastAPI(title=f"emprocess {service}", version=__version__, lifespan=confined)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, max_depth=MAX_JSON_DEPTH)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_errors(err.errors())}, status_code=422)

    @app.exception_handler(storage.OutsideAllowedPrefixes)
    async def outside(request: Request, err: storage.OutsideAllowedPrefixes) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=403)

    @app.get("/healthz")
    async def healthz() -> dict:  # async: answered on the event loop even when every worker thread waits
        return {"ok": True, "service": service, "version": __version__}

    served = {}
    for stage in registry.for_service(service) if stages is None else stages:
        served.setdefault(stage.endpoint, stage)  # graph and mesh layers share one endpoint and work
    for endpoint, stage in served.items():
        app.post(endpoint, name=stage.name, response_model=stage.result)(_handler(stage, settings, admission))
    if not settings.allowed_prefixes:
        log.warning("EMPROCESS_ALLOWED_PREFIXES is empty: every request with a URL will be refused")
    return app
