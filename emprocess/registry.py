"""The stage table: every stage, in the order a run takes them, and the services that run them.

``FACTS`` declares each stage's group, DAG task id, one worker or W, service, endpoint and layer,
once; the stage modules add the code (``Stage(**facts(name), plan=…, work=…, …)``). The DAG factory
reads only ``FACTS``, so parsing the DAG file imports no stage module; ``emprocess status``, the
services' FastAPI apps, ``moc_server.py`` and the README's stage list are derived from the table too,
and tests check that they agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

from emprocess.chunkedgraph.layers import MAX_LAYERS, layer_width
from emprocess.stages import Facts, Stage


@dataclass(frozen=True)
class Service:
    """An HTTP service that runs stages' work: its ASGI app, the Airflow connection that points at it
    and the pool whose slots bound the calls in flight to it."""

    name: str
    app: str
    connection: str
    pool: str
    description: str


SERVICES = {
    "fiji": Service("fiji", "containers.fiji.app:app", "ALIGN_CLOUD_RUN", "emprocess_align",
                    "concurrent calls to the alignment (fiji) service"),
    "emwrite": Service("emwrite", "containers.emwrite.app:app", "IMG_WRITE", "emprocess_write",
                       "concurrent calls to the emwrite service"),
}
IN_PROCESS_POOL = "default_pool"  # where stages without a service run: the orchestrator's own workers


def _layers(prefix: str, group: str, first_endpoint: str, endpoint: str) -> tuple[Facts, ...]:
    """Layers 2..MAX_LAYERS of a graph or its meshes, each in its DAG sub-group ``layer{N}``."""
    return tuple(Facts(f"{prefix}{layer}", group, "worker", "emwrite", first_endpoint if layer == 2 else endpoint,
                       layer=layer) for layer in range(2, MAX_LAYERS + 1))


FACTS: tuple[Facts, ...] = (
    Facts("align.pairs", "align", "pairs", "fiji", "/align"),
    Facts("align.bridge", "align", "bridge", "fiji", "/bridge"),
    Facts("align.collect", "align", "collect", wide=False),
    Facts("align.intensity", "align", "intensity", "emwrite", "/intensity", wide=False),
    Facts("align.warp", "align", "warp", "emwrite", "/alignedslice"),
    Facts("pyramid.meta", "pyramid", "ngmeta", "emwrite", "/ngmeta", wide=False),
    Facts("pyramid.shard", "pyramid", "shard", "emwrite", "/ngshard"),
    Facts("pyramid.top", "pyramid", "top", "emwrite", "/ngtop", wide=False),
    Facts("cg.meta", "chunkedgraph", "cg_meta", "emwrite", "/cg/meta", wide=False),
    *_layers("cg.layer", "chunkedgraph", "/cg/layer2", "/cg/layer"),
    Facts("cg.flatten", "chunkedgraph", "flatten", "emwrite", "/cg/flatten"),
    Facts("mesh.meta", "meshing", "mesh_meta", "emwrite", "/mesh/meta", wide=False),
    *_layers("mesh.layer", "meshing", "/mesh/layer", "/mesh/layer"),
    Facts("mesh.shards", "meshing", "shards", "emwrite", "/mesh/shards"),
    Facts("skel.meta", "skeletons", "skel_meta", "emwrite", "/skel/meta", wide=False),
    Facts("skel.chunks", "skeletons", "chunks", "emwrite", "/skel/chunk"),
    Facts("skel.merge", "skeletons", "merge", "emwrite", "/skel/merge"),
)


def facts(name: str) -> dict:
    """The table's facts of stage ``name``, as ``Stage``'s keyword arguments."""
    for row in FACTS:
        if row.name == name:
            return asdict(row)
    raise KeyError(f"the stage table has no stage {name!r}")


def group_facts(group: str) -> list[Facts]:
    return [row for row in FACTS if row.group == group]


@cache
def table() -> list[Stage]:
    """Every stage with its code, in the table's order (imports every stage module)."""
    from emprocess.align.stages import STAGES as align
    from emprocess.chunkedgraph.stages import STAGES as chunkedgraph
    from emprocess.meshing.stages import STAGES as meshing
    from emprocess.pyramid.stages import ALIGN_STAGES as warp
    from emprocess.pyramid.stages import STAGES as pyramid
    from emprocess.skeletons.stages import STAGES as skeletons

    by_name = {stage.name: stage for stage in (*align, *warp, *pyramid, *chunkedgraph, *meshing, *skeletons)}
    if set(by_name) != {row.name for row in FACTS}:
        raise RuntimeError(f"stages without facts, or facts without a stage: "
                           f"{sorted(set(by_name) ^ {row.name for row in FACTS})}")
    return [by_name[row.name] for row in FACTS]


def register(stage: Stage) -> None:
    """Add a stage after the pipeline's own (a deployment's extra stage, a test's)."""
    if stage.name in stages():
        raise RuntimeError(f"a stage named {stage.name!r} is registered already")
    table().append(stage)


def stages() -> dict[str, Stage]:
    return {s.name: s for s in table()}


def pipeline() -> list[Stage]:
    """The stages a run takes: the table's stages of the groups in ``config.STAGES``."""
    from emprocess.config import STAGES

    return [s for s in table() if s.group in STAGES]


def get(name: str) -> Stage:
    try:
        return stages()[name]
    except KeyError:
        raise KeyError(f"no stage named {name!r}; known: {sorted(stages())}") from None


def for_service(service: str) -> list[Stage]:
    return [s for s in table() if s.service == service]


def stage_width(stage: Facts, width: int) -> int:
    """How many workers ``stage`` gets in the DAG of ``width``."""
    if stage.layer is not None:
        return layer_width(stage.layer, width)
    return width if stage.wide else 1


def pool(stage: Facts) -> str:
    return SERVICES[stage.service].pool if stage.service else IN_PROCESS_POOL


def markdown() -> str:
    """The pipeline's stages as a Markdown table (``emprocess stages``; the README shows it)."""
    from emprocess.workflow import WIDTHS

    widest = max(WIDTHS)
    rows = ["| stage | DAG task | workers | runs on | pool |", "|---|---|---|---|---|"]
    for stage in FACTS:
        sub = f"layer{stage.layer}." if stage.layer is not None else ""
        workers = "W" if stage.wide else "1"
        if stage.layer is not None and layer_width(stage.layer, widest) < widest:
            cap = layer_width(stage.layer, widest)
            workers = "1" if cap == 1 else f"min(W, {cap})"
        runs_on = f"{stage.service} `{stage.endpoint}`" if stage.service else "the Airflow worker"
        rows.append(f"| `{stage.name}` | `{stage.group}.{sub}{stage.task}` | {workers} | {runs_on} | `{pool(stage)}` |")
    return "\n".join(rows) + "\n"
