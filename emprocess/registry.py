"""Every stage by name. Stage modules register here; services and the orchestrator look them up."""

from __future__ import annotations

from functools import cache

from emprocess.stages import Stage


@cache
def stages() -> dict[str, Stage]:
    from emprocess.align.stages import STAGES as align
    from emprocess.chunkedgraph.stages import STAGES as chunkedgraph
    from emprocess.meshing.stages import STAGES as meshing
    from emprocess.pyramid.stages import STAGES as pyramid

    found = [*align, *pyramid, *chunkedgraph, *meshing]
    by_name = {s.name: s for s in found}
    if len(by_name) != len(found):
        raise RuntimeError("two stages share a name")
    return by_name


def get(name: str) -> Stage:
    try:
        return stages()[name]
    except KeyError:
        raise KeyError(f"no stage named {name!r}; known: {sorted(stages())}") from None


def for_service(service: str) -> list[Stage]:
    return [s for s in stages().values() if s.service == service]
