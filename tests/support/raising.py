"""A test stage whose one mini-task raises the error its payload names, to drive each class of the
error policy (``emprocess.errors``) through every path a stage's work runs on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from emprocess import registry, storage
from emprocess.errors import ConfError, InputError
from emprocess.payloads import Payload
from emprocess.stages import Result, RunContext, Stage

NAME = "test.raise"
CALLS_ENV = "EMPROCESS_TEST_CALLS"  # a file that gets a line per call, counted across processes

Kind = Literal["input", "conf", "missing", "outside", "corrupt", "unavailable", "fault"]
RAISES = {
    "input": lambda: InputError("slice file:///data/img003.png is not an image"),
    "conf": lambda: ConfError("'segmentation.watershed': no precomputed volume there"),
    "missing": lambda: FileNotFoundError("file:///data/img004.png: not found"),
    "outside": lambda: storage.OutsideAllowedPrefixes("file:///etc/passwd is outside this service's allowed prefixes"),
    # what tensorstore raises for a chunk it cannot decode, and for a store that does not answer
    "corrupt": lambda: ValueError("DATA_LOSS: Error reading \"0-8_0-8_0-8\": chunk is truncated"),
    "unavailable": lambda: ValueError("UNAVAILABLE: Error writing \"info\": connection reset"),
    "fault": lambda: RuntimeError("the service's own bug"),
}
BAD_INPUT = ("input", "conf", "missing", "outside", "corrupt")
FAULTS = ("unavailable", "fault")


class RaisePayload(Payload):
    kind: Kind


class Never(Result):
    """What the work would return, had it not raised."""


def plan(ctx: RunContext) -> list[dict]:
    return [{"key": "only", "payload": {"kind": ctx.conf.id.removeprefix("raise-")}}]


def work(payload: RaisePayload) -> Never:
    calls = os.environ.get(CALLS_ENV)
    if calls:
        with Path(calls).open("a") as out:
            out.write(payload.kind + "\n")
    raise RAISES[payload.kind]()


STAGE = Stage(name=NAME, group="test", task="raise", endpoint="/raise", plan=plan, work=work, payload=RaisePayload,
              result=Never)


def registered() -> Stage:
    if NAME not in registry.stages():
        registry.register(STAGE)
    return STAGE
