"""Build a service's FastAPI app from the stages registered for it.

Each stage's endpoint takes its mini-task payload as JSON and answers ``work(payload)``. Every URL in
a payload must lie under one of the prefixes in ``EMPROCESS_ALLOWED_PREFIXES`` (comma-separated; see
``storage.is_under``, e.g. ``gs://B,gs://B_*`` for source bucket B and its runs' buckets); others are
refused with 403 before anything is read. Bad input answers 4xx with a message naming
the URL or key (not retried by callers); anything else is 500 (retried).

A mini-task can take gigabytes (a 1024³ pyramid block ~1.5 GB, a 20k² slice up to 2 GB), so a process
runs at most ``EMPROCESS_CONCURRENT_REQUESTS`` (default 1) at once and further requests wait their
turn instead of running the instance out of memory; ``/healthz`` answers meanwhile.
"""

from __future__ import annotations

import logging
import os
import re
import threading

from fastapi import Body, FastAPI, HTTPException

from emprocess import __version__, registry, storage
from emprocess.config import ConfError
from emprocess.stages import InputError, Stage

log = logging.getLogger("emprocess.service")
URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def allowed_prefixes() -> list[str]:
    """``EMPROCESS_ALLOWED_PREFIXES``, each checked now, so that a bad one stops the service at start."""
    prefixes = [p.strip() for p in os.environ.get("EMPROCESS_ALLOWED_PREFIXES", "").split(",") if p.strip()]
    for prefix in prefixes:
        try:
            storage.check_prefix(prefix)
        except storage.StorageError as err:
            raise ValueError(f"EMPROCESS_ALLOWED_PREFIXES: {err}") from None
    return prefixes


def payload_urls(value) -> list[str]:
    """Every string in a payload that looks like a URL."""
    if isinstance(value, dict):
        return [u for v in value.values() for u in payload_urls(v)]
    if isinstance(value, list):
        return [u for v in value for u in payload_urls(v)]
    return [value] if isinstance(value, str) and URL_RE.match(value) else []


def check_urls(payload: dict, prefixes: list[str]) -> None:
    for url in payload_urls(payload):
        try:
            allowed = storage.is_under(url, prefixes)
        except storage.StorageError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        if not allowed:
            raise HTTPException(status_code=403, detail=f"{url} is outside this service's allowed prefixes")


def concurrent_requests() -> int:
    raw = os.environ.get("EMPROCESS_CONCURRENT_REQUESTS", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"EMPROCESS_CONCURRENT_REQUESTS must be a whole number ≥ 1, got {raw!r}")
    return int(raw)


def _handler(stage: Stage, prefixes: list[str], admission: threading.Semaphore):
    def handle(payload: dict = Body(...)) -> dict:
        check_urls(payload, prefixes)
        try:
            with admission:
                return stage.work(payload)
        except FileNotFoundError as err:
            raise HTTPException(status_code=404, detail=str(err)) from None
        except (InputError, ConfError, storage.StorageError) as err:
            raise HTTPException(status_code=422, detail=str(err)) from None

    handle.__name__ = stage.name.replace(".", "_")
    handle.__doc__ = (stage.work.__doc__ or "").strip().split("\n")[0] or stage.name
    return handle


def build_app(service: str, stages: list[Stage] | None = None) -> FastAPI:
    """The app serving ``stages`` (by default every stage registered for ``service``)."""
    prefixes = allowed_prefixes()
    admission = threading.Semaphore(concurrent_requests())
    app = FastAPI(title=f"emprocess {service}", version=__version__)

    @app.get("/healthz")
    async def healthz() -> dict:  # async: answered on the event loop even when every worker thread waits
        return {"ok": True, "service": service, "version": __version__}

    for stage in registry.for_service(service) if stages is None else stages:
        app.post(stage.endpoint, name=stage.name)(_handler(stage, prefixes, admission))
    if not prefixes:
        log.warning("EMPROCESS_ALLOWED_PREFIXES is empty: every request with a URL will be refused")
    return app
