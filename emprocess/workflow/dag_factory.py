"""Build the fixed-width DAGs ``emprocess_width{W}_v{MAJOR.MINOR}``.

The DAG is derived from the stage table (``registry``): one task group per stage group, in the
table's order, and in it one mapped task per stage over the literal worker indices 0..W-1 (one for a
stage that is not ``wide``; graph and mesh layers near the root get fewer, see ``layer_width``, each
layer in its own sub-group). Worker i takes the mini-tasks whose index ≡ i (mod W), so the DAG's
shape depends on W only and any dataset runs on any DAG. Mapping keeps the serialized DAG
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

from emprocess import config, registry
from emprocess.kubernetes.settings import KubernetesSettings, execution_mode, load_settings
from emprocess.stages import Facts
from emprocess.workflow import REPORT_TASK, SMTP_CONNECTION, THREADS_PER_WORKER, WIDTHS, dag_id, task_name
from emprocess.workflow.operators import ERROR_XCOM, BatchStageOperator, failing_at_once

POOLS = {service.pool: service.description for service in registry.SERVICES.values()}
JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"


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
    return write_report(_context(), registry.pipeline(), failures)


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


def workers(stage: str, service: str | None, width: int, task_id: str, pods: KubernetesSettings | None,
            **options):
    """One mapped task whose instance i is worker i of ``width`` for ``stage``. A worker that calls a
    service takes a slot of the service's pool for each call it can have in flight, so the pool's
    slots bound the concurrent calls to the service (what its instances can take at once). With
    ``pods`` (execution mode ``kubernetes``) the task launches the worker's pod instead."""
    if pods is not None:
        from emprocess.workflow.pods import pod_workers

        return pod_workers(stage, width, task_id, pods, **options)
    return BatchStageOperator.partial(
        task_id=task_id,
        stage=stage,
        width=width,
        threads=THREADS_PER_WORKER,
        pool=registry.SERVICES[service].pool if service else registry.IN_PROCESS_POOL,
        pool_slots=THREADS_PER_WORKER if service else 1,
        **options,
    ).expand(worker=list(range(width)))


def stage_workers(stage: Facts, width: int, pods: KubernetesSettings | None, **options):
    return workers(stage.name, stage.service, registry.stage_width(stage, width), stage.task, pods, **options)


def group_tasks(group: str, width: int, pods: KubernetesSettings | None) -> None:
    """The group's stages in the table's order, each after the one before, every one also after the
    group's ``wanted`` gate. Each graph or mesh layer sits in a sub-group ``layer{N}``; above layer 2
    it opens with its ``exists`` gate. A stage after the layers runs once the top layer that exists
    is done (those above it are skipped) and the stage before the layers succeeded."""
    gate = wanted_task(group)
    previous, below_layers = gate, None
    for stage in registry.group_facts(group):
        if stage.layer is None:
            if below_layers is None:
                current = stage_workers(stage, width, pods)
                previous >> current
            else:
                current = stage_workers(stage, width, pods, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
                [previous, below_layers] >> current
                below_layers = None
            gate >> current
            previous = current
            continue
        if below_layers is None:
            below_layers = previous
        with TaskGroup(f"layer{stage.layer}"):
            current = stage_workers(stage, width, pods)
            entry = current
            if stage.layer > 2:
                entry = layer_exists_task(stage.layer)
                entry >> current
            [gate, previous] >> entry
            gate >> current
        previous = current


def build_dag(width: int) -> DAG:
    """The DAG of ``width``; its workers launch pods when the deployment's execution mode is
    ``kubernetes`` (``EMPROCESS_EXECUTION``), else call the services. Besides the order of the stages, every gate and ``publish`` hang from
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
        pods = load_settings() if execution_mode() == "kubernetes" else None
        env = create_env_task()
        validate_task() >> env
        groups = []
        for name in config.STAGES:
            with TaskGroup(name) as group:
                group_tasks(name, width, pods)
            groups.append(group)
        publish = publish_task.override(trigger_rule=TriggerRule.NONE_FAILED)()
        for before, after in zip([env, *groups], [*groups, publish]):
            before >> after
        env >> [*(group.get_child_by_label("wanted") for group in groups), publish]
        report = report_task().as_teardown()
        publish >> report >> notify_task().as_teardown()
    return dag


def build_all() -> dict[str, DAG]:
    """Every width's DAG; in a task process only the one it runs (Airflow names it in the parsing
    context), so that starting a task builds one DAG, not six."""
    wanted = get_parsing_context().dag_id
    return {dag_id(w): build_dag(w) for w in WIDTHS if wanted in (None, dag_id(w))}
