"""Build the fixed-width DAGs ``emprocess_width{W}_v{MAJOR.MINOR}``.

The DAG's shape depends on W only: every stage is one mapped task over the literal worker indices
0..W-1 (ChunkedGraph layers near the root get fewer, see ``layer_width``), and worker i takes the
mini-tasks whose index ≡ i (mod W), so any dataset runs on any DAG. Stages the conf does not ask for
plan no mini-tasks and finish at once. Mapping keeps the serialized DAG as small for W = 128 as for
W = 1: Airflow serializes (and re-hashes on every parse) each task with all the run conf's Params.
"""

from __future__ import annotations

import copy

from airflow.sdk import DAG, Param, TaskGroup, get_current_context, task

from emprocess import MAJOR_MINOR, config
from emprocess.chunkedgraph.ids import MAX_LAYERS
from emprocess.chunkedgraph.stages import layer_width
from emprocess.workflow.operators import SERVICE_POOLS, BatchStageOperator

WIDTHS = (1, 4, 16, 32, 64, 128)
POOLS = {
    "emprocess_align": "concurrent calls to the alignment (fiji) service",
    "emprocess_write": "concurrent calls to the emwrite service",
}
THREADS_PER_WORKER = 4
JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"


def dag_id(width: int) -> str:
    return f"emprocess_width{width}_v{MAJOR_MINOR}"


def _inline_refs(schema, defs: dict):
    """Resolve pydantic's ``$ref``s so each Param carries a self-contained JSON schema."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline_refs(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline_refs(v, defs) for v in schema]
    return schema


def conf_params() -> dict[str, Param]:
    """One Param per conf key, generated from the conf model so the trigger form validates the conf.

    Each schema names draft 7: Airflow checks a Param's schema against its meta-schema whenever it
    validates the value (on every serialization too), and the default 2020-12 meta-schema costs
    about four times as much to check.
    """
    schema = config.conf_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    params = {}
    for key, prop in schema["properties"].items():
        prop = _inline_refs(copy.deepcopy(prop), defs)
        prop.pop("title", None)
        prop["$schema"] = JSON_SCHEMA_DRAFT
        description = prop.pop("description", None)
        if key in required:
            params[key] = Param(description=description, **prop)
        else:
            default = prop.pop("default", None)
            params[key] = Param(default, description=description, **prop)
    return params


def _context():
    from emprocess.stages import RunContext

    ctx = get_current_context()
    return RunContext.create(ctx["dag_run"].conf or {}, ctx["run_id"])


@task(task_id="validate")
def validate_task() -> dict:
    """Conf, slices and locations are checked before any write."""
    from emprocess.validate import validate_run

    return validate_run(_context())


@task(task_id="create_env")
def create_env_task() -> dict:
    from emprocess.lifecycle import create_env

    return create_env(_context())


@task(task_id="publish")
def publish_task() -> dict:
    from emprocess.lifecycle import publish

    return publish(_context())


@task(task_id="report")
def report_task() -> dict:
    """report.json and report.html in the process location."""
    from emprocess import registry
    from emprocess.report import write_report

    return write_report(_context(), list(registry.stages().values()))


def workers(stage: str, service: str | None, width: int, task_id: str):
    """One mapped task whose instance i is worker i of ``width`` for ``stage``. A worker that calls a
    service takes a slot of the service's pool for each call it can have in flight, so the pool's
    slots bound the concurrent calls to the service (what its instances can take at once)."""
    return BatchStageOperator.partial(
        task_id=task_id,
        stage=stage,
        width=width,
        threads=THREADS_PER_WORKER,
        pool=SERVICE_POOLS.get(service, "default_pool"),
        pool_slots=THREADS_PER_WORKER if service else 1,
    ).expand(worker=list(range(width)))


def layer_groups(stage_prefix: str, width: int, first):
    """One sub-group per graph layer 2..MAX_LAYERS (stage ``f"{stage_prefix}{layer}"``), each after
    the one below, the first after ``first``; returns the top one."""
    previous = first
    for layer in range(2, MAX_LAYERS + 1):
        with TaskGroup(f"layer{layer}"):
            current = workers(f"{stage_prefix}{layer}", "emwrite", layer_width(layer, width), "worker")
        previous >> current
        previous = current
    return previous


def build_dag(width: int) -> DAG:
    with DAG(
        dag_id=dag_id(width),
        schedule=None,
        catchup=False,
        params=conf_params(),
        max_active_tasks=max(16, 2 * width),
        tags=["emprocess", f"width{width}"],
        doc_md=__doc__,
        default_args={"retries": 2},
    ) as dag:
        first = validate_task() >> create_env_task()
        with TaskGroup("align") as align:
            pairs = workers("align.pairs", "fiji", width, "pairs")
            collect = workers("align.collect", None, 1, "collect")
            pairs >> collect >> workers("align.warp", "emwrite", width, "warp")
        with TaskGroup("pyramid") as pyramid:
            meta = workers("pyramid.meta", "emwrite", 1, "ngmeta")
            shards = workers("pyramid.shard", "emwrite", width, "shard")
            meta >> shards >> workers("pyramid.top", "emwrite", 1, "top")
        with TaskGroup("chunkedgraph") as chunkedgraph:
            top = layer_groups("cg.layer", width, workers("cg.meta", "emwrite", 1, "cg_meta"))
            top >> workers("cg.flatten", "emwrite", width, "flatten")
        with TaskGroup("meshing") as meshing:
            layer_groups("mesh.layer", width, workers("mesh.meta", "emwrite", 1, "mesh_meta"))
        first >> align >> pyramid >> chunkedgraph >> meshing >> publish_task() >> report_task()
    return dag


def build_all() -> dict[str, DAG]:
    return {dag_id(w): build_dag(w) for w in WIDTHS}
