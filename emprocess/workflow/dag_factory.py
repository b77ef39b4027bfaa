"""Build the fixed-width DAGs ``emprocess_width{W}_v{MAJOR.MINOR}``.

The DAG's shape depends on W only: every stage gets W workers (ChunkedGraph layers near the root
get fewer, see ``layer_width``), and each worker takes the mini-tasks whose index ≡ i (mod W), so any
dataset runs on any DAG. Stages the conf does not ask for plan no mini-tasks and finish at once.
"""

from __future__ import annotations

import copy
import logging

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, TaskGroup, get_current_context, task

from emprocess import MAJOR_MINOR, config
from emprocess.chunkedgraph import MAX_LAYERS, layer_width
from emprocess.workflow.operators import SERVICE_POOLS, BatchStageOperator

WIDTHS = (1, 4, 16, 32, 64, 128)
POOLS = {
    "emprocess_align": "concurrent calls to the alignment (fiji) service",
    "emprocess_write": "concurrent calls to the emwrite service",
}
THREADS_PER_WORKER = 4

log = logging.getLogger("emprocess.workflow")


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
    """One Param per conf key, generated from the conf model so the trigger form validates the conf."""
    schema = config.conf_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    params = {}
    for key, prop in schema["properties"].items():
        prop = _inline_refs(copy.deepcopy(prop), defs)
        prop.pop("title", None)
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


def workers(stage: str, service: str | None, width: int, prefix: str) -> list[BatchStageOperator]:
    pool = SERVICE_POOLS.get(service, "default_pool")
    return [
        BatchStageOperator(
            task_id=f"{prefix}_{i}" if width > 1 else prefix,
            stage=stage,
            worker=i,
            width=width,
            threads=THREADS_PER_WORKER,
            pool=pool,
        )
        for i in range(width)
    ]


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
            warp = workers("align.warp", "emwrite", width, "warp")
            pairs >> collect[0] >> warp
        with TaskGroup("pyramid") as pyramid:
            meta = workers("pyramid.meta", "emwrite", 1, "ngmeta")
            shards = workers("pyramid.shard", "emwrite", width, "shard")
            top = workers("pyramid.top", "emwrite", 1, "top")
            meta[0] >> shards >> top[0]
        with TaskGroup("chunkedgraph") as chunkedgraph:
            previous = workers("cg.meta", "emwrite", 1, "cg_meta")[0]
            for layer in range(2, MAX_LAYERS + 1):
                # A join per layer keeps the edge count linear in W (no W×W cross product).
                with TaskGroup(f"layer{layer}"):
                    current = workers(f"cg.layer{layer}", "emwrite", layer_width(layer, width), "worker")
                    done = EmptyOperator(task_id="done")
                previous >> current >> done
                previous = done
            previous >> workers("cg.flatten", "emwrite", width, "flatten")
        first >> align >> pyramid >> chunkedgraph >> publish_task()
    return dag


def build_all() -> dict[str, DAG]:
    return {dag_id(w): build_dag(w) for w in WIDTHS}
