"""Both services fuzzed from their own OpenAPI schemas (schemathesis, bounded): whatever a request
holds, the answer is never a 5xx (callers retry those as the service's own faults), and nothing is
written outside the allowed folder or in the working folder.

Two passes per operation: the schema as served, valid and invalid payloads (random locations, which
the prefix check refuses, so these reach every field's checks); and the schema with every location
(format ``location``) drawn from real files and folders under the allowed folder, valid payloads only,
so they reach the work itself. The services get a small memory limit, which bounds how much work one
generated payload may ask for (larger ones are refused with 413).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from emprocess.payloads import LOCATION_FORMAT
from emprocess.workflow.local_run import service

EXAMPLES = 30  # per operation and pass
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """Both services on loopback, allowed one folder (with two slices in it), working in another."""
    root = tmp_path_factory.mktemp("fuzz")
    allowed, work = root / "allowed", root / "work"
    allowed.mkdir()
    work.mkdir()
    texture = np.random.default_rng(0).integers(0, 255, (96, 96)).astype(np.uint8)
    cv2.imwrite(str(allowed / "a.png"), texture)
    cv2.imwrite(str(allowed / "b.png"), np.roll(texture, 3, axis=1))
    here = os.getcwd()
    os.chdir(work)  # the services start here: a relative path would write into it
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("EMPROCESS_MEMORY_LIMIT", "1Gi")
            with service("fiji", [f"file://{allowed}"], root) as fiji, \
                    service("emwrite", [f"file://{allowed}"], root) as emwrite:
                yield {"fiji": fiji, "emwrite": emwrite, "allowed": allowed}
    finally:
        os.chdir(here)
    assert not list(work.iterdir())
    assert sorted(p.name for p in root.iterdir()) == ["allowed", "emwrite.log", "fiji.log", "work"]


def inside(spec: dict, allowed: Path) -> dict:
    """``spec`` with every location's schema replaced by a choice of real places under ``allowed``."""
    return located(spec, [f"file://{allowed}/{name}" for name in ("a.png", "b.png", "missing.png", "x", "x/y", "")])


def outside_places(root: Path) -> list[str]:
    """Places beside and beyond the allowed folder, one a real file, and in buckets never allowed."""
    return [f"file://{root}/outside/a.png", f"file://{root}/outside", f"file://{root}/allowed-not/a.png",
            "file:///etc/passwd", "gs://other-bucket/a.png", "s3://other-bucket/x/y"]


def located(spec: dict, places: list[str]) -> dict:
    """``spec`` with every location's schema replaced by a choice of ``places``."""
    def rewrite(node):
        if isinstance(node, dict):
            if node.get("format") == LOCATION_FORMAT:
                return {"type": "string", "enum": places}
            return {k: rewrite(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    return rewrite(json.loads(json.dumps(spec)))


def server_errors(schema, modes: list[GenerationMode], refused: list[str] = ()) -> list[str]:
    """The requests of every operation, fuzzed, that the service answered with a 5xx, or that held
    one of the ``refused`` places and were answered other than 403."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy(modes[0])
        for mode in modes[1:]:
            strategy |= operation.as_strategy(mode)

        @given(case=strategy)
        @FUZZ
        def call(case):
            response = case.call(timeout=120)
            if response.status_code != 403 and any(place in json.dumps(case.body, default=str) for place in refused):
                failures.append(f"{case.method} {case.path} {case.body!r} → {response.status_code}, not 403")
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r} → {response.status_code}: "
                                f"{response.text[:300]}")

        call()
    return failures


@pytest.mark.parametrize("name", ["fiji", "emwrite"])
def test_no_request_gets_a_5xx(running, name):
    schema = schemathesis.openapi.from_url(running[name] + "/openapi.json")
    assert server_errors(schema, [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]) == []


@pytest.mark.parametrize("name", ["fiji", "emwrite"])
def test_no_payload_under_the_allowed_prefix_gets_a_5xx(running, name):
    spec = requests.get(running[name] + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(inside(spec, running["allowed"]))
    schema.config.base_url = running[name]
    try:
        assert server_errors(schema, [GenerationMode.POSITIVE]) == []
    finally:  # what the work wrote stays inside; clear it for the next service's pass
        for path in running["allowed"].iterdir():
            if path.name not in ("a.png", "b.png"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize("name", ["fiji", "emwrite"])
def test_every_location_outside_the_allowed_prefix_is_refused_403(running, name):
    """Well-formed payloads whose locations lie outside (a sibling folder holding a real slice, a
    name that only starts like the allowed one, other buckets): each answered 403, and nothing is
    written outside. (A '..' way out is refused 422 as no location at all: tests/test_services.py.)"""
    root = running["allowed"].parent
    outside = root / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(running["allowed"] / "a.png", outside / "a.png")
    spec = requests.get(running[name] + "/openapi.json", timeout=10).json()
    places = outside_places(root)
    schema = schemathesis.openapi.from_dict(located(spec, places))
    schema.config.base_url = running[name]
    try:
        assert server_errors(schema, [GenerationMode.POSITIVE], refused=places) == []
        assert sorted(p.name for p in outside.iterdir()) == ["a.png"]
    finally:
        shutil.rmtree(outside)


def test_every_operation_has_a_request_schema_with_its_locations_marked(running):
    for name in ("fiji", "emwrite"):
        spec = requests.get(running[name] + "/openapi.json", timeout=10).json()
        posts = {p: m["post"] for p, m in spec["paths"].items() if "post" in m}
        assert posts, name
        for path, post in posts.items():
            body = post["requestBody"]["content"]["application/json"]["schema"]
            assert "$ref" in body, path  # a payload model, not a free-form object
        assert json.dumps(spec).count(f'"format": "{LOCATION_FORMAT}"') >= len(posts), name
