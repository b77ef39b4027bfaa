"""The plan/work contract every stage follows (as in igneous).

A stage's ``plan`` turns the run context into small, independent, idempotent mini-tasks with stable
keys; its ``work`` executes one mini-task: it receives the payload as the stage's ``payload`` model
and returns its ``result`` model. The same ``work`` runs behind an HTTP service (containers/*),
in-process (``emprocess work``, a pod) and from tests, through ``Stage.execute``, which takes and
gives JSON. Worker *i* of *W* takes the mini-tasks whose index ≡ *i* (mod *W*).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, TypedDict, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from emprocess import run_layout, storage
from emprocess.config import RunConf, parse_conf, run_key
from emprocess.errors import InputError

__all__ = ["Facts", "InputError", "MiniTask", "Result", "RunContext", "Stage", "share"]


class Result(BaseModel):
    """Base of every mini-task result: what ``work`` returns, the service answers and the cache keeps."""

    model_config = ConfigDict(extra="forbid")


P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=Result)


class MiniTask(TypedDict):
    key: str  # stable, unique within the stage; names the cache entry
    payload: dict  # the payload model's JSON: everything ``work`` needs, URLs included


@dataclass(frozen=True)
class RunContext:
    """What a plan function may use: the validated conf and the run's locations."""

    conf: RunConf
    run_id: str
    key: str
    locations: run_layout.RunLocations

    @classmethod
    def create(cls, conf: dict | RunConf, run_id: str) -> "RunContext":
        conf = conf if isinstance(conf, RunConf) else parse_conf(conf)
        key = run_key(run_id, conf.source)
        return cls(conf, run_id, key, run_layout.run_locations(conf.source, key))

    def wants(self, stage: str) -> bool:
        """True when the conf asks for this top-level stage (align, pyramid, chunkedgraph, meshing,
        skeletons)."""
        if stage in ("chunkedgraph", "meshing", "skeletons") and self.conf.segmentation is None:
            return False
        return stage in self.conf.stages

    def cache_dir(self, stage: str) -> str:
        return self.locations.cache_dir(stage)

    def cache_url(self, stage: str, key: str) -> str:
        return self.locations.cache_url(stage, key)


@dataclass(frozen=True)
class Facts:
    """What the stage table (``registry``) declares of a stage, all the DAG needs to know of it.

    ``group`` is the DAG task group (one of ``config.STAGES``) and ``task`` the task's id in it;
    ``wide`` stages run on the DAG's W workers, the others on one. ``service`` names the HTTP
    service that runs the work ("fiji" or "emwrite") at ``endpoint``; None means the stage is light
    and runs in-process where the orchestrator runs it. ``layer`` is a graph or mesh layer's number.
    """

    name: str
    group: str
    task: str
    service: str | None = None
    endpoint: str = ""
    wide: bool = True
    layer: int | None = None


@dataclass(frozen=True, kw_only=True)
class Stage(Facts, Generic[P, R]):
    """A stage's table facts with its code: ``plan`` and ``work``, ``work``'s ``payload`` and
    ``result`` models, ``check``, which optionally verifies a finished mini-task's output before its
    result is cached, and ``memory``, which estimates the bytes one mini-task holds at its peak, so a
    service can refuse one that cannot fit before starting it. A stage module builds its stages as
    ``Stage(**registry.facts(name), plan=…, …)``."""

    plan: Callable[[RunContext], list[MiniTask]]
    work: Callable[[P], R]
    payload: type[P]
    result: type[R]
    check: Callable[[P, R], bool] | None = field(default=None)
    memory: Callable[[P], int] | None = field(default=None)

    def parse_payload(self, payload: dict | P) -> P:
        """``payload`` as the stage's model; an InputError naming each bad field otherwise."""
        if isinstance(payload, self.payload):
            return payload
        try:
            return self.payload.model_validate(payload)
        except ValidationError as err:
            from emprocess.payloads import describe

            raise InputError(f"{self.name}: {describe(err)}") from None

    def parse_result(self, result: dict | R) -> R:
        """A result (a service's answer, a cache entry) as the stage's model."""
        return result if isinstance(result, self.result) else self.result.model_validate(result)

    def execute(self, payload: dict | P) -> dict:
        """Run one mini-task from its JSON payload and give its result as JSON."""
        return self.work(self.parse_payload(payload)).model_dump(mode="json")


def share(tasks: list[MiniTask], worker: int, width: int) -> list[MiniTask]:
    """Worker ``worker`` of ``width`` takes the tasks whose index ≡ worker (mod width)."""
    if not 0 <= worker < width:
        raise ValueError(f"worker {worker} is not in 0..{width - 1}")
    return tasks[worker::width]
