"""Build the fixed-width DAGs ``emprocess_width{W}_v{MAJOR.MINOR}``.

The DAG's shape depends on W only: every stage is one mapped task over the literal worker indices
0..W-1 (ChunkedGraph layers near the root get fewer, see ``layer_width``), and worker i takes the
mini-tasks whose index ≡ i (mod W), so any dataset runs on any DAG. Mapping keeps the serialized DAG
as small for W = 128 as for W = 1: Airflow serializes (and re-hashes on every parse) each task with
all the run conf's Params.

No idle worker starts: each stage group opens with a ``wanted`` gate, and each graph or mesh layer
above 2 with an ``exists`` gate; a gate that says no skips the workers after it (and the layers
above) without starting a process. Every run ends with its report: ``report`` and ``notify`` are
teardowns, run whatever happened before them, and leave the run's state to the tasks they follow.
"""

from __future__ import annotations

import copy

from airflow.sdk import DAG, Connection, Param, TaskGroup, TriggerRule, get_current_context, get_parsing_context, task

from emprocess import MAJOR_MINOR, config
from emprocess.chunkedgraph.layers import MAX_LAYERS, layer_width
from emprocess.workflow import REPORT_TASK, task_name
from emprocess.workflow.operators import ERROR_XCOM, SERVICE_POOLS, BatchStageOperator, failing_at_once

WIDTHS = (1, 4, 16, 32, 64, 128)
POOLS = {
    "emprocess_align": "concurrent calls to the alignment (fiji) service",
    "emprocess_write": "concurrent calls to the emwrite service",
}
THREADS_PER_WORKER = 4
SMTP_CONNECTION = "smtp_default"  # where the run-ended mail goes out (AIRFLOW_CONN_SMTP_DEFAULT)
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


def _mail_problem() -> str | None:
    """Why the run-ended mail cannot be sent, or None when the SMTP connection is there."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        smtp = Connection.get(SMTP_CONNECTION)
    except AirflowNotFoundException:
        return (f"there is no SMTP connection {SMTP_CONNECTION!r} to send it "
                f"(set AIRFLOW_CONN_{SMTP_CONNECTION.upper()})")
    if not smtp.extra_dejson.get("from_email"):
        return f"the SMTP connection {SMTP_CONNECTION!r} has no from_email extra (the sender's address)"
    return None


@task(task_id="validate")
def validate_task() -> dict:
    """Conf, slices and locations are checked before any write; a conf that asks for a mail needs a
    way to send it. A refused run fails at once: retrying cannot mend its input."""
    from emprocess.config import ConfError
    from emprocess.validate import validate_run

    with failing_at_once():
        ctx = _context()
        problem = _mail_problem() if ctx.conf.email else None
        if problem:
            raise ConfError(f"email: {problem}")
        return validate_run(ctx)


@task(task_id="create_env")
def create_env_task() -> dict:
    from emprocess.lifecycle import create_env

    return create_env(_context())


@task(task_id="publish")
def publish_task() -> dict:
    from emprocess.lifecycle import publish

    return publish(_context())


@task.short_circuit(task_id="wanted", ignore_downstream_trigger_rules=False, trigger_rule=TriggerRule.NONE_FAILED)
def wanted_task(stage: str) -> bool:
    """Whether the conf asks for this group's stage (a graph and meshes need a segmentation); when
    not, the group's workers are skipped without starting."""
    return _context().wants(stage)


@task.short_circuit(task_id="exists", ignore_downstream_trigger_rules=False)
def layer_exists_task(layer: int) -> bool:
    """Whether this run's graph has layer ``layer`` (cg.meta wrote how many it has); when not, this
    layer's workers and every layer above are skipped without starting."""
    from emprocess.chunkedgraph.meta import read_meta

    return layer <= read_meta(_context().locations.chunkedgraph).n_layers


def _ended(context) -> tuple[list[tuple[str, int]], int]:
    """(task id, map index) of the run's failed task instances, and how many did not run."""
    dag_run = context["dag_run"]
    ended = context["ti"].get_task_breadcrumbs(dag_run.dag_id, dag_run.run_id)
    failed = [(row["task_id"], row["map_index"]) for row in ended if row["state"] == "failed"]
    return failed, sum(row["state"] == "upstream_failed" for row in ended)


@task(task_id=REPORT_TASK)
def report_task() -> dict:
    """report.json and report.html in the process location, for every run that got past validate: a
    failed one's name its failed tasks with their errors. A refused run writes nothing, this report
    neither; its failure and why are this task's result and the mail's content."""
    from emprocess import registry
    from emprocess.report import refused_report, write_report

    context = get_current_context()
    failed, _ = _ended(context)
    failures = [{"task": task_name(task_id, index),
                 "error": context["ti"].xcom_pull(task_ids=task_id, key=ERROR_XCOM, map_indexes=index)}
                for task_id, index in failed]
    if ("validate", -1) in failed:
        return refused_report(failures)
    return write_report(_context(), list(registry.stages().values()), failures)


@task(task_id="notify")
def notify_task() -> dict:
    """Mail the conf's address that the run ended, naming the failed tasks."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    from emprocess.notify import run_ended_mail

    context = get_current_context()
    dag_run = context["dag_run"]
    failed, not_run = _ended(context)
    mail = run_ended_mail(dag_run.conf or {}, dag_run.run_id, [task_name(*f) for f in failed], not_run)
    if mail is None:
        return {"sent": False}
    problem = _mail_problem()
    if problem:  # validate has failed the run for it already
        return {"sent": False, "why": problem}
    with SmtpHook(SMTP_CONNECTION) as smtp:
        smtp.send_email_smtp(to=mail.to, subject=mail.subject, html_content=mail.html)
    return {"sent": True, "to": mail.to, "subject": mail.subject}


def workers(stage: str, service: str | None, width: int, task_id: str, **options):
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
        **options,
    ).expand(worker=list(range(width)))


def layer_groups(stage_prefix: str, width: int, first, gate):
    """One sub-group per graph layer 2..MAX_LAYERS (stage ``f"{stage_prefix}{layer}"``), each after
    the one below, the first after ``first``; above layer 2 each opens with its ``exists`` gate, which
    also hangs from the group's ``gate`` (see ``build_dag``). Returns the top one's workers."""
    previous = first
    for layer in range(2, MAX_LAYERS + 1):
        with TaskGroup(f"layer{layer}"):
            current = workers(f"{stage_prefix}{layer}", "emwrite", layer_width(layer, width), "worker")
            entry = current
            if layer > 2:
                entry = layer_exists_task(layer)
                [gate, entry] >> current
        previous >> entry
        previous = current
    return previous


def build_dag(width: int) -> DAG:
    """The DAG of ``width``. Besides the order of the stages, every gate and ``publish`` hang from
    ``create_env`` and every worker from its group's gate: edges that change nothing when a run goes
    well, but let a failure before them mark every later task upstream_failed in a few scheduler
    loops instead of one loop per level (~60 levels: a refused conf took 1–2.5 minutes to fail)."""
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
        env = create_env_task()
        validate_task() >> env
        with TaskGroup("align") as align:
            gate = wanted_task("align")
            pairs = workers("align.pairs", "fiji", width, "pairs")
            collect = workers("align.collect", None, 1, "collect")
            warp = workers("align.warp", "emwrite", width, "warp")
            gate >> pairs >> collect >> warp
            gate >> [collect, warp]
        with TaskGroup("pyramid") as pyramid:
            gate = wanted_task("pyramid")
            meta = workers("pyramid.meta", "emwrite", 1, "ngmeta")
            shards = workers("pyramid.shard", "emwrite", width, "shard")
            top = workers("pyramid.top", "emwrite", 1, "top")
            gate >> meta >> shards >> top
            gate >> [shards, top]
        with TaskGroup("chunkedgraph") as chunkedgraph:
            gate = wanted_task("chunkedgraph")
            graph_meta = workers("cg.meta", "emwrite", 1, "cg_meta")
            gate >> graph_meta
            top = layer_groups("cg.layer", width, graph_meta, gate)
            # after the top layer that exists: the layers above it are skipped, cg.meta succeeded
            [top, graph_meta] >> workers("cg.flatten", "emwrite", width, "flatten",
                                         trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        with TaskGroup("meshing") as meshing:
            gate = wanted_task("meshing")
            mesh_meta = workers("mesh.meta", "emwrite", 1, "mesh_meta")
            gate >> mesh_meta
            layer_groups("mesh.layer", width, mesh_meta, gate)
        publish = publish_task.override(trigger_rule=TriggerRule.NONE_FAILED)()
        env >> align >> pyramid >> chunkedgraph >> meshing >> publish
        env >> [align.get_child_by_label("wanted"), pyramid.get_child_by_label("wanted"),
                chunkedgraph.get_child_by_label("wanted"), meshing.get_child_by_label("wanted"), publish]
        report = report_task().as_teardown()
        publish >> report >> notify_task().as_teardown()
    return dag


def build_all() -> dict[str, DAG]:
    """Every width's DAG; in a task process only the one it runs (Airflow names it in the parsing
    context), so that starting a task builds one DAG, not six."""
    wanted = get_parsing_context().dag_id
    return {dag_id(w): build_dag(w) for w in WIDTHS if wanted in (None, dag_id(w))}
