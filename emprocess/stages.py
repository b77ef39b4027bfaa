"""The plan/work contract every stage follows (as in igneous).

A stage's ``plan`` turns the run context into small, independent, idempotent mini-tasks with stable
keys; its ``work`` executes one mini-task's JSON payload and returns a JSON result. The same ``work``
runs behind an HTTP service (containers/*), in-process (``emprocess work``), and from tests.
Worker *i* of *W* takes the mini-tasks whose index ≡ *i* (mod *W*).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, TypedDict

from emprocess import storage
from emprocess.config import RunConf, parse_conf, run_key

if TYPE_CHECKING:
    from emprocess.payloads import Payload


class InputError(ValueError):
    """Bad input to a mini-task (unreadable image, wrong volume size …): not retried, the service
    answers 4xx with this message, which must name the offending URL, slice or key."""


class MiniTask(TypedDict):
    key: str  # stable, unique within the stage; names the cache entry
    payload: dict  # everything ``work`` needs, URLs included; JSON-serialisable


@dataclass(frozen=True)
class RunContext:
    """What a plan function may use: the validated conf and the run's locations."""

    conf: RunConf
    run_id: str
    key: str
    locations: storage.RunLocations

    @classmethod
    def create(cls, conf: dict | RunConf, run_id: str) -> "RunContext":
        conf = conf if isinstance(conf, RunConf) else parse_conf(conf)
        key = run_key(run_id, conf.source)
        return cls(conf, run_id, key, storage.run_locations(conf.source, key))

    def wants(self, stage: str) -> bool:
        """True when the conf asks for this top-level stage (align, pyramid, chunkedgraph, meshing)."""
        if stage in ("chunkedgraph", "meshing") and self.conf.segmentation is None:
            return False
        return stage in self.conf.stages

    def cache_dir(self, stage: str) -> str:
        return storage.join(self.locations.process, "cache", stage)

    def cache_url(self, stage: str, key: str) -> str:
        return storage.join(self.cache_dir(stage), f"{key}.json")


@dataclass(frozen=True)
class Stage:
    """One step of the workflow.

    ``service`` names the HTTP service that runs ``work`` ("fiji" or "emwrite"); None means the step
    is light and runs where the orchestrator runs it. ``check`` optionally verifies a finished
    mini-task's output (payload, result) → bool before its result is cached. ``memory`` estimates
    the bytes one mini-task holds at its peak, so a service can refuse one that cannot fit before
    starting it.
    """

    name: str
    service: str | None
    endpoint: str
    plan: Callable[[RunContext], list[MiniTask]]
    work: Callable[[dict], dict]
    check: Callable[[dict, dict], bool] | None = field(default=None)
    memory: Callable[[dict], int] | None = field(default=None)

    @property
    def payload(self) -> type[Payload] | None:
        """The payload model ``work`` declared with ``takes``."""
        return getattr(self.work, "payload", None)


def share(tasks: list[MiniTask], worker: int, width: int) -> list[MiniTask]:
    """Worker ``worker`` of ``width`` takes the tasks whose index ≡ worker (mod width)."""
    if not 0 <= worker < width:
        raise ValueError(f"worker {worker} is not in 0..{width - 1}")
    return tasks[worker::width]
